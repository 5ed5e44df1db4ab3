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

    public func matches(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return alternatives.contains { NamePattern.match($0[...], bytes[...]) }
    }

    static func match(_ tokens: ArraySlice<[Token]>.Element.SubSequence, _ s: ArraySlice<UInt8>) -> Bool {
        guard let first = tokens.first else { return s.isEmpty }
        let rest = tokens.dropFirst()
        switch first {
        case .literal(let lit):
            guard s.count >= lit.count, s.prefix(lit.count).elementsEqual(lit) else { return false }
            return match(rest, s.dropFirst(lit.count))
        case .segment:
            var i = s.startIndex
            while i < s.endIndex && s[i] != UInt8(ascii: ".") {
                i += 1
                if match(rest, s[i...]) { return true }
            }
            return false
        case .any:
            var i = s.startIndex
            while true {
                if match(rest, s[i...]) { return true }
                if i == s.endIndex { return false }
                i += 1
            }
        }
    }

    public var description: String { text }
}

