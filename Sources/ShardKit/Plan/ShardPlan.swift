/// The plan of a shard set: every tensor's rule, and the global intervals each rank holds. Computing
/// it checks every split before anything is written.
public struct ShardPlan: Sendable {
    public struct Tensor: Sendable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var rule: SplitRule
        public var geometry: TensorGeometry
        /// One layout per rank.
        public var layouts: [PieceLayout]
        /// The padded size of the split dimension, when padding is needed.
        public var paddedSize: Int?

        /// The shape of rank `r`'s piece.
        public func pieceShape(rank r: Int) -> [Int] {
            var s = shape
            if let d = rule.dim { s[d] = layouts[r].length }
            return s
        }

        public func pieceBytes(rank r: Int) -> Int { geometry.byteCount(of: layouts[r]) }
    }

    /// The largest TP degree a plan accepts.
    public static let maxTP = 1 << 16

    public let tp: Int
    public let tensors: [Tensor]
    /// Total bytes of each rank's pieces.
    public let bytesPerRank: [Int]
    private let index: [String: Int]

    /// Plans `tensors` (in the order they will be written) with `rules` (one per tensor) for `tp` ranks.
    public init(tensors: [(name: String, dtype: DType, shape: [Int])], rules: [SplitRule], tp: Int) throws {
        guard tp >= 1 else { throw ShardKitError(.impossibleSplit, "TP degree must be at least 1, got \(tp)") }
        // Every tensor gets one layout per rank: an absurd degree would exhaust memory, not fail.
        guard tp <= ShardPlan.maxTP else {
            throw ShardKitError(.impossibleSplit,
                                "TP degree \(tp) is larger than the \(ShardPlan.maxTP) ShardKit supports")
        }
        precondition(tensors.count == rules.count)
        self.tp = tp
        var planned: [Tensor] = []
        planned.reserveCapacity(tensors.count)
        // Running bytes per rank: rank files and progress add pieces up, so the sums must fit too.
        var rankTotals = [Int](repeating: 0, count: tp)
        var layoutsOf = RuleLayouts(ranks: tp)
        for (t, rule) in zip(tensors, rules) {
            let geometry = try TensorGeometry(shape: t.shape, elementSize: t.dtype.size, dim: rule.dim, tensor: t.name)
            let layouts = try layoutsOf(rule, size: geometry.size, tensor: t.name)
            let padded = rule.paddedSize(geometry.size, ranks: tp)
            for (r, l) in layouts.enumerated() {
                guard let bytes = checkedProduct([geometry.outer, l.length, geometry.inner]),
                      case (let sum, false) = rankTotals[r].addingReportingOverflow(bytes) else {
                    throw ShardKitError(.impossibleSplit, "tensor \(t.name): piece size overflows")
                }
                rankTotals[r] = sum
            }
            planned.append(Tensor(name: t.name, dtype: t.dtype, shape: t.shape, rule: rule, geometry: geometry,
                                  layouts: layouts, paddedSize: padded != geometry.size ? padded : nil))
        }
        self.tensors = planned
        self.bytesPerRank = rankTotals
        self.index = Dictionary(planned.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Plans a checkpoint with a rule set. Where the user's rules replace a preset's head split, the
    /// user's split must keep every head whole on its ranks (`checkHeads`).
    public init(checkpoint: Checkpoint, rules: RuleSet, tp: Int) throws {
        let list = checkpoint.tensors.map { (name: $0.info.name, dtype: $0.info.dtype, shape: $0.info.shape) }
        let named = list.map { ($0.name, $0.shape) }
        let chosen = try rules.assign(named)
        try self.init(tensors: list, rules: chosen, tp: tp)
        for (t, reference) in zip(tensors, rules.headSplits(named, chosen: chosen)) {
            if let reference { try ShardPlan.checkHeads(t, reference: reference, origin: rules.name) }
        }
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
