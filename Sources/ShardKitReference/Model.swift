import Foundation
import ShardKit

/// The reference forward pass of one architecture (Hugging Face transformers 4.57 semantics), written
/// once over G simulated ranks: with a single rank holding full weights it is the plain model; with a
/// shard set's ranks it is the TP server's computation, collectives included.
struct Model {
    typealias Observer = (_ name: String, _ perRank: [Act]) throws -> Void

    let type: String
    let architecture: Architecture
    let pass: ForwardPass
    let config: ModelConfig
    let hidden: Int, heads: Int, kvHeads: Int, headDim: Int, layers: Int, vocab: Int
    let eps: Double

    /// The model types with a forward pass (the registry's).
    static var supported: [String] { Architectures.withForwardPass }

    init(config: ModelConfig) throws {
        guard let type = config.modelType else { throw Model.configError(config, "no model_type") }
        guard let architecture = Architectures.named(type), let pass = architecture.forwardPass else {
            throw ShardKitError(.verificationFailed, "model_type \"\(type)\" has no reference forward pass "
                + "(supported: \(Model.supported.joined(separator: ", "))); use the generic linear check")
        }
        func need(_ v: Int?, _ what: String) throws -> Int {
            guard let v, v > 0 else { throw Model.configError(config, "missing or invalid \(what)") }
            return v
        }
        self.type = type
        self.architecture = architecture
        self.pass = pass
        self.config = config
        hidden = try need(config.hiddenSize, "hidden_size")
        heads = try need(config.attentionHeads, "num_attention_heads")
        kvHeads = try need(config.keyValueHeads, "num_key_value_heads")
        headDim = try need(config.headDim, "head_dim")
        layers = try need(config.layers, "num_hidden_layers")
        vocab = try need(config.vocabSize, "vocab_size")
        // transformers 4.57's config defaults, for a config.json that omits the key.
        eps = config.double("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")
            ?? architecture.defaultEpsilon
        guard heads % kvHeads == 0 else {
            throw Model.configError(config, "\(heads) heads not a multiple of \(kvHeads) KV heads")
        }
        // The pass multiplies these (q/kv widths, buffer sizes): absurd values must fail here, not trap.
        guard !heads.multipliedReportingOverflow(by: headDim).overflow,
              !hidden.multipliedReportingOverflow(by: 4).overflow else {
            throw Model.configError(config, "\(heads) heads × head_dim \(headDim) (hidden \(hidden)) is too large")
        }
    }

    /// A verification failure in config.json: "<path>: message".
    static func configError(_ config: ModelConfig, _ message: String) -> ShardKitError {
        ShardKitError(.verificationFailed, "\(config.path): \(message)")
    }

    /// A verification failure on one rank: "rank r: message".
    static func rankError(_ rank: Int, _ message: String) -> ShardKitError {
        ShardKitError(.verificationFailed, "rank \(rank): \(message)")
    }

    /// "logits" for decoders, "last_hidden_state" for BERT and RoBERTa.
    var outputName: String { pass == .bert ? "last_hidden_state" : "logits" }
    var outputWidth: Int { pass == .bert ? hidden : vocab }

    /// Runs the pass; `observe` sees every rank's hidden state after the embeddings, after each layer
    /// and after the final norm. Returns every rank's final output (labels 0..<outputWidth).
    func forward(_ ctx: TPContext, tokens: [Int], tokenTypes: [Int]?, observe: Observer) throws -> [Act] {
        switch pass {
        case .gpt2: return try gpt2(ctx, tokens, observe)
        case .gptNeoX: return try gptNeoX(ctx, tokens, observe)
        case .bert: return try bert(ctx, tokens, tokenTypes ?? Array(repeating: 0, count: tokens.count), observe)
        case .llamaFamily: return try llamaFamily(ctx, tokens, observe)
        case .deepseekV3: return try deepseekV3(ctx, tokens, observe)
        case .falcon: return try falcon(ctx, tokens, observe)
        case .bloom: return try bloom(ctx, tokens, observe)
        case .gptJ: return try gptJ(ctx, tokens, observe)
        case .opt: return try opt(ctx, tokens, observe)
        case .phi: return try phi(ctx, tokens, observe)
        }
    }

    var activation: Activation {
        get throws {
            // transformers 4.57 reads hidden_act only (Gemma's hidden_activation is ignored there);
            // Gemma 2 and 3 read hidden_activation only. Falcon spells it `activation`.
            let configured = gemmaNext ? config.string("hidden_activation")
                : config.string("hidden_act", "activation_function", "activation")
            let name = configured ?? architecture.defaultActivation
            return try Activation(name: name)
        }
    }

    /// Gemma 2 and Gemma 3 (text): Gemma's layer with norms after each branch too.
    var gemmaNext: Bool { type == "gemma2" || type == "gemma3_text" }

    /// The rotary embedding for `positions`, with the settings `config.rotary` reads (`factor`: the
    /// rotating fraction of each head; `scaling`: the rope scaling object, by default `rope_scaling`,
    /// else `rope_parameters`).
    func rope(_ positions: [Int], _ settings: ModelConfig.Rotary, factor: Double, scaling: JSONValue? = nil,
              interleaved: Bool = false) throws -> Rope {
        guard factor > 0, factor <= 1 else {
            throw Model.configError(config, "partial rotary factor \(factor) is not in (0, 1]")
        }
        var dims = factor == 1 ? headDim : Int(Double(headDim) * factor)
        dims -= dims % 2
        let scaling = scaling ?? config.json["rope_scaling"] ?? config.json["rope_parameters"]
        return try Rope(dims: dims, theta: settings.theta, positions: positions,
                        scaling: scaling, config: config, interleaved: interleaved)
    }

    func rmsAll(_ ctx: TPContext, _ h: [Act], _ name: String, plusOne: Bool = false) throws -> [Act] {
        let w = try ctx.loadAll(name)
        return try (0..<ctx.G).map { try Norm.rms(h[$0], w[$0], eps: eps, plusOne: plusOne, rank: $0) }
    }

    /// LayerNorm `prefix`.weight and, with `bias`, `prefix`.bias.
    func layerNormAll(_ ctx: TPContext, _ h: [Act], _ prefix: String, bias: Bool = true) throws -> [Act] {
        let w = try ctx.loadAll(prefix + ".weight"), b = bias ? try ctx.loadAll(prefix + ".bias") : nil
        return try (0..<ctx.G).map { try Norm.layer(h[$0], w[$0], b?[$0], eps: eps, rank: $0) }
    }

    /// Residual add; states of different widths (tensor shapes that disagree with each other) throw.
    func add(_ a: inout [Act], _ b: [Act], _ what: @autoclosure () -> String) throws {
        for r in 0..<a.count {
            guard a[r].labels == b[r].labels, a[r].rows == b[r].rows else {
                throw ShardKitError(.verificationFailed, "rank \(r) \(what()): adds features \(describe(b[r].labels)) "
                    + "to a hidden state of features \(describe(a[r].labels))")
            }
            a[r] += b[r]
        }
    }

    /// The final LayerNorm `norm` (observed as "final_norm"), then the LM head: `lm_head.weight`, or the
    /// embedding `tied` to it when the checkpoint has no head (GPT-2, Falcon, BLOOM).
    func finalNormAndHead(_ ctx: TPContext, _ h: [Act], norm: String, tied: String,
                          _ observe: Observer) throws -> [Act] {
        let normed = try layerNormAll(ctx, h, norm)
        try observe("final_norm", normed)
        return try lmHead(ctx, normed, weight: ctx.weights.has("lm_head.weight") ? "lm_head.weight" : tied)
    }

    /// LM head: each rank's vocab rows (plus its rows of `bias`, split with them), all-gathered, padding
    /// dropped.
    func lmHead(_ ctx: TPContext, _ h: [Act], weight: String, bias: String? = nil) throws -> [Act] {
        var outs: [Act] = []
        var size = vocab
        let b = try bias.flatMap { try ctx.loadAllIfPresent($0) }
        for r in 0..<ctx.G {
            let w = try ctx.load(weight, rank: r)
            let (y, partial) = try ctx.linear(h[r], w, bias: b?[r], rank: r)
            if partial {
                throw Model.rankError(r, "\(weight) is split along the hidden dimension; an LM head is vocab-parallel")
            }
            size = w.globalShape[0]
            outs.append(y)
        }
        guard size == vocab else {
            throw ShardKitError(.verificationFailed, "\(weight) has \(size) rows, config.json says vocab_size \(vocab)")
        }
        return try ctx.allGather(outs, size: size, what: weight)
    }

    /// `sinks`: each rank's attention sinks by global head (gpt-oss).
    func attention(_ q: [Act], _ k: [Act], _ v: [Act], kvHeads: Int, rope: Rope?, causal: Bool, window: Int? = nil,
                   chunk: Int? = nil, softcap: Float? = nil, alibi: [Float]? = nil, sinks: [[Int: Float]]? = nil,
                   scale: Float, layer: String) throws -> [Act] {
        try (0..<q.count).map {
            try Attention.run(q: q[$0], k: k[$0], v: v[$0], heads: heads, kvHeads: kvHeads, headDim: headDim,
                              rope: rope, causal: causal, window: window, chunk: chunk, softcap: softcap,
                              alibi: alibi, sinks: sinks?[$0], scale: scale, rank: $0, layer: layer)
        }
    }

    /// gpt-oss's attention sinks `name` ([heads], split by head): each rank's values by global head.
    func sinks(_ ctx: TPContext, _ name: String) throws -> [[Int: Float]] {
        try (0..<ctx.G).map { r in
            let s = try ctx.load(name, rank: r)
            guard s.shape.count == 1, s.globalShape == [heads] else {
                throw Model.rankError(r, "\(name) must hold one value per head (\(heads)), got \(s.globalShape)")
            }
            var byHead: [Int: Float] = [:]
            for (i, h) in s.labels(along: 0).enumerated() where h < heads { byHead[h] = s.data[i] }
            return byHead
        }
    }

    /// Gemma 2 / 3, gpt-oss: whether decoder layer `i` is a local (sliding-window) layer: `layer_types`,
    /// else Gemma 2's and gpt-oss's alternation (even layers local) or Gemma 3's `sliding_window_pattern`
    /// (default 6: every sixth layer global).
    func gemmaLocal(layer i: Int) -> Bool {
        if let types = config.json["layer_types"]?.arrayValue, i < types.count {
            return types[i].stringValue == "sliding_attention"
        }
        let pattern = type == "gemma2" || type == "gpt_oss" ? 2 : config.int("sliding_window_pattern") ?? 6
        return (i + 1) % pattern != 0
    }

    /// Llama 4 (text): whether decoder layer `i` rotates q and k (`no_rope_layers`, else every
    /// `no_rope_layer_interval`-th layer, default 4, does not), its attention chunk (`layer_types`
    /// "chunked_attention", else the rope layers, with `attention_chunk_size`), its query temperature
    /// (no-rope layers with `attn_temperature_tuning`: `floor_scale`, `attn_scale`) and whether it is
    /// sparse (`moe_layers`, else every `interleave_moe_layer_step`-th).
    func llama4Layer(_ i: Int) throws -> (rope: Bool, chunk: Int?, temperature: (Double, Double)?, moe: Bool) {
        let rope: Bool
        if let list = config.json["no_rope_layers"]?.arrayValue, !list.isEmpty {
            guard i < list.count, let v = list[i].intValue else {
                throw Model.configError(config, "no_rope_layers has no entry for layer \(i)")
            }
            rope = v != 0
        } else {
            let interval = config.int("no_rope_layer_interval") ?? 4
            rope = interval <= 0 || (i + 1) % interval != 0
        }
        let chunkSize = config.int("attention_chunk_size")
        var chunked = rope && chunkSize != nil
        if let types = config.json["layer_types"]?.arrayValue, i < types.count {
            chunked = types[i].stringValue == "chunked_attention"
        }
        if chunked && (chunkSize ?? 0) <= 0 {
            throw Model.configError(config, "layer \(i) is chunked but attention_chunk_size is \(chunkSize ?? 0)")
        }
        let tuned = !rope && (config.bool("attn_temperature_tuning") ?? true)
        let temperature = tuned ? (config.double("floor_scale") ?? 8192, config.double("attn_scale") ?? 0.1) : nil
        let moe: Bool
        if let list = config.json["moe_layers"]?.arrayValue {
            moe = list.contains { $0.intValue == i }
        } else {
            let step = config.int("interleave_moe_layer_step") ?? 1
            moe = step > 0 && (i + 1) % step == 0
        }
        return (rope, chunked ? chunkSize : nil, temperature, moe)
    }

    /// Llama 4's attention temperature: the query of token t times log1p(⌊(t + 1) / floor⌋) · scale + 1.
    func llama4Temperature(_ q: inout [Act], floor: Double, scale: Double) {
        for r in 0..<q.count {
            let n = q[r].cols
            for t in 0..<q[r].rows {
                let s = Float(log1p(((Double(t) + 1) / floor).rounded(.down)) * scale + 1)
                for j in 0..<n { q[r].data[t * n + j] *= s }
            }
        }
    }

    /// The sliding window of decoder layer `i`, as HF applies it: Mistral, Mixtral, Phi-3 and StarCoder2 use
    /// `sliding_window` on every layer when set; Qwen2 on the layers `layer_types` marks
    /// "sliding_attention" (else layers ≥ max_window_layers, default 28), only when use_sliding_window;
    /// Gemma 2 and 3 and gpt-oss on their local layers.
    func slidingWindow(layer i: Int) -> Int? {
        guard let w = config.int("sliding_window"), w > 0 else { return nil }
        switch type {
        case "mistral", "mixtral", "phi3", "starcoder2": return w
        case "gemma2", "gemma3_text", "gpt_oss": return gemmaLocal(layer: i) ? w : nil
        case "qwen2", "qwen3", "qwen2_moe":
            // Their configs drop sliding_window unless use_sliding_window (default false).
            guard config.bool("use_sliding_window") == true else { return nil }
            if let types = config.json["layer_types"]?.arrayValue, i < types.count {
                return types[i].stringValue == "sliding_attention" ? w : nil
            }
            return i >= (config.int("max_window_layers") ?? 28) ? w : nil
        default: return nil
        }
    }

    // MARK: Llama, Mistral, Qwen2(-MoE), Qwen3(-MoE), Granite, OLMo 2, StableLM, StarCoder2, Gemma 1-3, Mixtral,
    // Phi-3, GLM-4, Cohere, gpt-oss, Llama 4 (text)

    func llamaFamily(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        let G = ctx.G, T = tokens.count
        let gemma = type == "gemma" || gemmaNext, phi3 = type == "phi3", gemma3 = type == "gemma3_text"
        let embedName = "model.embed_tokens.weight"
        var h = try ctx.embed(tokens, table: embedName)
        if gemma {
            // Gemma scales by sqrt(hidden) computed in the model dtype.
            let normalizer = Widen.round(Float(Double(hidden).squareRoot()), to: ctx.weights.dtype(embedName) ?? .f32)
            for r in 0..<G { for i in 0..<h[r].data.count { h[r].data[i] *= normalizer } }
        }
        // Granite scales the embeddings, each residual branch, the attention scores and the logits by
        // constants of its config.
        let granite = type == "granite", olmo2 = type == "olmo2", stablelm = type == "stablelm"
        if stablelm, config.bool("qk_layernorm") == true {
            throw Model.configError(config, "StableLM with qk_layernorm (per-head LayerNorms) has no reference pass")
        }
        // StableLM and StarCoder2: LayerNorms (weight and bias) instead of RMSNorms; StableLM optionally
        // runs attention and MLP side by side. Cohere: LayerNorms without bias, always side by side,
        // per-head q/k LayerNorms, logits scaled. GLM-4: a fused gate_up_proj (as Phi-3) and norms after
        // each branch too.
        let starcoder2 = type == "starcoder2"
        let cohere = type == "cohere", glm4 = type == "glm4", gptOss = type == "gpt_oss", llama4 = type == "llama4_text"
        let parallel = stablelm && config.bool("use_parallel_residual") == true || cohere
        func norm(_ h: [Act], _ name: String) throws -> [Act] {
            stablelm || starcoder2 || cohere
                ? try layerNormAll(ctx, h, String(name.dropLast(".weight".count)), bias: stablelm || starcoder2)
                : try rmsAll(ctx, h, name, plusOne: gemma)
        }
        let residualScale = Float(granite ? config.double("residual_multiplier") ?? 1 : 1)
        if granite {
            let m = Float(config.double("embedding_multiplier") ?? 1)
            for r in 0..<G { for i in 0..<h[r].data.count { h[r].data[i] *= m } }
        }
        try observe("embeddings", h)
        // Phi-3, StableLM (default 0.25) and GLM-4 (default 0.5) rotate part of each head; GLM-4 and
        // Cohere rotate adjacent pairs.
        let rotary = config.rotary(defaultFactor: stablelm ? 0.25 : glm4 ? 0.5 : 1)
        let rope = try self.rope(Array(0..<T), rotary, factor: phi3 || stablelm || glm4 ? rotary.partialFactor : 1,
                                 interleaved: glm4 || cohere || llama4)
        // Gemma 3's local layers have their own rope base (older configs: rope_local_base_freq) and no
        // scaling; its global layers the model's (rope_theta, default 1e6, and rope_scaling).
        var localRope = rope, globalRope = rope
        if gemma3 {
            let local = config.rotary(thetaKeys: ["rope_local_base_freq"], layerType: "sliding_attention")
            localRope = try self.rope(Array(0..<T), local, factor: 1,
                                      scaling: config.ropeParameters(layerType: "sliding_attention") ?? .null)
            let legacy = config.json["rope_scaling"].flatMap { $0.objectValue != nil ? $0 : nil }
            globalRope = try self.rope(Array(0..<T), config.rotary(defaultTheta: 1e6, layerType: "full_attention"),
                                       factor: 1, scaling: legacy ?? config.ropeParameters(layerType: "full_attention"))
        }
        let act = try activation
        // Gemma 2/3 scale scores by query_pre_attn_scalar^-½ (default 256) instead of head_dim^-½; Gemma 2
        // soft-caps them (attn_logit_softcapping; Gemma 3's attention ignores the key).
        let preAttention = gemmaNext ? config.double("query_pre_attn_scalar") ?? 256 : Double(headDim)
        let scale = Float(granite ? config.double("attention_multiplier") ?? 1 : 1 / preAttention.squareRoot())
        let softcap = type == "gemma2" ? config.double("attn_logit_softcapping").map { Float($0) } : nil
        let qSize = heads * headDim, kvSize = kvHeads * headDim
        func scaled(_ a: [Act]) -> [Act] {
            guard residualScale != 1 else { return a }
            return a.map { var x = $0; for j in 0..<x.data.count { x.data[j] *= residualScale }; return x }
        }
        for i in 0..<layers {
            let p = "model.layers.\(i)."
            // OLMo 2 normalizes after each branch instead of before; Gemma 2/3 before and after.
            let x = olmo2 ? h : try norm(h, p + "input_layernorm.weight")
            var q: [Act] = [], k: [Act] = [], v: [Act] = []
            if phi3 {
                let qkv = try ctx.column(x, weight: p + "self_attn.qkv_proj.weight",
                                         bias: p + "self_attn.qkv_proj.bias")
                for a in qkv {
                    let parts = try splitParts(a, parts: 3) { l in
                        l < qSize ? (0, l) : l < qSize + kvSize ? (1, l - qSize) : (2, l - qSize - kvSize)
                    }
                    q.append(parts[0]); k.append(parts[1]); v.append(parts[2])
                }
            } else {
                q = try ctx.column(x, weight: p + "self_attn.q_proj.weight", bias: p + "self_attn.q_proj.bias")
                k = try ctx.column(x, weight: p + "self_attn.k_proj.weight", bias: p + "self_attn.k_proj.bias")
                v = try ctx.column(x, weight: p + "self_attn.v_proj.weight", bias: p + "self_attn.v_proj.bias")
            }
            if olmo2 {
                q = try gatheredRMS(ctx, q, weight: p + "self_attn.q_norm.weight", size: qSize, what: p + "q")
                k = try gatheredRMS(ctx, k, weight: p + "self_attn.k_norm.weight", size: kvSize, what: p + "k")
            }
            if type == "qwen3" || type == "qwen3_moe" || gemma3 {
                // Qwen3, Gemma 3: RMSNorm over each head's features of q and k, before the rotary embedding.
                let qn = try ctx.loadAll(p + "self_attn.q_norm.weight")
                let kn = try ctx.loadAll(p + "self_attn.k_norm.weight")
                for r in 0..<G {
                    q[r] = try Norm.rmsPerHead(q[r], qn[r], headDim: headDim, eps: eps, plusOne: gemma3, rank: r)
                    k[r] = try Norm.rmsPerHead(k[r], kn[r], headDim: headDim, eps: eps, plusOne: gemma3, rank: r)
                }
            }
            if cohere, config.bool("use_qk_norm") == true {
                // A LayerNorm over each head's features with that head's weights ([heads, head_dim]).
                let qn = try ctx.loadAll(p + "self_attn.q_norm.weight")
                let kn = try ctx.loadAll(p + "self_attn.k_norm.weight")
                for r in 0..<G {
                    q[r] = try Norm.layerPerHead(q[r], qn[r], headDim: headDim, eps: eps, rank: r)
                    k[r] = try Norm.layerPerHead(k[r], kn[r], headDim: headDim, eps: eps, rank: r)
                }
            }
            let window = slidingWindow(layer: i)
            var layerRope: Rope? = gemma3 ? (gemmaLocal(layer: i) ? localRope : globalRope) : rope
            var chunk: Int? = nil
            if llama4 {
                let l = try llama4Layer(i)
                chunk = l.chunk
                if !l.rope {
                    layerRope = nil
                    if let (floor, scale) = l.temperature { llama4Temperature(&q, floor: floor, scale: scale) }
                } else if config.bool("use_qk_norm") ?? true {
                    // The L2 norm over each head's features. transformers applies it after the rotation,
                    // which keeps each head's norm (the same values) unless the rope scaling scales cos and sin.
                    guard rope.attentionFactor == 1 else {
                        throw Model.configError(config, "Llama 4's q/k norm after a rope scaling with an attention "
                            + "factor (\(rope.attentionFactor)) has no reference pass")
                    }
                    for r in 0..<G {
                        q[r] = try Norm.rmsPerHead(q[r], nil, headDim: headDim, eps: eps, rank: r)
                        k[r] = try Norm.rmsPerHead(k[r], nil, headDim: headDim, eps: eps, rank: r)
                    }
                }
            }
            let sinks = gptOss ? try self.sinks(ctx, p + "self_attn.sinks") : nil
            let a = try attention(q, k, v, kvHeads: kvHeads, rope: layerRope, causal: true, window: window,
                                  chunk: chunk, softcap: softcap, sinks: sinks, scale: scale, layer: "layer \(i)")
            var o = try ctx.row(a, weight: p + "self_attn.o_proj.weight", bias: p + "self_attn.o_proj.bias")
            if olmo2 || gemmaNext { o = try norm(o, p + "post_attention_layernorm.weight") }
            if glm4 { o = try norm(o, p + "post_self_attn_layernorm.weight") }
            try add(&h, scaled(o), p + "self_attn.o_proj")
            // With a parallel residual the MLP reads the same normalized input as attention.
            let x2 = olmo2 ? h : parallel ? x
                : try norm(h, p + (gemmaNext ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight"))
            let m: [Act]
            if type == "mixtral" {
                m = try moe(ctx, x2, prefix: p + "block_sparse_moe.", act: act)
            } else if starcoder2 {
                // StarCoder2: a plain two-layer MLP with biases.
                m = try denseMLP(ctx, x2, up: p + "mlp.c_fc", down: p + "mlp.c_proj", act: act)
            } else if llama4 {
                let f = p + "feed_forward."
                if try llama4Layer(i).moe {
                    // Routed experts (inputs scaled by their sigmoid scores) plus the shared expert.
                    var routed = try moe(ctx, x2, prefix: f, act: act, routing: .sigmoidInput, router: "router",
                                         fused: .init(inputMajor: true))
                    try add(&routed, try gatedMLP(ctx, x2, prefix: f + "shared_expert.", act: act), f + "shared_expert")
                    m = routed
                } else {
                    m = try gatedMLP(ctx, x2, prefix: f, act: act)
                }
            } else if gptOss {
                // Top-k of the logits then a softmax over them: the same weights as softmax then top-k,
                // renormalised.
                let alpha = Float(config.double("swiglu_alpha") ?? 1.702)
                let limit = Float(config.double("swiglu_limit") ?? 7)
                m = try moe(ctx, x2, prefix: p + "mlp.", act: act, router: "router",
                            fused: .init(inputMajor: true, interleaved: true), clamped: (alpha, limit))
            } else if type == "qwen3_moe" || type == "qwen2_moe", qwen3SparseLayer(i) {
                // Qwen2/3-MoE renormalise the top-k weights only with norm_topk_prob.
                let routed = try moe(ctx, x2, prefix: p + "mlp.", act: act,
                                     experts: ("gate_proj", "up_proj", "down_proj"),
                                     routing: .softmax(normalize: config.bool("norm_topk_prob") ?? false))
                m = type == "qwen2_moe" ? try qwen2SharedExpert(ctx, x2, routed, prefix: p + "mlp.", act: act) : routed
            } else if phi3 || glm4 {
                var inner: [Act] = []
                let gu = try ctx.column(x2, weight: p + "mlp.gate_up_proj.weight", bias: nil)
                let full = ctx.weights.globalShape(p + "mlp.gate_up_proj.weight")?[0] ?? 0
                for (r, a) in gu.enumerated() {
                    let parts = try splitParts(a, parts: 2) { l in l < full / 2 ? (0, l) : (1, l - full / 2) }
                    inner.append(try gatedProduct(gate: parts[0], up: parts[1], act: act, rank: r, what: p + "mlp"))
                }
                m = try ctx.row(inner, weight: p + "mlp.down_proj.weight", bias: p + "mlp.down_proj.bias")
            } else {
                m = try gatedMLP(ctx, x2, prefix: p + "mlp.", act: act)
            }
            let post = olmo2 || gemmaNext ? try norm(m, p + "post_feedforward_layernorm.weight")
                : glm4 ? try norm(m, p + "post_mlp_layernorm.weight") : m
            try add(&h, scaled(post), p + "mlp")
            try observe("layers.\(i)", h)
        }
        h = try norm(h, "model.norm.weight")
        try observe("final_norm", h)
        var logits = try lmHead(ctx, h, weight: ctx.weights.has("lm_head.weight") ? "lm_head.weight" : embedName)
        if granite, let s = config.double("logits_scaling"), s != 1 {
            for r in 0..<logits.count { for j in 0..<logits[r].data.count { logits[r].data[j] /= Float(s) } }
        }
        if cohere {
            let s = Float(config.double("logit_scale") ?? 0.0625)
            for r in 0..<logits.count { for j in 0..<logits[r].data.count { logits[r].data[j] *= s } }
        }
        // Gemma 2/3: logits become cap · tanh(logits / cap) with final_logit_softcapping.
        if gemmaNext, let cap = config.double("final_logit_softcapping").map({ Float($0) }) {
            for r in 0..<logits.count {
                for j in 0..<logits[r].data.count { logits[r].data[j] = cap * tanh(logits[r].data[j] / cap) }
            }
        }
        return logits
    }

    /// A gated MLP under `prefix` (`gate_proj`, `up_proj` column-parallel, `down_proj` row-parallel,
    /// optional biases): act(gate · x) ⊙ (up · x), then down.
    func gatedMLP(_ ctx: TPContext, _ x: [Act], prefix p: String, act: Activation) throws -> [Act] {
        let gate = try ctx.column(x, weight: p + "gate_proj.weight", bias: p + "gate_proj.bias")
        let up = try ctx.column(x, weight: p + "up_proj.weight", bias: p + "up_proj.bias")
        let inner = try (0..<ctx.G).map {
            try gatedProduct(gate: gate[$0], up: up[$0], act: act, rank: $0, what: String(p.dropLast()))
        }
        return try ctx.row(inner, weight: p + "down_proj.weight", bias: p + "down_proj.bias")
    }

    /// Qwen2-MoE: `routed` plus the shared expert's output scaled per token by sigmoid(shared_expert_gate · x),
    /// the gate being one replicated row.
    func qwen2SharedExpert(_ ctx: TPContext, _ x: [Act], _ routed: [Act], prefix p: String, act: Activation)
        throws -> [Act] {
        var out = routed
        let shared = try gatedMLP(ctx, x, prefix: p + "shared_expert.", act: act)
        let gateName = p + "shared_expert_gate.weight"
        for r in 0..<ctx.G {
            let (g, partial) = try ctx.linear(x[r], try ctx.load(gateName, rank: r), bias: nil, rank: r)
            guard !partial, g.labels == [0] else {
                throw Model.rankError(r, "\(gateName) must be replicated (one row × hidden)")
            }
            guard out[r].labels == shared[r].labels else {
                throw Model.rankError(r, "\(p)shared_expert produces features other than the routed experts'")
            }
            let n = out[r].cols
            for t in 0..<x[r].rows {
                let s = 1 / (1 + Float(exp(Double(-g.data[t]))))
                for j in 0..<n { out[r].data[t * n + j] += s * shared[r].data[t * n + j] }
            }
        }
        return out
    }

    /// RMSNorm over a whole column-parallel projection (OLMo 2's q/k norms): each rank all-gathers the
    /// projection, normalizes it with the replicated weight and keeps its own features.
    func gatheredRMS(_ ctx: TPContext, _ x: [Act], weight: String, size: Int, what: String) throws -> [Act] {
        let full = try ctx.allGather(x, size: size, what: what)
        let w = try ctx.loadAll(weight)
        return try (0..<ctx.G).map { r in
            let normed = try Norm.rms(full[r], w[r], eps: eps, plusOne: false, rank: r)
            guard let own = normed.select(x[r].labels) else {
                throw Model.rankError(r, "\(what): its features are not in the gathered projection")
            }
            return own
        }
    }

    /// Qwen3-MoE's choice of sparse layers: not in mlp_only_layers, and every decoder_sparse_step-th.
    func qwen3SparseLayer(_ i: Int) -> Bool {
        let dense = config.json["mlp_only_layers"]?.arrayValue?.compactMap(\.intValue) ?? []
        let step = config.int("decoder_sparse_step") ?? 1
        let experts = config.int("num_experts") ?? 0
        return !dense.contains(i) && experts > 0 && step > 0 && (i + 1) % step == 0
    }

    /// How a router's logits choose each token's experts and their weights.
    enum Routing {
        /// Softmax, top-k, renormalised with `normalize` (Mixtral, Qwen2/3-MoE).
        case softmax(normalize: Bool)
        /// DeepSeek-V3: sigmoid scores; the choice adds the correction bias (tensor `bias`, replicated)
        /// and keeps the top-k among the `topGroups` best of `groups` groups (a group scores the sum of
        /// its two best); the weights are the chosen unbiased scores, renormalised with `normalize`,
        /// times `scale`.
        case grouped(bias: String, groups: Int, topGroups: Int, normalize: Bool, scale: Float)
        /// Llama 4: the top-k logits; each chosen expert gets the token scaled by sigmoid(its logit) and
        /// its output is added unweighted.
        case sigmoidInput
    }

    /// The top `k` indices of `values`, largest first (ties: lower index first).
    static func top(_ values: [Float], _ k: Int) -> [Int] {
        Array(values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }.prefix(k))
    }

    /// One token's experts and weights from its router logits `row` (`bias`: the grouped routing's
    /// correction bias).
    static func route(_ row: [Float], k K: Int, routing: Routing, bias: [Float]) -> [(expert: Int, weight: Float)] {
        switch routing {
        case .softmax(let normalize):
            let m = row.max()!
            let e = row.map { Float(exp(Double($0 - m))) }
            let s = e.reduce(0, +)
            let probs = e.map { $0 / s }
            let chosen = top(probs, K)
            let norm = normalize ? chosen.reduce(Float(0)) { $0 + probs[$1] } : 1
            return chosen.map { ($0, probs[$0] / norm) }
        case .grouped(_, let groups, let topGroups, let normalize, let scale):
            let scores = row.map { 1 / (1 + Float(exp(Double(-$0)))) }
            var choice = zip(scores, bias).map { $0 + $1 }
            let size = row.count / groups
            let groupScores = (0..<groups).map { g in
                top(Array(choice[(g * size)..<((g + 1) * size)]), 2).reduce(Float(0)) { $0 + choice[g * size + $1] }
            }
            let kept = Set(top(groupScores, topGroups))
            for e in choice.indices where !kept.contains(e / size) { choice[e] = -.infinity }
            let chosen = top(choice, K)
            let norm = normalize ? chosen.reduce(Float(0)) { $0 + scores[$1] } + 1e-20 : 1
            return chosen.map { ($0, scores[$0] / norm * scale) }
        case .sigmoidInput:
            return top(row, K).map { ($0, 1 / (1 + Float(exp(Double(-row[$0]))))) }
        }
    }

    /// How transformers 5 stores all experts in two tensors (`experts.gate_up_proj`, `experts.down_proj`).
    struct FusedExperts {
        /// [E, in, out] (gpt-oss, Llama 4: gate_up_proj [E, hidden, 2I], down_proj [E, I, hidden]) instead
        /// of [E, out, in] (gate_up_proj [E, 2I, hidden], down_proj [E, hidden, I]).
        var inputMajor = false
        /// Gate and up alternate along the 2I features (gpt-oss: even gate, odd up) instead of gate then up.
        var interleaved = false
    }

    /// A sparse MoE block: every rank routes identically with its replicated router (`prefix` + `router`,
    /// with its bias when it has one) by `routing` and computes the experts it holds for the tokens routed
    /// to them: with EP 1 its TP slice of every expert (partial sums when split by rows); with expert
    /// parallelism only its group's experts (the dispatch of an all-to-all). The ranks' weighted outputs
    /// are then summed (the combine). Fused experts (`fused` says how) may have biases
    /// (`gate_up_proj_bias` [E, 2I] split with gate_up_proj, `down_proj_bias` [E, hidden] replicated and
    /// added, weighted, after the combine). `clamped`: gpt-oss's clamped SwiGLU instead of act(gate) · up.
    func moe(_ ctx: TPContext, _ x: [Act], prefix p: String, act: Activation,
             experts names: (gate: String, up: String, down: String) = ("w1", "w3", "w2"),
             routing: Routing = .softmax(normalize: true), router: String = "gate",
             fused layout: FusedExperts = .init(), clamped: (alpha: Float, limit: Float)? = nil) throws -> [Act] {
        guard let E = config.int("num_local_experts", "num_experts", "n_routed_experts"),
              let K = config.int("num_experts_per_tok"), E > 0, K > 0, K <= E else {
            throw Model.configError(config, "missing num_local_experts / num_experts_per_tok")
        }
        if case .grouped(_, let groups, let topGroups, _, _) = routing {
            guard groups > 0, E % groups == 0, E / groups >= 2, topGroups > 0, topGroups <= groups,
                  K <= topGroups * (E / groups) else {
                throw Model.configError(config, "\(E) experts in n_group \(groups) groups (topk_group \(topGroups)) "
                    + "cannot give \(K) experts per token")
            }
        }
        let T = x[0].rows
        // transformers 5's layout: all experts in two tensors, gate and up fused (see experts()).
        let fused = ctx.weights.has(p + "experts.gate_up_proj")
        let gateUpBias = fused && ctx.weights.has(p + "experts.gate_up_proj_bias")
        let downBias = fused && ctx.weights.has(p + "experts.down_proj_bias")
        let routerName = p + router + ".weight", routerBias = p + router + ".bias"
        func expert(_ e: Int, _ part: String) -> String { p + "experts.\(e).\(part).weight" }
        let expertParallel = !fused && (0..<ctx.G).contains { r in
            (0..<E).contains { !ctx.weights.holds(expert($0, names.gate), rank: r) }
        }
        var outs: [Act] = [], partials: [Bool] = [], choices: [[[(expert: Int, weight: Float)]]] = []
        for r in 0..<ctx.G {
            let gate = try ctx.load(routerName, rank: r)
            let rb = ctx.weights.has(routerBias) ? try ctx.load(routerBias, rank: r) : nil
            if let rb, rb.shape != [E] {
                throw Model.rankError(r, "\(routerBias) must be replicated (\(E) values), the rank holds \(rb.shape)")
            }
            let (logits, partial) = try ctx.linear(x[r], gate, bias: rb, rank: r)
            guard !partial, logits.labels == Array(0..<E) else {
                throw Model.rankError(r, "router \(routerName) must be replicated (\(E) experts × hidden)")
            }
            var bias: [Float] = []
            if case .grouped(let name, _, _, _, _) = routing {
                let b = try ctx.load(name, rank: r)
                guard b.shape == [E], b.globalShape == [E] else {
                    throw Model.rankError(r, "\(name) must be replicated (\(E) values), the rank holds \(b.shape)")
                }
                bias = b.data
            }
            let chosen = (0..<T).map {
                Model.route(Array(logits.data[($0 * E)..<(($0 + 1) * E)]), k: K, routing: routing, bias: bias)
            }
            var acc = Act(rows: T, width: hidden)
            var rankPartial: Bool? = nil
            let gateUp = fused ? try ctx.load(p + "experts.gate_up_proj", rank: r) : nil
            let gateUpBiases = gateUpBias ? try ctx.load(p + "experts.gate_up_proj_bias", rank: r) : nil
            let downs = fused ? try ctx.load(p + "experts.down_proj", rank: r) : nil
            for e in 0..<E {
                var rows: [Int] = [], weights: [Float] = []
                for t in 0..<T {
                    if let c = chosen[t].first(where: { $0.expert == e }) { rows.append(t); weights.append(c.weight) }
                }
                if rows.isEmpty || (!fused && !ctx.weights.holds(expert(e, names.gate), rank: r)) { continue }
                var sub = x[r].rowsSubset(rows)
                if case .sigmoidInput = routing {
                    // The weight scales the expert's input, not its output.
                    for (k, w) in weights.enumerated() { for j in 0..<sub.cols { sub.data[k * sub.cols + j] *= w } }
                    weights = weights.map { _ in 1 }
                }
                let ep = p + "experts.\(e)."
                let g: Act, u: Act
                if let gateUp {
                    let w = try gateUp.expert(e)
                    let (y, partial) = try ctx.linear(sub, w, bias: try gateUpBiases?.expert(e),
                                                      conv1D: layout.inputMajor, rank: r)
                    if partial { throw Model.rankError(r, "\(gateUp.name) must be column-parallel") }
                    let half = w.globalShape[layout.inputMajor ? 1 : 0] / 2
                    let parts = try splitParts(y, parts: 2) { l in
                        layout.interleaved ? (l % 2, l / 2) : l < half ? (0, l) : (1, l - half)
                    }
                    (g, u) = (parts[0], parts[1])
                } else {
                    let (yg, pg) = try ctx.linear(sub, try ctx.load(ep + names.gate + ".weight", rank: r), bias: nil,
                                                  rank: r)
                    let (yu, pu) = try ctx.linear(sub, try ctx.load(ep + names.up + ".weight", rank: r), bias: nil,
                                                  rank: r)
                    if pg || pu { throw Model.rankError(r, "\(ep)\(names.gate)/\(names.up) must be column-parallel") }
                    (g, u) = (yg, yu)
                }
                let inner = try gatedProduct(gate: g, up: u, act: act, clamped: clamped, rank: r, what: ep)
                let downW = try downs?.expert(e) ?? ctx.load(ep + names.down + ".weight", rank: r)
                let (y, py) = try ctx.linear(inner, downW, bias: nil, conv1D: fused && layout.inputMajor, rank: r)
                guard y.labels == Array(0..<hidden) else {
                    throw Model.rankError(r, "\(downW.name) must produce all hidden features")
                }
                if let rp = rankPartial, rp != py {
                    throw Model.rankError(r, "experts of \(p) are split inconsistently")
                }
                rankPartial = py
                for (k, t) in rows.enumerated() {
                    for j in 0..<hidden { acc.data[t * hidden + j] += y.data[k * hidden + j] * weights[k] }
                }
            }
            outs.append(acc); partials.append(expertParallel || (rankPartial ?? true))
            choices.append(chosen)
        }
        var out = try ctx.combine(outs, partial: partials, what: p + "experts")
        if downBias {
            // Each token gets Σ weight · down_proj_bias[expert] once, whatever the split.
            let name = p + "experts.down_proj_bias"
            for r in 0..<ctx.G {
                let b = try ctx.load(name, rank: r)
                guard b.shape == [E, hidden], b.globalShape == [E, hidden] else {
                    throw Model.rankError(r, "\(name) must be replicated ([\(E), \(hidden)]), "
                        + "the rank holds \(b.shape)")
                }
                for t in 0..<T {
                    for c in choices[r][t] {
                        for j in 0..<hidden { out[r].data[t * hidden + j] += c.weight * b.data[c.expert * hidden + j] }
                    }
                }
            }
        }
        return out
    }

    // MARK: GPT-2

    func gpt2(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        let pre = ctx.weights.has("transformer.wte.weight") ? "transformer." : ""
        let T = tokens.count
        var h = try ctx.embed(tokens, table: pre + "wte.weight")
        try ctx.addRows(&h, table: pre + "wpe.weight", ids: Array(0..<T))
        try observe("embeddings", h)
        let act = try activation
        let scaled = config.bool("scale_attn_weights") ?? true
        let byLayer = config.bool("scale_attn_by_inverse_layer_idx") ?? false
        for i in 0..<layers {
            let p = pre + "h.\(i)."
            let x = try layerNormAll(ctx, h, p + "ln_1")
            let qkv = try ctx.column(x, weight: p + "attn.c_attn.weight", bias: p + "attn.c_attn.bias", conv1D: true)
            let (q, k, v) = try splitQKV(qkv) { l in (l / hidden, l % hidden) }
            var scale: Float = scaled ? Float(1 / Double(headDim).squareRoot()) : 1
            if byLayer { scale /= Float(i + 1) }
            let a = try attention(q, k, v, kvHeads: heads, rope: nil, causal: true, scale: scale, layer: "layer \(i)")
            try add(&h, try ctx.row(a, weight: p + "attn.c_proj.weight", bias: p + "attn.c_proj.bias", conv1D: true),
                    p + "attn.c_proj")
            let x2 = try layerNormAll(ctx, h, p + "ln_2")
            var f = try ctx.column(x2, weight: p + "mlp.c_fc.weight", bias: p + "mlp.c_fc.bias", conv1D: true)
            for r in 0..<f.count { for j in 0..<f[r].data.count { f[r].data[j] = act(f[r].data[j]) } }
            try add(&h, try ctx.row(f, weight: p + "mlp.c_proj.weight", bias: p + "mlp.c_proj.bias", conv1D: true),
                    p + "mlp.c_proj")
            try observe("layers.\(i)", h)
        }
        return try finalNormAndHead(ctx, h, norm: pre + "ln_f", tied: pre + "wte.weight", observe)
    }

    // MARK: GPT-NeoX

    func gptNeoX(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        let T = tokens.count, hd = headDim
        var h = try ctx.embed(tokens, table: "gpt_neox.embed_in.weight")
        try observe("embeddings", h)
        // GPT-NeoX's older spellings are rotary_pct (default 0.25) and rotary_emb_base (10000);
        // transformers 5 writes rope_parameters instead.
        let rotary = config.rotary(factorKeys: ["rotary_pct"], thetaKeys: ["rotary_emb_base"], defaultFactor: 0.25)
        let rope = try self.rope(Array(0..<T), rotary, factor: rotary.partialFactor)
        let act = try activation
        let parallel = config.bool("use_parallel_residual") ?? true
        let scale = Float(1 / Double(hd).squareRoot())
        for i in 0..<layers {
            let p = "gpt_neox.layers.\(i)."
            let x = try layerNormAll(ctx, h, p + "input_layernorm")
            let qkv = try ctx.column(x, weight: p + "attention.query_key_value.weight",
                                     bias: p + "attention.query_key_value.bias")
            // [heads, 3, head_dim] interleaved.
            let (q, k, v) = try splitQKV(qkv) { l in ((l % (3 * hd)) / hd, (l / (3 * hd)) * hd + l % hd) }
            let a = try attention(q, k, v, kvHeads: heads, rope: rope, causal: true, scale: scale, layer: "layer \(i)")
            let attn = try ctx.row(a, weight: p + "attention.dense.weight", bias: p + "attention.dense.bias")
            func mlp(_ y: [Act]) throws -> [Act] {
                try denseMLP(ctx, y, up: p + "mlp.dense_h_to_4h", down: p + "mlp.dense_4h_to_h", act: act)
            }
            if parallel {
                var m = try mlp(try layerNormAll(ctx, h, p + "post_attention_layernorm"))
                try add(&m, attn, p + "attention.dense")
                try add(&m, h, p + "residual")
                h = m
            } else {
                var a2 = attn
                try add(&a2, h, p + "residual")
                var m = try mlp(try layerNormAll(ctx, a2, p + "post_attention_layernorm"))
                try add(&m, a2, p + "mlp")
                h = m
            }
            try observe("layers.\(i)", h)
        }
        h = try layerNormAll(ctx, h, "gpt_neox.final_layer_norm")
        try observe("final_norm", h)
        let head = ctx.weights.has("embed_out.weight") ? "embed_out.weight" : "gpt_neox.embed_in.weight"
        return try lmHead(ctx, h, weight: head)
    }

    // MARK: BERT

    func bert(_ ctx: TPContext, _ tokens: [Int], _ types: [Int], _ observe: Observer) throws -> [Act] {
        if let kind = config.string("position_embedding_type"), kind != "absolute" {
            throw ShardKitError(.verificationFailed,
                                "BERT position_embedding_type \"\(kind)\" is not supported (only absolute)")
        }
        let pre = ["bert.", "roberta."].first { ctx.weights.has($0 + "embeddings.word_embeddings.weight") } ?? ""
        let T = tokens.count
        var h = try ctx.embed(tokens, table: pre + "embeddings.word_embeddings.weight")
        try ctx.addRows(&h, table: pre + "embeddings.token_type_embeddings.weight", ids: types)
        var positions = Array(0..<T)
        if type == "roberta" {
            // RoBERTa counts positions from padding_idx + 1 over the non-padding tokens; a padding token
            // sits at padding_idx.
            let pad = config.int("pad_token_id") ?? 1
            var seen = 0
            positions = tokens.map { tok in
                if tok == pad { return pad }
                seen += 1
                return pad + seen
            }
        }
        try ctx.addRows(&h, table: pre + "embeddings.position_embeddings.weight", ids: positions)
        h = try layerNormAll(ctx, h, pre + "embeddings.LayerNorm")
        try observe("embeddings", h)
        let act = try activation
        let scale = Float(1 / Double(headDim).squareRoot())
        for i in 0..<layers {
            let p = pre + "encoder.layer.\(i)."
            let q = try ctx.column(h, weight: p + "attention.self.query.weight", bias: p + "attention.self.query.bias")
            let k = try ctx.column(h, weight: p + "attention.self.key.weight", bias: p + "attention.self.key.bias")
            let v = try ctx.column(h, weight: p + "attention.self.value.weight", bias: p + "attention.self.value.bias")
            let a = try attention(q, k, v, kvHeads: heads, rope: nil, causal: false, scale: scale, layer: "layer \(i)")
            var o = try ctx.row(a, weight: p + "attention.output.dense.weight", bias: p + "attention.output.dense.bias")
            try add(&o, h, p + "attention.output")
            let h1 = try layerNormAll(ctx, o, p + "attention.output.LayerNorm")
            var f = try ctx.column(h1, weight: p + "intermediate.dense.weight", bias: p + "intermediate.dense.bias")
            for r in 0..<f.count { for j in 0..<f[r].data.count { f[r].data[j] = act(f[r].data[j]) } }
            var m = try ctx.row(f, weight: p + "output.dense.weight", bias: p + "output.dense.bias")
            try add(&m, h1, p + "output")
            h = try layerNormAll(ctx, m, p + "output.LayerNorm")
            try observe("layers.\(i)", h)
        }
        return h
    }
}
