/// An expert placement file (`--expert-placement`): for each MoE layer, a list of expert ids per EP
/// group. Either one list for every layer, `[[0, 3], [1, 2]]`, or per layer with an optional default,
/// `{"default": [[0, 1], [2, 3]], "layers": {"5": [[0, 3], [1, 2]]}}`.
public struct ExpertPlacement: Sendable, Equatable {
    public var fallback: [[Int]]?
    public var layers: [Int: [[Int]]]

    public init(fallback: [[Int]]?, layers: [Int: [[Int]]] = [:]) { self.fallback = fallback; self.layers = layers }

    /// Parses a placement file's JSON; `origin` names it in errors.
    public init(json: JSONValue, origin: String) throws {
        func bad(_ m: String) -> ShardKitError { ShardKitError(.invalidArgument, "\(origin): \(m)") }
        func groups(_ v: JSONValue, _ at: String) throws -> [[Int]] {
            guard let list = v.arrayValue else {
                throw bad("\(at): expected a list of EP groups (lists of expert ids)")
            }
            return try list.enumerated().map { g, ids in
                guard let ids = ids.arrayValue, ids.count <= 1 << 20 else {
                    throw bad("\(at)[\(g)]: expected a list of expert ids")
                }
                return try ids.map {
                    guard let e = $0.intValue else { throw bad("\(at)[\(g)]: expert ids are integers") }
                    return e
                }
            }
        }
        if json.arrayValue != nil {
            self.init(fallback: try groups(json, "placement"))
            return
        }
        guard let object = json.objectValue else { throw bad("expected a list of EP groups or an object") }
        var fallback: [[Int]]? = nil, layers: [Int: [[Int]]] = [:]
        for (key, value) in object {
            switch key {
            case "default": fallback = try groups(value, "default")
            case "layers":
                guard let map = value.objectValue else {
                    throw bad("\"layers\": expected an object of layer → groups")
                }
                for (layer, v) in map {
                    guard let i = Int(layer), i >= 0, String(i) == layer else {
                        throw bad("\"layers\": key \"\(layer)\" is not a layer index")
                    }
                    layers[i] = try groups(v, "layers.\(layer)")
                }
            default: throw bad("unknown key \"\(key)\" (expected \"default\" and \"layers\")")
            }
        }
        self.init(fallback: fallback, layers: layers)
    }
}

/// What a user asks for (`--tp`, `--pp`, `--pp-layers`, `--ep`, `--expert-placement`), resolved against
/// a checkpoint's tensor names into a `ParallelLayout` and every tensor's `TensorRole`.
public struct LayoutRequest: Sendable {
    public var tp: Int
    public var pp: Int
    /// Layers per stage (nil: vLLM's default partition).
    public var stageSizes: [Int]?
    public var ep: Int
    public var placement: ExpertPlacement?

    public init(tp: Int, pp: Int = 1, stageSizes: [Int]? = nil, ep: Int = 1, placement: ExpertPlacement? = nil) {
        self.tp = tp; self.pp = pp; self.stageSizes = stageSizes; self.ep = ep; self.placement = placement
    }

    /// The request that reproduces `layout` (its stage sizes and expert placement), e.g. to read a
    /// shard set's ranks straight from the unsharded checkpoint with `RankSlicer`.
    public init(reproducing layout: ParallelLayout) {
        self.init(tp: layout.tp, pp: layout.pp,
                  stageSizes: layout.pp > 1 ? layout.stageLayers.map(\.count) : nil, ep: layout.ep,
                  placement: layout.ep > 1 ? ExpertPlacement(fallback: nil, layers: layout.experts) : nil)
    }

    /// The layout and the role of each of `names` (whose split rules are `rules`). `config` (config.json)
    /// says whether the LM head is tied to the embedding; its layer count must agree with the names'.
    public func resolve(names: [String], rules: [SplitRule],
                        config: ModelConfig?) throws -> (layout: ParallelLayout, roles: [TensorRole]) {
        var layout = ParallelLayout(tp: tp, pp: pp, ep: ep)
        try layout.validate(layers: nil, requireStages: false)
        if let stageSizes, stageSizes.count != pp {
            throw ShardKitError(.impossibleSplit,
                                "--pp-layers gives \(stageSizes.count) stage sizes for \(pp) pipeline stages")
        }
        if placement != nil && ep == 1 {
            throw ShardKitError(.invalidArgument, "an expert placement needs EP > 1")
        }
        var roles = names.map(TensorRole.of)
        var layers = roles.compactMap(\.layer).max().map { $0 + 1 } ?? 0
        if let configured = config?.layers, configured > 0, configured < layers, pp > 1 || stageSizes != nil {
            // Layers past num_hidden_layers (DeepSeek-V3's multi-token-prediction layers) are not
            // decoder layers the stages run: they go with the last stage, as vLLM loads them there.
            for i in roles.indices where (roles[i].layer ?? -1) >= configured { roles[i] = .last }
            layers = configured
        }
        if pp > 1 || stageSizes != nil {
            guard layers > 0 else {
                throw ShardKitError(.impossibleSplit,
                                    "pipeline stages need decoder layers; no tensor name has a layer index")
            }
            let present = Set(roles.compactMap(\.layer))
            if present.count != layers {
                let missing = (0..<layers).first { !present.contains($0) }!
                throw ShardKitError(.impossibleSplit, "the tensors name layers up to \(layers - 1) but none of "
                                    + "layer \(missing); stages need every layer")
            }
            if let configured = config?.layers, configured != layers {
                throw ShardKitError(.impossibleSplit, "\(config!.path): num_hidden_layers is \(configured), "
                                    + "the checkpoint's tensors name layers 0..<\(layers)")
            }
            guard layers >= pp else {
                throw ShardKitError(.impossibleSplit, "\(pp) pipeline stages for \(layers) layers: "
                                    + "more stages than layers (each stage needs at least one)")
            }
            let sizes = try stageSizes ?? ParallelLayout.defaultStageSizes(layers: layers, stages: pp)
            layout.stageLayers = try ParallelLayout.stageRanges(sizes: sizes, layers: layers)
        } else if layers > 0 {
            layout.stageLayers = [0..<layers]
        }
        // The LM head tied to the input embedding: the last stage holds the embedding too.
        if LayoutRequest.tiesHead(config), !zip(roles, rules).contains(where: { $0 == .last && $1.kind == .vocab }) {
            for i in roles.indices where roles[i] == .first && rules[i].kind == .vocab { roles[i] = .firstAndLast }
        }
        if ep > 1 { layout.experts = try placeExperts(names: names, roles: roles) }
        try layout.validate(layers: layers > 0 && (pp > 1 || stageSizes != nil) ? layers : nil)
        return (layout, roles)
    }

    /// The experts of every MoE layer, placed over the EP groups.
    private func placeExperts(names: [String], roles: [TensorRole]) throws -> [Int: [[Int]]] {
        if let fused = names.first(where: TensorRole.isFusedExperts) {
            throw ShardKitError(.impossibleSplit, "tensor \(fused) holds every expert of its layer in one tensor; "
                                + "expert parallelism places per-expert tensors (experts.N.…), so EP \(ep) cannot "
                                + "place it (use EP 1)")
        }
        var ids: [Int: Set<Int>] = [:]
        for r in roles { if case .layer(let i, let e?) = r { ids[i, default: []].insert(e) } }
        guard !ids.isEmpty else {
            throw ShardKitError(.impossibleSplit, "EP \(ep) needs a mixture-of-experts model; no tensor name has an "
                                + "expert index (experts.N.…)")
        }
        for layer in (placement?.layers.keys).map(Array.init) ?? [] where ids[layer] == nil {
            throw ShardKitError(.impossibleSplit, "the expert placement names layer \(layer), which has no experts")
        }
        var result: [Int: [[Int]]] = [:]
        for (layer, set) in ids {
            let n = set.max()! + 1
            if set.count != n {
                let missing = (0..<n).first { !set.contains($0) }!
                throw ShardKitError(.impossibleSplit, "layer \(layer): the tensors name experts up to \(n - 1) but "
                                    + "none of expert \(missing)")
            }
            guard n >= ep else {
                throw ShardKitError(.impossibleSplit, "layer \(layer): \(n) experts cannot fill \(ep) EP groups "
                                    + "(each group needs at least one)")
            }
            let groups = placement?.layers[layer] ?? placement?.fallback
                ?? ParallelLayout.contiguousPlacement(experts: n, groups: ep)
            try ParallelLayout.checkPlacement(groups, experts: n, layer: layer, ep: ep)
            result[layer] = groups
        }
        return result
    }

    /// True when config.json describes a model with an LM head whose weights are the input embedding's:
    /// `tie_word_embeddings` (transformers' default is true) on a *ForCausalLM, *LMHeadModel, *ForMaskedLM
    /// or *ForConditionalGeneration class.
    static func tiesHead(_ config: ModelConfig?) -> Bool {
        guard let config, config.tieWordEmbeddings ?? true else { return false }
        let classes = config.json["architectures"]?.arrayValue?.compactMap(\.stringValue) ?? []
        return classes.contains { c in
            ["ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration"].contains { c.hasSuffix($0) }
        }
    }
}
