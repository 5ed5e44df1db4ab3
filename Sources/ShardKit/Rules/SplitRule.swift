/// How one tensor is laid out across G tensor-parallel ranks (see docs/rules.md and TP-SEMANTICS).
///
/// Every rule reduces to a list of global index intervals along one dimension per rank: the whole
/// machinery of ShardKit (shard, reshard, verify, loaders) only ever copies those intervals.
public enum SplitRule: Sendable, Equatable, Hashable {
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
    /// Vocabulary rows: padded with zero rows to Vp, the next multiple of lcm(`multiple`, G); rank r
    /// holds `[r·Vp/G, (r+1)·Vp/G)`. `multiple` 1 is ShardKit's own padding (to a multiple of G);
    /// 64 is vLLM's (`pad_vocab_size`), `make_vocab_size_divisible_by`·G Megatron's.
    case vocab(dim: Int, multiple: Int = 1)
    /// A concatenation of parts along `dim` (output features), each split by its own rule; rank r holds
    /// the concatenation of its piece of every part, in part order.
    case fused(dim: Int, parts: [FusedPart])
    /// A companion of a quantized weight (packed values, quantization groups, FP8 blocks): `units.base`
    /// splits the weight's `units.size` indices, and each of a rank's intervals `[a, b)` becomes
    /// `[⌊a/unit⌋, ⌈b/unit⌉)` along `dim` (docs/quantization.md).
    indirect case units(dim: Int, UnitSplit)
    /// `base` (column or row) over its dimension padded with zeros to the next multiple of
    /// G·`multiple`, so that every rank's share is a multiple of `multiple` (`--pad-intermediate`:
    /// quantized MLP intermediate sizes no group-aligned split divides; docs/quantization.md).
    indirect case padded(SplitRule, multiple: Int)

    /// The dimension the rule splits, nil when replicated.
    public var dim: Int? {
        switch self {
        case .replicated: return nil
        case .column(let d), .row(let d), .heads(let d, _), .kvHeads(let d, _), .outProjection(let d, _),
             .vocab(let d, _), .fused(let d, _), .units(let d, _): return d
        case .padded(let base, _): return base.dim
        }
    }

    /// True when the split runs along the layer's input features (the layer's output needs an all-reduce).
    /// True when the rule keeps attention heads whole (heads, KV heads, an output projection, or a
    /// fused tensor with such a part).
    public var splitsHeads: Bool {
        switch self {
        case .heads, .kvHeads, .outProjection: return true
        case .fused(_, let parts):
            return parts.contains {
                switch $0.split {
                case .heads, .kvHeads: return true
                case .even, .replicated: return false
                }
            }
        default: return false
        }
    }

    /// The same rule with vocabulary padding to multiples of `multiple` (other rules unchanged).
    public func withVocabMultiple(_ multiple: Int) -> SplitRule {
        if case .vocab(let d, _) = self { return .vocab(dim: d, multiple: multiple) }
        return self
    }

    public var splitsInputFeatures: Bool {
        switch self {
        case .row, .outProjection: return true
        case .units(_, let u): return u.base.splitsInputFeatures
        case .padded(let base, _): return base.splitsInputFeatures
        default: return false
        }
    }

    /// The same rule along dimension `d` (a quantized companion whose layout puts the weight's split
    /// dimension elsewhere).
    public func withDim(_ d: Int) -> SplitRule {
        switch self {
        case .replicated: return .replicated
        case .column: return .column(dim: d)
        case .row: return .row(dim: d)
        case .heads(_, let h): return .heads(dim: d, heads: h)
        case .kvHeads(_, let h): return .kvHeads(dim: d, heads: h)
        case .outProjection(_, let h): return .outProjection(dim: d, heads: h)
        case .vocab(_, let m): return .vocab(dim: d, multiple: m)
        case .fused(_, let parts): return .fused(dim: d, parts: parts)
        case .units(_, let u): return .units(dim: d, u)
        case .padded(let base, let m): return .padded(base.withDim(d), multiple: m)
        }
    }

    /// The same rule without intermediate padding (in a companion's base too).
    public var withoutPadding: SplitRule {
        switch self {
        case .padded(let base, _): return base
        case .units(let d, var u):
            u.base = u.base.withoutPadding
            return .units(dim: d, u)
        default: return self
        }
    }

    /// The rule's kind, whose name manifests, rules files and reports write.
    public var kind: RuleKind {
        switch self {
        case .replicated: return .replicated
        case .column: return .column
        case .row: return .row
        case .heads: return .heads
        case .kvHeads: return .kvHeads
        case .outProjection: return .outProjection
        case .vocab: return .vocab
        case .fused: return .fused
        case .units: return .units
        case .padded: return .padded
        }
    }

    /// The rule's name as written in manifests and rules files.
    public var kindName: String { kind.rawValue }

    /// The rule with its parameters, for reports: `heads(dim 0, 16 heads)`, `fused(dim 0, parts [..])`.
    public var summary: String {
        switch self {
        case .replicated: return kindName
        case .column(let d), .row(let d): return "\(kindName)(dim \(d))"
        case .vocab(let d, let m): return "\(kindName)(dim \(d)\(m > 1 ? ", multiple \(m)" : ""))"
        case .heads(let d, let h), .kvHeads(let d, let h), .outProjection(let d, let h):
            return "\(kindName)(dim \(d), \(h) heads)"
        case .fused(let d, let parts): return "fused(dim \(d), parts \(parts.map(\.size)))"
        case .padded(let base, let m): return "padded(\(base.summary), shares multiples of \(m))"
        case .units(let d, let u):
            return "units(dim \(d), \(u.exact ? "" : "straddling ")units of \(u.unit) of \(u.size) split by "
                + "\(u.base.summary): \(u.what))"
        }
    }
}

/// How a quantized weight's companion follows the weight's split: the weight's `size` indices along
/// the split dimension are split by `base`, then counted in units of `unit` (a packed int32 holds
/// `unit` values, a quantization group or FP8 block covers `unit` indices).
public struct UnitSplit: Sendable, Equatable, Hashable {
    public var base: SplitRule
    /// The weight's size along the split dimension (the companion's is ⌈size / unit⌉).
    public var size: Int
    public var unit: Int
    /// True: every boundary of every rank's share must fall on a unit (a packed int32 or a group
    /// cannot be cut). False: a unit cut by a boundary is held by both ranks (FP8 block scales).
    public var exact: Bool
    /// What the unit is, for messages: "group size 128 (AWQ)".
    public var what: String

    public init(base: SplitRule, size: Int, unit: Int, exact: Bool, what: String) {
        self.base = base; self.size = size; self.unit = unit; self.exact = exact; self.what = what
    }

    /// The companion's size along the split dimension.
    public var units: Int { size / unit + (size % unit == 0 ? 0 : 1) }
}

/// The names of the rule kinds, as manifests, rules files and reports spell them: the one table.
public enum RuleKind: String, CaseIterable, Sendable {
    case replicated, column, row, heads
    case kvHeads = "kv_heads"
    case outProjection = "out_projection"
    case vocab, fused, units, padded

    /// Kinds that need a head count.
    public var needsHeads: Bool { self == .heads || self == .kvHeads || self == .outProjection }
}

/// One part of a fused tensor: `size` rows (along the fused dimension) split by `split`.
public struct FusedPart: Sendable, Equatable, Hashable {
    public enum Split: Sendable, Equatable, Hashable {
        case even
        case heads(Int)
        case kvHeads(Int)
        case replicated

        /// The names of the part splits, as manifests and rules files spell them.
        public enum Kind: String, CaseIterable, Sendable {
            case even, heads
            case kvHeads = "kv_heads"
            case replicated
        }

        public var kind: Kind {
            switch self {
            case .even: return .even
            case .heads: return .heads
            case .kvHeads: return .kvHeads
            case .replicated: return .replicated
            }
        }

        /// The head count of a heads or kv_heads part.
        public var heads: Int? {
            switch self {
            case .heads(let h), .kvHeads(let h): return h
            default: return nil
            }
        }

        /// The split of `kind`; nil when a heads kind has no positive head count.
        public init?(kind: Kind, heads: Int?) {
            switch kind {
            case .even: self = .even
            case .replicated: self = .replicated
            case .heads, .kvHeads:
                guard let h = heads, h > 0 else { return nil }
                self = kind == .heads ? .heads(h) : .kvHeads(h)
            }
        }
    }
    public var size: Int
    public var split: Split

    public init(size: Int, split: Split) {
        self.size = size
        self.split = split
    }
}

