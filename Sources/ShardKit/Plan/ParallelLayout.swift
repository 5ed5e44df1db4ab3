/// How a model is laid out over `pp` pipeline stages of `tp` tensor-parallel ranks each, with the
/// experts of every MoE layer spread over `ep` expert-parallel groups of `tp / ep` ranks.
///
/// World rank `w = stage · tp + r`. Stage `s` holds the decoder layers `stageLayers[s]`; the
/// embedding goes with stage 0, the final norm and head with the last stage. With `ep > 1`, the
/// experts of layer `i` are placed by `experts[i]` (one list of expert ids per group) and each is
/// split over its group's `tp / ep` ranks by its rule; `ep == 1` splits every expert over all ranks.
public struct ParallelLayout: Sendable, Equatable {
    public var tp: Int
    public var pp: Int
    public var ep: Int
    /// Each stage's decoder layers (half-open ranges, contiguous, in order); empty when `pp == 1` and
    /// the layer count is not known (a version 1 manifest).
    public var stageLayers: [Range<Int>]
    /// Expert placement by MoE layer index: for each EP group, its expert ids. Empty when `ep == 1`.
    public var experts: [Int: [[Int]]]

    public init(tp: Int, pp: Int = 1, ep: Int = 1, stageLayers: [Range<Int>] = [], experts: [Int: [[Int]]] = [:]) {
        self.tp = tp; self.pp = pp; self.ep = ep; self.stageLayers = stageLayers; self.experts = experts
    }

    /// Plain tensor parallelism over `tp` ranks.
    public static func tensorParallel(_ tp: Int) -> ParallelLayout { ParallelLayout(tp: tp) }

    public var worldSize: Int { pp * tp }
    /// Ranks per expert-parallel group.
    public var groupSize: Int { tp / ep }
    /// True for plain tensor parallelism (a version 1 manifest describes it).
    public var isTensorParallelOnly: Bool { pp == 1 && ep == 1 }

    public func worldRank(stage: Int, tp r: Int) -> Int { stage * tp + r }
    /// The (stage, TP rank) coordinates of world rank `w`.
    public func coordinates(of w: Int) -> (pp: Int, tp: Int) { (w / tp, w % tp) }

    /// The stage that holds decoder layer `layer`.
    public func stage(ofLayer layer: Int) -> Int? {
        if pp == 1 { return 0 }
        return stageLayers.firstIndex { $0.contains(layer) }
    }

    /// The EP group that holds expert `expert` of MoE layer `layer` (nil when `ep == 1`).
    public func group(ofExpert expert: Int, layer: Int) -> Int? {
        guard ep > 1 else { return nil }
        return experts[layer]?.firstIndex { $0.contains(expert) }
    }

    /// The stages that hold a tensor of `role` (nil: a layer past the last stage).
    public func stages(of role: TensorRole) -> [Int]? {
        switch role {
        case .first: return [0]
        case .last: return [pp - 1]
        case .firstAndLast: return pp == 1 ? [0] : [0, pp - 1]
        case .layer(let i, _): return stage(ofLayer: i).map { [$0] }
        }
    }

    /// The world ranks that hold a tensor kept by `stages` (and, for an expert with `ep > 1`, by EP
    /// group `group` of each), in order, and how many of them one copy is split over (holder k holds
    /// piece `k % ways` of the rule's layout).
    public func holders(stages: [Int], group: Int?) -> (ranks: [Int], ways: Int) {
        let ways = group == nil ? tp : groupSize
        var ranks: [Int] = []
        ranks.reserveCapacity(stages.count * ways)
        for s in stages {
            let first = s * tp + (group ?? 0) * groupSize
            ranks.append(contentsOf: first..<(first + ways))
        }
        return (ranks, ways)
    }

    /// The stages and EP group of a tensor of `role`. Throws for a role the layout cannot place (a
    /// layer in no stage, an expert in no group).
    public func placement(of role: TensorRole, tensor: String) throws -> (stages: [Int], group: Int?) {
        guard let stages = stages(of: role) else {
            throw ShardKitError(.impossibleSplit, "tensor \(tensor): layer \(role.layer ?? -1) is in no pipeline "
                + "stage (stages hold "
                + "\(stageLayers.map { "\($0.lowerBound)..<\($0.upperBound)" }.joined(separator: ", ")))")
        }
        guard ep > 1, case .layer(let i, let expert?) = role else { return (stages, nil) }
        guard let g = group(ofExpert: expert, layer: i) else {
            throw ShardKitError(.impossibleSplit,
                                "tensor \(tensor): expert \(expert) of layer \(i) is in no expert-parallel group")
        }
        return (stages, g)
    }

    /// The largest number of world ranks ShardKit plans for.
    public static let maxWorldSize = 1 << 16

    /// Checks the numbers against each other (and, with `layers`, that the stages hold exactly that
    /// many layers). `requireStages` false accepts a layout whose stage ranges are not set yet.
    public func validate(layers: Int?, requireStages: Bool = true) throws {
        func refuse(_ m: String) -> ShardKitError { ShardKitError(.impossibleSplit, m) }
        guard tp >= 1 else { throw refuse("TP degree must be at least 1, got \(tp)") }
        guard pp >= 1 else { throw refuse("pipeline stages must be at least 1, got \(pp)") }
        guard ep >= 1 else { throw refuse("expert-parallel groups must be at least 1, got \(ep)") }
        guard case (let w, false) = pp.multipliedReportingOverflow(by: tp), w <= ParallelLayout.maxWorldSize else {
            throw refuse("\(pp) stages × TP \(tp) is more than the \(ParallelLayout.maxWorldSize) ranks "
                         + "ShardKit plans")
        }
        guard tp % ep == 0 else {
            throw refuse("EP \(ep) does not divide TP \(tp) (each EP group is TP/EP ranks of one stage)")
        }
        if (pp > 1 && requireStages) || !stageLayers.isEmpty {
            guard stageLayers.count == pp else {
                throw refuse("\(stageLayers.count) stage layer ranges for \(pp) stages")
            }
            var next = 0
            for (s, r) in stageLayers.enumerated() {
                guard r.lowerBound == next, !r.isEmpty else {
                    throw refuse("stage \(s) must hold a non-empty range of layers starting at \(next), "
                                 + "found \(r.lowerBound)..<\(r.upperBound)")
                }
                next = r.upperBound
            }
            if let layers, next != layers {
                throw refuse("stages hold layers 0..<\(next), the model has \(layers)")
            }
        }
        for (layer, groups) in experts {
            guard groups.count == ep else {
                throw refuse("layer \(layer): expert placement has \(groups.count) groups, EP is \(ep)")
            }
        }
    }

    /// vLLM's default partition of `layers` layers over `stages` stages: ⌊layers / stages⌋ each, the
    /// remainder one more each for the stages before the last, counting back from the second to last
    /// (the last stage also runs the final norm and head; vllm.distributed.utils.get_pp_indices).
    public static func defaultStageSizes(layers: Int, stages: Int) throws -> [Int] {
        guard stages >= 1 else { throw ShardKitError(.impossibleSplit, "pipeline stages must be at least 1") }
        guard layers >= stages else {
            throw ShardKitError(.impossibleSplit, "\(stages) pipeline stages for \(layers) layers: "
                                + "more stages than layers (each stage needs at least one)")
        }
        var sizes = [Int](repeating: layers / stages, count: stages)
        let remainder = layers % stages
        if remainder > 0 { for i in 2..<(remainder + 2) { sizes[stages - i] += 1 } }
        return sizes
    }

    /// Stage layer ranges from per-stage counts, which must be positive and add up to `layers`.
    public static func stageRanges(sizes: [Int], layers: Int) throws -> [Range<Int>] {
        if let s = sizes.firstIndex(where: { $0 < 1 }) {
            throw ShardKitError(.impossibleSplit, "stage \(s) has \(sizes[s]) layers; each stage needs at least one")
        }
        guard let total = checkedSum(sizes), total == layers else {
            throw ShardKitError(.impossibleSplit, "stage layer counts \(sizes.map(String.init).joined(separator: ","))"
                                + " add up to \(checkedSum(sizes).map(String.init) ?? "more than \(Int.max)"), "
                                + "the model has \(layers) layers")
        }
        var start = 0
        return sizes.map { n in defer { start += n }; return start..<(start + n) }
    }

    /// The default expert placement: contiguous blocks, ⌊n / ep⌋ experts per group and one more for
    /// each of the first `n mod ep` groups (vLLM's linear placement).
    public static func contiguousPlacement(experts n: Int, groups: Int) -> [[Int]] {
        var start = 0
        return (0..<groups).map { g in
            let count = n / groups + (g < n % groups ? 1 : 0)
            defer { start += count }
            return Array(start..<(start + count))
        }
    }

    /// Checks one layer's placement: `groups.count == ep`, each of `0..<n` in exactly one group, every
    /// group non-empty.
    public static func checkPlacement(_ groups: [[Int]], experts n: Int, layer: Int, ep: Int) throws {
        func refuse(_ m: String) -> ShardKitError { ShardKitError(.impossibleSplit, "layer \(layer): \(m)") }
        guard groups.count == ep else {
            throw refuse("the expert placement has \(groups.count) groups, EP is \(ep)")
        }
        var seen = [Int](repeating: -1, count: n)
        for (g, ids) in groups.enumerated() {
            guard !ids.isEmpty else { throw refuse("EP group \(g) holds no expert (\(n) experts over \(ep) groups)") }
            for e in ids {
                guard e >= 0 && e < n else { throw refuse("the placement names expert \(e); experts are 0..<\(n)") }
                guard seen[e] < 0 else {
                    throw refuse("the placement names expert \(e) twice (groups \(seen[e]) and \(g))")
                }
                seen[e] = g
            }
        }
        if let missing = seen.firstIndex(of: -1) {
            throw refuse("the placement leaves out expert \(missing) (each of the \(n) experts must be in one group)")
        }
    }
}

/// Where a tensor goes in a pipeline: with one decoder layer (and, for a per-expert tensor of an MoE
/// layer, that expert), or outside the layers with the first stage (embeddings), the last stage (final
/// norm, LM head, pooler), or both (an embedding tied to the LM head).
public enum TensorRole: Sendable, Equatable, Hashable {
    case layer(Int, expert: Int?)
    case first
    case last
    case firstAndLast

    /// The modules outside the layers that belong to the last stage: the final norm, the LM head,
    /// OPT's `project_out`, the pooler and masked-LM head (matched as a whole path component before
    /// `.weight` / `.bias`).
    static let lastStageModules: Set<Substring> = [
        "norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm", "lm_head", "embed_out", "project_out",
    ]

    /// The role of `name`: the first path component that is a number is the layer index (so
    /// `model.layers.3.…`, `transformer.h.3.…` and `bert.encoder.layer.3.…` are layer 3), and the
    /// number after an `experts` component is the expert. A tensor outside the layers goes with the last
    /// stage when it is one of `lastStageModules` or in a `pooler` / `cls` head, else with the first.
    public static func of(_ name: String) -> TensorRole {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        if let i = parts.firstIndex(where: isIndex), let layer = Int(parts[i]) {
            var expert: Int? = nil
            if let e = parts[(i + 1)...].firstIndex(of: "experts"), e + 1 < parts.count, isIndex(parts[e + 1]),
               e + 2 < parts.count {
                expert = Int(parts[e + 1])
            }
            return .layer(layer, expert: expert)
        }
        let module = parts.count >= 2 ? parts[parts.count - 2] : parts[0]
        if lastStageModules.contains(module) || parts.contains("pooler") || parts.first == "cls"
            || parts.first == "lm_head" {
            return .last
        }
        return .first
    }

    /// True for `experts.<name>` tensors that hold every expert of a layer in one tensor (no
    /// expert index in the name): expert parallelism cannot place them by selecting tensors.
    public static func isFusedExperts(_ name: String) -> Bool {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard let e = parts.firstIndex(of: "experts"), e + 1 < parts.count else { return false }
        return !isIndex(parts[e + 1])
    }

    private static func isIndex(_ s: Substring) -> Bool {
        !s.isEmpty && s.count <= 9 && s.allSatisfy { $0 >= "0" && $0 <= "9" }
    }

    public var layer: Int? { if case .layer(let i, _) = self { return i }; return nil }
    public var expert: Int? { if case .layer(_, let e) = self { return e }; return nil }
}
