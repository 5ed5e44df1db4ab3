/// The plan of a shard set: every tensor's rule, the world ranks that hold it, and the global
/// intervals each of them holds. Computing it checks every split before anything is written.
public struct ShardPlan: Sendable {
    /// Where a tensor lives: shared by every tensor of the same stages and EP group (one reference
    /// per tensor, so that a plan of a million tensors stays small).
    public final class Placement: Sendable {
        /// The pipeline stages holding the tensor (two for an embedding tied to the head).
        public let stages: [Int]
        /// The expert-parallel group holding the tensor (an expert's, with EP > 1).
        public let group: Int?
        /// The world ranks holding a piece, ascending: holder `k` holds piece `k % ways` of the layout
        /// (a tensor held by two stages, a tied embedding, is one copy per stage).
        public let holders: [Int]
        /// How many ranks one copy is split over (TP, or an EP group's size).
        public let ways: Int
        init(stages: [Int], group: Int?, holders: [Int], ways: Int) {
            self.stages = stages; self.group = group; self.holders = holders; self.ways = ways
        }
    }

    public struct Tensor: Sendable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var rule: SplitRule
        public var placement: Placement
        public var geometry: TensorGeometry
        public var stages: [Int] { placement.stages }
        public var group: Int? { placement.group }
        public var holders: [Int] { placement.holders }
        /// One layout per rank of one copy (the ranks one copy is split over: TP, or an EP group's).
        public var layouts: [PieceLayout]
        /// The padded size of the split dimension, when padding is needed.
        public var paddedSize: Int?

        /// The layout of world rank `w`'s piece, nil when `w` holds none.
        public func layout(rank w: Int) -> PieceLayout? {
            sortedPosition(of: w, count: holders.count) { holders[$0] }.map { layouts[$0 % layouts.count] }
        }

        /// The shape of world rank `w`'s piece (the global shape when `w` holds none).
        public func pieceShape(rank w: Int) -> [Int] {
            var s = shape
            if let d = rule.dim, let l = layout(rank: w) { s[d] = l.length }
            return s
        }

        /// Bytes of world rank `w`'s piece, 0 when it holds none.
        public func pieceBytes(rank w: Int) -> Int { layout(rank: w).map { geometry.byteCount(of: $0) } ?? 0 }
    }

    /// The largest TP degree a plan accepts.
    public static let maxTP = ParallelLayout.maxWorldSize

    public let layout: ParallelLayout
    public var tp: Int { layout.tp }
    /// Number of world ranks (stages × TP).
    public var worldSize: Int { layout.worldSize }
    public let tensors: [Tensor]
    /// Total bytes of each world rank's pieces.
    public let bytesPerRank: [Int]
    private let index: [String: Int]

    /// Plans `tensors` (in the order they will be written) with `rules` (one per tensor) for `tp` ranks.
    public init(tensors: [(name: String, dtype: DType, shape: [Int])], rules: [SplitRule], tp: Int) throws {
        try self.init(tensors: tensors, rules: rules, layout: .tensorParallel(tp), roles: nil)
    }

    /// Plans `tensors` with `rules` over `layout`, each tensor placed by its role (nil: plain TP, every
    /// tensor on every rank).
    public init(tensors: [(name: String, dtype: DType, shape: [Int])], rules: [SplitRule], layout: ParallelLayout,
                roles: [TensorRole]?) throws {
        let tp = layout.tp
        guard tp >= 1 else { throw ShardKitError(.impossibleSplit, "TP degree must be at least 1, got \(tp)") }
        // Every tensor gets one layout per rank: an absurd degree would exhaust memory, not fail.
        guard tp <= ShardPlan.maxTP else {
            throw ShardKitError(.impossibleSplit,
                                "TP degree \(tp) is larger than the \(ShardPlan.maxTP) ShardKit supports")
        }
        try layout.validate(layers: nil)
        precondition(tensors.count == rules.count && (roles == nil || roles!.count == tensors.count))
        self.layout = layout
        var planned: [Tensor] = []
        planned.reserveCapacity(tensors.count)
        // Running bytes per rank: rank files and progress add pieces up, so the sums must fit too.
        var rankTotals = [Int](repeating: 0, count: layout.worldSize)
        var layoutsOf = [Int: RuleLayouts]()
        var placementOf = [TensorRole: Placement]()
        let everyRank = Placement(stages: [0], group: nil, holders: Array(0..<tp), ways: tp)
        for (i, (t, rule)) in zip(tensors, rules).enumerated() {
            var placed = everyRank
            if let role = roles?[i], !layout.isTensorParallelOnly {
                // One placement per distinct role (a layer, an expert of a layer, first or last stage).
                if let known = placementOf[role] { placed = known } else {
                    let (stages, group) = try layout.placement(of: role, tensor: t.name)
                    let (ranks, ways) = layout.holders(stages: stages, group: group)
                    placed = Placement(stages: stages, group: group, holders: ranks, ways: ways)
                    placementOf[role] = placed
                }
            }
            let geometry = try TensorGeometry(shape: t.shape, elementSize: t.dtype.size, dim: rule.dim, tensor: t.name)
            let layouts = try layoutsOf[placed.ways, default: RuleLayouts(ranks: placed.ways)](
                rule, size: geometry.size, tensor: t.name)
            let padded = rule.paddedSize(geometry.size, ranks: placed.ways)
            for (k, w) in placed.holders.enumerated() {
                let l = layouts[k % placed.ways]
                guard let bytes = checkedProduct([geometry.outer, l.length, geometry.inner]),
                      case (let sum, false) = rankTotals[w].addingReportingOverflow(bytes) else {
                    throw ShardKitError(.impossibleSplit, "tensor \(t.name): piece size overflows")
                }
                rankTotals[w] = sum
            }
            planned.append(Tensor(name: t.name, dtype: t.dtype, shape: t.shape, rule: rule, placement: placed,
                                  geometry: geometry, layouts: layouts,
                                  paddedSize: padded != geometry.size ? padded : nil))
        }
        self.tensors = planned
        self.bytesPerRank = rankTotals
        self.index = Dictionary(planned.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Plans a checkpoint with a rule set for plain TP.
    public init(checkpoint: Checkpoint, rules: RuleSet, tp: Int) throws {
        try self.init(checkpoint: checkpoint, rules: rules, request: LayoutRequest(tp: tp))
    }

    /// Plans a checkpoint with a rule set over the layout `request` asks for. Where the user's rules
    /// replace a preset's head split, the user's split must keep every head whole on its ranks
    /// (`checkHeads`).
    public init(checkpoint: Checkpoint, rules: RuleSet, request: LayoutRequest) throws {
        let list = checkpoint.tensors.map { (name: $0.info.name, dtype: $0.info.dtype, shape: $0.info.shape) }
        let named = list.map { ($0.name, $0.shape) }
        let quantization = try QuantizationFormat(config: checkpoint.config)
        if rules.padIntermediate && quantization == nil {
            throw ShardKitError(.invalidArgument, "padding the MLP intermediate size is for quantized checkpoints; "
                                + "\(checkpoint.directory) has no quantization_config")
        }
        let padding = rules.padIntermediate ? checkpoint.config.map(ShardPlan.intermediateSizes) ?? [] : []
        let chosen = try rules.assign(named, quantization: quantization, padding: padding)
        try self.init(tensors: list, rules: chosen, request: request, config: checkpoint.config)
        for (t, reference) in zip(tensors, rules.headSplits(named, chosen: chosen)) {
            if let reference { try ShardPlan.checkHeads(t, reference: reference, origin: rules.name) }
        }
    }

    /// Plans `tensors` with `rules` over the layout `request` asks for (`config` says whether the head
    /// is tied to the embedding).
    public init(tensors: [(name: String, dtype: DType, shape: [Int])], rules: [SplitRule], request: LayoutRequest,
                config: ModelConfig?) throws {
        if request.pp == 1 && request.ep == 1 && request.stageSizes == nil && request.placement == nil {
            try self.init(tensors: tensors, rules: rules, tp: request.tp)
            return
        }
        let (layout, roles) = try request.resolve(names: tensors.map(\.name), rules: rules, config: config)
        try self.init(tensors: tensors, rules: rules, layout: layout, roles: roles)
    }

    /// "0..<4, 8..<12": a list of ranks for messages and reports.
    public static func describeRanks(_ ranks: [Int]) -> String { describeRuns(ranks) }

    /// The MLP intermediate sizes config.json gives (dense, MoE experts, shared experts).
    static func intermediateSizes(_ config: ModelConfig) -> Set<Int> {
        Set(["intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size", "ffn_dim", "n_inner"]
            .compactMap { config.int($0) })
    }

    /// Refuses a split of `t` that cuts one of the heads `reference` (the preset's rule for it) knows:
    /// every boundary of every rank's intervals along the head dimension must fall between heads.
    static func checkHeads(_ t: Tensor, reference: SplitRule, origin: String) throws {
        guard let d = t.rule.dim, d == reference.dim else { return }
        let size = t.geometry.size
        // Allowed cuts: 0, size, part edges; head edges in head parts; anywhere in even parts.
        var parts: [(range: Range<Int>, unit: Int?)] = []
        switch reference {
        case .heads(_, let n), .kvHeads(_, let n), .outProjection(_, let n):
            parts = [(0..<size, n > 0 && size % n == 0 ? size / n : nil)]
        case .fused(_, let fused):
            var start = 0
            for p in fused {
                switch p.split {
                case .heads(let n), .kvHeads(let n): parts.append((start..<(start + p.size), n > 0 ? p.size / n : nil))
                case .even, .replicated: parts.append((start..<(start + p.size), 1))
                }
                start += p.size
            }
        default: return
        }
        func allowed(_ b: Int) -> Bool {
            if b <= 0 || b >= size { return true }
            for p in parts where p.range.contains(b) || p.range.upperBound == b {
                guard let unit = p.unit, unit > 0 else { return false }
                if (b - p.range.lowerBound) % unit == 0 { return true }
            }
            return false
        }
        for (r, layout) in t.layouts.enumerated() {
            for seg in layout.segments {
                for b in [seg.lowerBound, seg.upperBound] where !allowed(b) {
                    let unit = parts.first { $0.range.contains(b) }?.unit ?? 0
                    throw ShardKitError(.impossibleSplit,
                        "tensor \(t.name): rule \(t.rule.summary) at TP \(t.layouts.count) cuts a head (rank \(r)'s "
                        + "interval \(seg.lowerBound)..<\(seg.upperBound) of dimension \(d) has an edge inside a "
                        + "\(unit)-wide head); \(origin) splits it as \(reference.summary): use that rule (or heads / "
                        + "kv_heads), or a TP degree that keeps heads whole", remedy: .rules)
                }
            }
        }
    }


    public func tensor(named name: String) -> Tensor? { index[name].map { tensors[$0] } }
}

extension ShardPlan {
    /// The rule set for a checkpoint: the user's rules file (which may extend a preset), else the
    /// preset chosen by config.json's model_type.
    public static func rules(for checkpoint: Checkpoint,
                             rulesFile: (json: JSONValue, origin: String)?) throws -> RuleSet {
        if let rulesFile {
            return try RulesFile.ruleSet(from: rulesFile.json, origin: rulesFile.origin, config: checkpoint.config)
        }
        guard let config = checkpoint.config else {
            throw ShardKitError(.invalidCheckpoint,
                                "\(Path.join(checkpoint.directory, "config.json")): missing; a preset needs it",
                                remedy: .rules)
        }
        return try Architectures.rules(for: config)
    }
}
