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

/// A rule before it meets a tensor: fused part sizes may still be unknown (derived from the tensor's
/// size: parts with head counts share the dimension in proportion to their heads, the others equally).
public struct RuleSpec: Sendable, Hashable {
    public enum Kind: String, Sendable, CaseIterable {
        case replicated, column, row, heads
        case kvHeads = "kv_heads"
        case outProjection = "out_projection"
        case vocab, fused
    }
    public struct Part: Sendable, Hashable {
        public var split: FusedPart.Split
        public var size: Int?
        public init(_ split: FusedPart.Split, size: Int? = nil) {
            self.split = split
            self.size = size
        }
    }
    public var kind: Kind
    public var dim: Int
    public var heads: Int?
    public var parts: [Part]

    public init(_ kind: Kind, dim: Int = 0, heads: Int? = nil, parts: [Part] = []) {
        self.kind = kind
        self.dim = dim
        self.heads = heads
        self.parts = parts
    }

    public static let replicated = RuleSpec(.replicated)
    public static func column(_ dim: Int) -> RuleSpec { RuleSpec(.column, dim: dim) }
    public static func row(_ dim: Int) -> RuleSpec { RuleSpec(.row, dim: dim) }
    public static func heads(_ dim: Int, _ h: Int) -> RuleSpec { RuleSpec(.heads, dim: dim, heads: h) }
    public static func kvHeads(_ dim: Int, _ h: Int) -> RuleSpec { RuleSpec(.kvHeads, dim: dim, heads: h) }
    public static func outProjection(_ dim: Int, _ h: Int) -> RuleSpec { RuleSpec(.outProjection, dim: dim, heads: h) }
    public static func vocab(_ dim: Int) -> RuleSpec { RuleSpec(.vocab, dim: dim) }
    public static func fused(_ dim: Int, _ parts: [Part]) -> RuleSpec { RuleSpec(.fused, dim: dim, parts: parts) }

    /// The concrete rule for a tensor of `shape`; checks the dimension exists and fused parts add up.
    public func resolve(shape: [Int], tensor: String) throws -> SplitRule {
        if kind == .replicated { return .replicated }
        guard dim >= 0 && dim < shape.count else {
            throw ShardKitError(.impossibleSplit,
                "tensor \(tensor): rule \(kind.rawValue) splits dim \(dim), but the tensor has shape \(shape)")
        }
        func needHeads() throws -> Int {
            guard let h = heads, h > 0 else {
                throw ShardKitError(.invalidRules, "tensor \(tensor): rule \(kind.rawValue) needs a positive head count")
            }
            return h
        }
        switch kind {
        case .replicated: return .replicated
        case .column: return .column(dim: dim)
        case .row: return .row(dim: dim)
        case .heads: return .heads(dim: dim, heads: try needHeads())
        case .kvHeads: return .kvHeads(dim: dim, heads: try needHeads())
        case .outProjection: return .outProjection(dim: dim, heads: try needHeads())
        case .vocab: return .vocab(dim: dim)
        case .fused:
            let n = shape[dim]
            guard !parts.isEmpty else { throw ShardKitError(.invalidRules, "tensor \(tensor): fused rule has no parts") }
            // Sizes and head counts come from rules files and config.json: sums are overflow-checked.
            guard let known = checkedSum(parts.compactMap(\.size)) else {
                throw ShardKitError(.impossibleSplit, "tensor \(tensor): fused part sizes \(parts.compactMap(\.size)) overflow")
            }
            let open = parts.filter { $0.size == nil }
            var sizes = parts.map(\.size)
            if !open.isEmpty {
                let left = n - known
                let headCounts = open.map { p -> Int? in
                    switch p.split {
                    case .heads(let h), .kvHeads(let h): return h
                    default: return nil
                    }
                }
                let unit: Int
                if headCounts.allSatisfy({ $0 != nil }) {
                    guard let total = checkedSum(headCounts.map { $0! }), total > 0, left > 0, left % total == 0 else {
                        throw ShardKitError(.impossibleSplit,
                            "tensor \(tensor): fused parts with \(headCounts.map { $0! }) heads do not divide the \(left) rows left of dimension \(n)")
                    }
                    unit = left / total
                } else if headCounts.allSatisfy({ $0 == nil }) {
                    guard left > 0, left % open.count == 0 else {
                        throw ShardKitError(.impossibleSplit,
                            "tensor \(tensor): \(open.count) equal fused parts do not divide the \(left) rows left of dimension \(n)")
                    }
                    unit = left / open.count
                } else {
                    throw ShardKitError(.invalidRules,
                        "tensor \(tensor): give every fused part a size when head-split and even parts are mixed")
                }
                var k = 0
                for i in sizes.indices where sizes[i] == nil {
                    sizes[i] = unit * (headCounts[k] ?? 1)
                    k += 1
                }
            }
            let resolved = zip(parts, sizes).map { FusedPart(size: $1!, split: $0.split) }
            let total = checkedSum(resolved.map(\.size))
            guard let total, total == n else {
                throw ShardKitError(.impossibleSplit,
                    "tensor \(tensor): fused part sizes \(resolved.map(\.size)) add up to \(total.map(String.init) ?? "more than \(Int.max)"), but dimension \(dim) is \(n)")
            }
            return .fused(dim: dim, parts: resolved)
        }
    }
}

/// An ordered list of (pattern, rule): the first pattern that matches a tensor name decides its rule.
public struct RuleSet: Sendable {
    public struct Entry: Sendable {
        public var pattern: NamePattern
        public var rule: RuleSpec
        /// A required entry that matches no tensor is an error (user rules are required; preset entries
        /// for optional tensors such as biases are not).
        public var required: Bool
        /// Where the entry came from, for messages ("preset llama", "rules.yaml entry 3").
        public var origin: String

        public init(_ pattern: NamePattern, _ rule: RuleSpec, required: Bool, origin: String) {
            self.pattern = pattern
            self.rule = rule
            self.required = required
            self.origin = origin
        }
    }

    public var entries: [Entry]
    /// A name for reports: the preset, "rules file", or both.
    public var name: String

    public init(name: String, entries: [Entry]) {
        self.name = name
        self.entries = entries
    }

    /// `self`'s entries first, then `fallback`'s.
    public func overriding(_ fallback: RuleSet) -> RuleSet {
        RuleSet(name: "\(name) + \(fallback.name)", entries: entries + fallback.entries)
    }

    /// The rule of every tensor, in order. Throws naming the first tensor no rule covers, or the first
    /// required pattern that matched nothing.
    public func assign(_ tensors: [(name: String, shape: [Int])]) throws -> [SplitRule] {
        var used = [Bool](repeating: false, count: entries.count)
        var rules: [SplitRule] = []
        rules.reserveCapacity(tensors.count)
        for t in tensors {
            guard let i = entries.firstIndex(where: { $0.pattern.matches(t.name) }) else {
                throw ShardKitError(.unmatchedRule, "tensor \(t.name) (shape \(t.shape)) matches no rule of \(name); add one with --rules")
            }
            used[i] = true
            rules.append(try entries[i].rule.resolve(shape: t.shape, tensor: t.name))
        }
        if let unused = entries.indices.first(where: { entries[$0].required && !used[$0] }) {
            let e = entries[unused]
            throw ShardKitError(.unmatchedRule, e.origin.hasPrefix("preset")
                ? "\(e.origin): no tensor matches \"\(e.pattern)\"; is config.json's model_type right? (or pass --rules)"
                : "\(e.origin): pattern \"\(e.pattern)\" matches no tensor")
        }
        return rules
    }
}
