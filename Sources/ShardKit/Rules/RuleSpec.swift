/// A rule before it meets a tensor: fused part sizes may still be unknown (derived from the tensor's
/// size: parts with head counts share the dimension in proportion to their heads, the others equally).
public struct RuleSpec: Sendable, Hashable {
    public typealias Kind = RuleKind
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
        func fail(_ code: ShardKitError.Code, _ message: String) -> ShardKitError {
            ShardKitError(code, "tensor \(tensor): \(message)")
        }
        if kind == .replicated { return .replicated }
        guard dim >= 0 && dim < shape.count else {
            throw fail(.impossibleSplit, "rule \(kind.rawValue) splits dim \(dim), but the tensor has shape \(shape)")
        }
        func needHeads() throws -> Int {
            guard let h = heads, h > 0 else {
                throw fail(.invalidRules, "rule \(kind.rawValue) needs a positive head count")
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
        case .vocab: return .vocab(dim: dim, multiple: 1)
        case .units, .padded:
            throw fail(.invalidRules, "\(kind.rawValue) rules are derived from config.json's quantization_config "
                       + "(and --pad-intermediate), not written by hand (docs/quantization.md)")
        case .fused:
            let n = shape[dim]
            guard !parts.isEmpty else { throw fail(.invalidRules, "fused rule has no parts") }
            // Sizes and head counts come from rules files and config.json: sums are overflow-checked.
            guard let known = checkedSum(parts.compactMap(\.size)) else {
                throw fail(.impossibleSplit, "fused part sizes \(parts.compactMap(\.size)) overflow")
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
                        throw fail(.impossibleSplit,
                                   "fused parts with \(headCounts.map { $0! }) heads do not divide the \(left) rows "
                                   + "left of dimension \(n)")
                    }
                    unit = left / total
                } else if headCounts.allSatisfy({ $0 == nil }) {
                    guard left > 0, left % open.count == 0 else {
                        throw fail(.impossibleSplit,
                            "\(open.count) equal fused parts do not divide the \(left) rows left of dimension \(n)")
                    }
                    unit = left / open.count
                } else {
                    throw fail(.invalidRules, "give every fused part a size when head-split and even parts are mixed")
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
                let sum = total.map(String.init) ?? "more than \(Int.max)"
                throw fail(.impossibleSplit,
                    "fused part sizes \(resolved.map(\.size)) add up to \(sum), but dimension \(dim) is \(n)")
            }
            return .fused(dim: dim, parts: resolved)
        }
    }
}

