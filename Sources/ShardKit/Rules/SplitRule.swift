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

