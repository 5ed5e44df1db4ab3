/// How one tensor is laid out across G tensor-parallel ranks (see docs/rules.md and TP-SEMANTICS).
///
/// Every rule reduces to a list of global index intervals along one dimension per rank: the whole
/// machinery of ShardKit (shard, reshard, verify, loaders) only ever copies those intervals.
public indirect enum SplitRule: Sendable, Equatable, Hashable {
    /// Every rank holds the whole tensor (norms, routers, row-parallel biases).
    case replicated
    /// Output features split evenly along `dim` (rank r holds `[r·n/G, (r+1)·n/G)`).
    case column(dim: Int)
    /// Input features split evenly along `dim`; the layer's output needs an all-reduce.
    case row(dim: Int)
    /// Query heads along output features: rank r holds heads `[r·H/G, (r+1)·H/G)`. Requires H % G == 0.
    case heads(dim: Int, heads: Int)
    /// Key/value heads: KV/G heads per rank when KV ≥ G, else head ⌊r·KV/G⌋ replicated on G/KV ranks.
    case kvHeads(dim: Int, heads: Int)
    /// The attention out-projection: input features split by query heads (row-parallel).
    case outProjection(dim: Int, heads: Int)
    /// Vocabulary rows: padded with zero rows to a multiple of G, rank r holds `[r·Vp/G, (r+1)·Vp/G)`.
    case vocab(dim: Int)
    /// A concatenation of parts along `dim` (output features), each split by its own rule; rank r holds
    /// the concatenation of its piece of every part, in part order.
    case fused(dim: Int, parts: [FusedPart])

    /// The dimension the rule splits, nil when replicated.
    public var dim: Int? {
        switch self {
        case .replicated: return nil
        case .column(let d), .row(let d), .heads(let d, _), .kvHeads(let d, _), .outProjection(let d, _),
             .vocab(let d), .fused(let d, _): return d
        }
    }

    /// True when the split runs along the layer's input features (the layer's output needs an all-reduce).
    public var splitsInputFeatures: Bool {
        switch self {
        case .row, .outProjection: return true
        default: return false
        }
    }

    /// The rule's name as written in manifests and rules files.
    public var kindName: String {
        switch self {
        case .replicated: return "replicated"
        case .column: return "column"
        case .row: return "row"
        case .heads: return "heads"
        case .kvHeads: return "kv_heads"
        case .outProjection: return "out_projection"
        case .vocab: return "vocab"
        case .fused: return "fused"
        }
    }
}

/// One part of a fused tensor: `size` rows (along the fused dimension) split by `split`.
public struct FusedPart: Sendable, Equatable, Hashable {
    public enum Split: Sendable, Equatable, Hashable {
        case even
        case heads(Int)
        case kvHeads(Int)
        case replicated
    }
    public var size: Int
    public var split: Split

    public init(size: Int, split: Split) {
        self.size = size
        self.split = split
    }
}

/// A rank's share of one tensor: global intervals along the split dimension, in ascending order.
/// Intervals may extend past the tensor's true size (vocab padding): those indices read as zeros.
public struct PieceLayout: Sendable, Equatable, Hashable {
    public var segments: [Range<Int>]
    /// The piece's length along the split dimension (sum of the segments).
    public var length: Int { segments.reduce(0) { $0 + $1.count } }
    public init(_ segments: [Range<Int>]) { self.segments = segments }

    /// Local index (within the piece) of the first global index ≥ `global`.
    func localIndex(ofFirstAtOrAfter global: Int) -> Int {
        var local = 0
        for s in segments {
            if global <= s.lowerBound { return local }
            if global < s.upperBound { return local + (global - s.lowerBound) }
            local += s.count
        }
        return local
    }
}

extension SplitRule {
    /// The global intervals along `dim` that rank `rank` of `ranks` holds, for a dimension of size
    /// `size`. Throws `impossibleSplit` naming `tensor` and the numbers when the split is not allowed.
    public func layout(rank: Int, of ranks: Int, size: Int, tensor: String) throws -> PieceLayout {
        func refuse(_ why: String) -> ShardKitError {
            ShardKitError(.impossibleSplit, "tensor \(tensor): cannot split \(why) across \(ranks) ranks")
        }
        guard ranks >= 1 else { throw ShardKitError(.impossibleSplit, "TP degree must be at least 1, got \(ranks)") }
        guard rank >= 0 && rank < ranks else { throw ShardKitError(.notFound, "rank \(rank) out of range 0..<\(ranks)") }
        func even(_ n: Int, what: String) throws -> Range<Int> {
            guard n % ranks == 0 else { throw refuse("\(what) of size \(n) (\(n) % \(ranks) = \(n % ranks))") }
            // rank·(n/G), not rank·n/G: the product stays within n and cannot overflow.
            let per = n / ranks
            return (rank * per)..<((rank + 1) * per)
        }
        func byHeads(_ n: Int, heads: Int, kv: Bool) throws -> Range<Int> {
            guard heads > 0, n % heads == 0 else {
                throw refuse("dimension \(n) into \(heads) \(kv ? "KV " : "")heads (\(n) is not a multiple of \(heads))")
            }
            let hd = n / heads
            if heads >= ranks || !kv {
                guard heads % ranks == 0 else {
                    throw refuse("\(heads) \(kv ? "KV " : "")heads (\(heads) % \(ranks) = \(heads % ranks))")
                }
                let per = heads / ranks
                return (rank * per * hd)..<((rank + 1) * per * hd)
            }
            guard ranks % heads == 0 else {
                throw refuse("\(heads) KV heads (\(ranks) is neither a divisor nor a multiple of \(heads))")
            }
            let h = rank * heads / ranks
            return (h * hd)..<((h + 1) * hd)
        }
        switch self {
        case .replicated:
            return PieceLayout([0..<size])
        case .column:
            return PieceLayout([try even(size, what: "output dimension")])
        case .row:
            return PieceLayout([try even(size, what: "input dimension")])
        case .heads(_, let h), .outProjection(_, let h):
            return PieceLayout([try byHeads(size, heads: h, kv: false)])
        case .kvHeads(_, let h):
            return PieceLayout([try byHeads(size, heads: h, kv: true)])
        case .vocab:
            guard let padded = SplitRule.checkedPaddedSize(size, ranks: ranks) else {
                throw refuse("vocab dimension \(size) (padding it to a multiple of \(ranks) overflows)")
            }
            let per = padded / ranks
            return PieceLayout([(rank * per)..<((rank + 1) * per)])
        case .fused(_, let parts):
            let total = checkedSum(parts.map(\.size))
            guard let total, total == size else {
                throw ShardKitError(.impossibleSplit,
                    "tensor \(tensor): fused parts \(parts.map(\.size)) add up to \(total.map(String.init) ?? "more than \(Int.max)"), but the dimension is \(size)")
            }
            var segments: [Range<Int>] = []
            var base = 0
            for (i, part) in parts.enumerated() {
                let local: Range<Int>
                switch part.split {
                case .even: local = try even(part.size, what: "fused part \(i)")
                case .heads(let h): local = try byHeads(part.size, heads: h, kv: false)
                case .kvHeads(let h): local = try byHeads(part.size, heads: h, kv: true)
                case .replicated: local = 0..<part.size
                }
                let g = (base + local.lowerBound)..<(base + local.upperBound)
                if let last = segments.last, last.upperBound == g.lowerBound {
                    segments[segments.count - 1] = last.lowerBound..<g.upperBound
                } else {
                    segments.append(g)
                }
                base += part.size
            }
            return PieceLayout(segments)
        }
    }

    /// The dimension's size once padded for `ranks` (only vocab rules pad).
    /// (A size whose padding would overflow gives `Int.max`; `layout` refuses it.)
    public func paddedSize(_ size: Int, ranks: Int) -> Int {
        if case .vocab = self { return SplitRule.checkedPaddedSize(size, ranks: ranks) ?? Int.max }
        return size
    }

    /// `size` rounded up to a multiple of `ranks`, nil on overflow (or a non-positive `ranks`).
    static func checkedPaddedSize(_ size: Int, ranks: Int) -> Int? {
        guard ranks >= 1, size >= 0 else { return nil }
        let (q, r) = size.quotientAndRemainder(dividingBy: ranks)
        if r == 0 { return size }
        let (p, overflow) = (q + 1).multipliedReportingOverflow(by: ranks)
        return overflow ? nil : p
    }
}
