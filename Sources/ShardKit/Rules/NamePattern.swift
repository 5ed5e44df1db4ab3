/// A tensor-name pattern: literal text with `*` (one or more characters other than `.`), `**` (any
/// characters, possibly none, dots included) and `{a,b,...}` (alternatives, which may be empty).
public struct NamePattern: Sendable, Hashable, CustomStringConvertible {
    enum Token: Sendable, Hashable { case literal([UInt8]), segment, any }
    public let text: String
    let alternatives: [[Token]]

    public init(_ text: String) throws {
        self.text = text
        var expanded: [String] = [""]
        var rest = Substring(text)
        while let open = rest.firstIndex(of: "{") {
            let prefix = String(rest[..<open])
            guard let close = rest[open...].firstIndex(of: "}") else {
                throw ShardKitError(.invalidRules, "pattern \"\(text)\": unclosed '{'")
            }
            let options = rest[rest.index(after: open)..<close].split(separator: ",", omittingEmptySubsequences: false)
            if options.contains(where: { $0.contains("{") }) {
                throw ShardKitError(.invalidRules, "pattern \"\(text)\": nested '{' is not supported")
            }
            // `{a,b}{a,b}...` multiplies: bound the expansion before building it.
            guard expanded.count * options.count <= NamePattern.maxAlternatives else {
                throw ShardKitError(.invalidRules, "pattern \"\(String(text.prefix(200)))\": expands to more than "
                                    + "\(NamePattern.maxAlternatives) alternatives")
            }
            expanded = expanded.flatMap { base in options.map { base + prefix + $0 } }
            rest = rest[rest.index(after: close)...]
        }
        if rest.contains("}") { throw ShardKitError(.invalidRules, "pattern \"\(text)\": '}' without '{'") }
        expanded = expanded.map { $0 + rest }
        alternatives = expanded.map(NamePattern.tokenize)
    }

    static func tokenize(_ s: String) -> [Token] {
        var tokens: [Token] = []
        var literal: [UInt8] = []
        let bytes = Array(s.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "*") {
                if !literal.isEmpty { tokens.append(.literal(literal)); literal = [] }
                if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "*") {
                    tokens.append(.any); i += 2
                } else {
                    tokens.append(.segment); i += 1
                }
            } else {
                literal.append(bytes[i]); i += 1
            }
        }
        if !literal.isEmpty { tokens.append(.literal(literal)) }
        return tokens
    }

    /// Most alternatives a pattern's `{...}` groups may expand to.
    static let maxAlternatives = 4096

    public func matches(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return alternatives.contains { NamePattern.match($0, bytes) }
    }

    /// Whether `tokens` match all of `s`, in O(tokens × bytes) time and O(bytes) memory: `reach[p]`
    /// says the tokens so far can consume exactly `s[..<p]` (no backtracking, so patterns such as
    /// `**.**.**.**` cannot take exponential time on a long name).
    static func match(_ tokens: [Token], _ s: [UInt8]) -> Bool {
        let n = s.count, dot = UInt8(ascii: ".")
        var reach = [Bool](repeating: false, count: n + 1)
        reach[0] = true
        for token in tokens {
            var next = [Bool](repeating: false, count: n + 1)
            switch token {
            case .literal(let lit):
                for p in 0...n where reach[p] && p + lit.count <= n && s[p..<(p + lit.count)].elementsEqual(lit) {
                    next[p + lit.count] = true
                }
            case .segment:
                // One or more bytes, none a dot.
                var active = false
                for q in stride(from: 1, through: n, by: 1) {
                    active = (active || reach[q - 1]) && s[q - 1] != dot
                    next[q] = active
                }
            case .any:
                var seen = false
                for q in 0...n {
                    seen = seen || reach[q]
                    next[q] = seen
                }
            }
            reach = next
            if !reach.contains(true) { return false }
        }
        return reach[n]
    }

    public var description: String { text }
}

