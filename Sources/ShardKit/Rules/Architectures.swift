/// The forward pass the reference target (ShardKitReference) runs for an architecture: one
/// implementation per family, each following transformers' `modeling_*.py`.
public enum ForwardPass: String, Sendable, CaseIterable {
    /// Llama and its relatives (Mistral, Qwen2/3 and their MoEs, Gemma 1-3, Mixtral, Phi-3, StableLM,
    /// StarCoder2, …): RMSNorm (or LayerNorm), rotary, GQA, SwiGLU, a plain MLP or MoE; the per-type
    /// details are in the pass.
    case llamaFamily
    case gpt2
    case gptNeoX
    /// A BERT-style encoder (BERT, RoBERTa): its output is the last hidden state, not logits.
    case bert
    /// DeepSeek-V3: multi-head latent attention, sigmoid-routed experts in groups plus shared experts.
    case deepseekV3
    case falcon
    case bloom
    case gptJ
    case opt
    /// Phi-1 and Phi-2.
    case phi
}

/// One architecture ShardKit knows, chosen by config.json's `model_type`: its split rules (written in
/// the pattern language of a user rules file, docs/rules.md), the forward pass `verify` runs for it,
/// and the transformers defaults of the config keys that pass reads. Adding an architecture is one
/// entry in `Architectures.all` plus, when it has a new forward pass, that pass's code.
public struct Architecture: Sendable {
    /// What a rule builder gets: the config's head counts and a way to write entries.
    public struct Context: Sendable {
        public let config: ModelConfig
        public let modelType: String
        public let heads: Int
        public let kvHeads: Int

        /// An entry of the preset. A required entry that matches nothing means the checkpoint is not
        /// what config.json says.
        public func entry(_ pattern: String, _ rule: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            // Preset patterns are compile-time constants; a bad one is a programming error.
            RuleSet.Entry(try! NamePattern(pattern), rule, required: !optional, origin: "preset \(modelType)")
        }
    }

    public let modelType: String
    /// The reference forward pass, nil when `verify` has only the generic per-weight check.
    public let forwardPass: ForwardPass?
    /// transformers' default norm epsilon when config.json omits it.
    public let defaultEpsilon: Double
    /// transformers' default activation when config.json omits `hidden_act`.
    public let defaultActivation: String
    let rules: @Sendable (Context) throws -> [RuleSet.Entry]

    public init(_ modelType: String, forwardPass: ForwardPass?, defaultEpsilon: Double = 1e-6,
                defaultActivation: String = "silu", rules: @escaping @Sendable (Context) throws -> [RuleSet.Entry]) {
        self.modelType = modelType
        self.forwardPass = forwardPass
        self.defaultEpsilon = defaultEpsilon
        self.defaultActivation = defaultActivation
        self.rules = rules
    }
}

/// The architecture registry.
public enum Architectures {
    /// Every architecture with a preset.
    public static let all: [Architecture] = [
        Architecture("llama", forwardPass: .llamaFamily, rules: llamaFamily),
        Architecture("mistral", forwardPass: .llamaFamily, rules: llamaFamily),
        Architecture("qwen2", forwardPass: .llamaFamily, rules: llamaFamily),
        Architecture("qwen3", forwardPass: .llamaFamily, rules: llamaFamily),
        Architecture("qwen3_moe", forwardPass: .llamaFamily, rules: llamaFamily),
        Architecture("qwen2_moe", forwardPass: .llamaFamily, rules: llamaFamily),
        Architecture("granite", forwardPass: .llamaFamily, rules: llamaFamily),
        Architecture("olmo2", forwardPass: .llamaFamily, defaultEpsilon: 1e-5, rules: llamaFamily),
        Architecture("stablelm", forwardPass: .llamaFamily, defaultEpsilon: 1e-5, rules: llamaFamily),
        Architecture("starcoder2", forwardPass: .llamaFamily, defaultEpsilon: 1e-5,
                     defaultActivation: "gelu_pytorch_tanh", rules: llamaFamily),
        Architecture("gemma", forwardPass: .llamaFamily, defaultActivation: "gelu_pytorch_tanh", rules: llamaFamily),
        Architecture("gemma2", forwardPass: .llamaFamily, defaultActivation: "gelu_pytorch_tanh", rules: llamaFamily),
        Architecture("gemma3_text", forwardPass: .llamaFamily, defaultActivation: "gelu_pytorch_tanh",
                     rules: llamaFamily),
        Architecture("mixtral", forwardPass: .llamaFamily, defaultEpsilon: 1e-5, rules: llamaFamily),
        Architecture("phi3", forwardPass: .llamaFamily, defaultEpsilon: 1e-5, rules: llamaFamily),
        Architecture("glm4", forwardPass: .llamaFamily, defaultEpsilon: 1.5625e-7, rules: llamaFamily),
        Architecture("cohere", forwardPass: .llamaFamily, defaultEpsilon: 1e-5, rules: llamaFamily),
        Architecture("gpt_oss", forwardPass: .llamaFamily, defaultEpsilon: 1e-5, rules: gptOss),
        Architecture("llama4_text", forwardPass: .llamaFamily, defaultEpsilon: 1e-5, rules: llama4Text),
        Architecture("deepseek_v3", forwardPass: .deepseekV3, rules: deepseekV3),
        Architecture("gpt2", forwardPass: .gpt2, defaultEpsilon: 1e-5, defaultActivation: "gelu_new", rules: gpt2),
        Architecture("gpt_neox", forwardPass: .gptNeoX, defaultEpsilon: 1e-5, defaultActivation: "gelu",
                     rules: gptNeoX),
        Architecture("bert", forwardPass: .bert, defaultEpsilon: 1e-12, defaultActivation: "gelu", rules: bert),
        Architecture("roberta", forwardPass: .bert, defaultEpsilon: 1e-12, defaultActivation: "gelu", rules: bert),
        Architecture("falcon", forwardPass: .falcon, defaultEpsilon: 1e-5, defaultActivation: "gelu", rules: falcon),
        Architecture("bloom", forwardPass: .bloom, defaultEpsilon: 1e-5, defaultActivation: "gelu_pytorch_tanh",
                     rules: bloom),
        Architecture("gptj", forwardPass: .gptJ, defaultEpsilon: 1e-5, defaultActivation: "gelu_new", rules: gptJ),
        Architecture("opt", forwardPass: .opt, defaultEpsilon: 1e-5, defaultActivation: "relu", rules: opt),
        Architecture("phi", forwardPass: .phi, defaultEpsilon: 1e-5, defaultActivation: "gelu_new", rules: phi),
    ]

    /// The model types with a preset, in registry order.
    public static var modelTypes: [String] { all.map(\.modelType) }

    /// The model types with a reference forward pass.
    public static var withForwardPass: [String] { all.filter { $0.forwardPass != nil }.map(\.modelType) }

    public static func named(_ modelType: String) -> Architecture? { all.first { $0.modelType == modelType } }

    /// The preset for `config`'s model_type, else its rule set derived from transformers' tensor-parallel
    /// plan (`DerivedRules`). Throws `invalidConfig` for a type with neither (saying why a derived set is
    /// refused) or a missing key.
    public static func rules(for config: ModelConfig) throws -> RuleSet {
        guard let type = config.modelType else {
            throw ShardKitError(.invalidConfig, "\(config.path): no \"model_type\", so no preset applies",
                                remedy: .rules)
        }
        guard let architecture = named(type) else {
            if let derived = try DerivedRules.ruleSet(for: config, modelType: type) { return derived }
            let presets = "presets: \(modelTypes.joined(separator: ", "))"
            let version = DerivedRules.transformersVersion
            guard case .refused(let configClass, let reason)? = DerivedRules.derivation(for: type) else {
                throw ShardKitError(.invalidConfig, "\(config.path): unknown model_type \"\(type)\" (\(presets); "
                    + "no derived rule set either: transformers \(version) has no base_model_tp_plan for it)",
                    remedy: .rules)
            }
            throw ShardKitError(.invalidConfig, "\(config.path): model_type \"\(type)\" has no preset (\(presets)), "
                + "and its rule set derived from transformers \(version)'s \(configClass).base_model_tp_plan is "
                + "refused: \(reason)", remedy: .rules)
        }
        let heads = try config.requireInt("num_attention_heads", "n_head")
        let kv = config.int("num_key_value_heads", "multi_query_group_num") ?? heads
        guard heads > 0, kv > 0 else {
            throw ShardKitError(.invalidConfig,
                "\(config.path): head counts must be positive (heads \(heads), KV heads \(kv))")
        }
        let context = Architecture.Context(config: config, modelType: type, heads: heads, kvHeads: kv)
        return RuleSet(name: "preset \(type)", entries: try architecture.rules(context))
    }

    /// Llama, Mistral, Qwen2, Qwen2-MoE, Qwen3(-MoE), Gemma 1/2/3, Mixtral, Phi-3, GLM-4, Cohere
    /// (`model.layers.N.` prefix).
    @Sendable static func llamaFamily(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let type = c.modelType, heads = c.heads, kv = c.kvHeads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let p = "model.layers.*."
        var list = [
            e("model.embed_tokens.weight", .vocab(0)),
            e("lm_head.weight", .vocab(0), optional: true),
            e("model.norm.weight", .replicated),
            e(p + "{input_layernorm,post_attention_layernorm}.weight", .replicated),
            e(p + "self_attn.o_proj.weight", .outProjection(1, heads)),
            e(p + "self_attn.o_proj.bias", .replicated, optional: true),
            e(p + "self_attn.rotary_emb.inv_freq", .replicated, optional: true),
        ]
        if type == "phi3" {
            let qkv: [RuleSpec.Part] = [.init(.heads(heads)), .init(.kvHeads(kv)), .init(.kvHeads(kv))]
            list += [
                e(p + "self_attn.qkv_proj.weight", .fused(0, qkv)),
                e(p + "self_attn.qkv_proj.bias", .fused(0, qkv), optional: true),
                e(p + "mlp.gate_up_proj.weight", .fused(0, [.init(.even), .init(.even)])),
                e(p + "mlp.down_proj.weight", .row(1)),
            ]
        } else {
            // Qwen2 always has q/k/v biases, Qwen2-MoE unless qkv_bias is false, GLM-4 unless attention_bias is.
            let biases = type == "qwen2" || (type == "qwen2_moe" && c.config.bool("qkv_bias") != false)
                || (type == "glm4" && c.config.bool("attention_bias") != false)
            list += [
                e(p + "self_attn.q_proj.weight", .heads(0, heads)),
                e(p + "self_attn.q_proj.bias", .heads(0, heads), optional: !biases),
                e(p + "self_attn.{k_proj,v_proj}.weight", .kvHeads(0, kv)),
                e(p + "self_attn.{k_proj,v_proj}.bias", .kvHeads(0, kv), optional: !biases),
            ]
        }
        if type == "qwen3" || type == "qwen3_moe" || type == "gemma3_text" {
            // Qwen3's and Gemma 3's q/k norms act on each head's head_dim features: every rank holds
            // them whole.
            list.append(e(p + "self_attn.{q_norm,k_norm}.weight", .replicated))
        }
        if type == "cohere" {
            // Cohere's q/k norms (with use_qk_norm) hold one weight row per head, [heads, head_dim]: split
            // like the heads.
            let qkNorm = c.config.bool("use_qk_norm") == true
            list += [
                e(p + "self_attn.q_norm.weight", .heads(0, heads), optional: !qkNorm),
                e(p + "self_attn.k_norm.weight", .kvHeads(0, kv), optional: !qkNorm),
            ]
        }
        if type == "glm4" {
            // GLM-4 normalizes each branch's output too; its MLP is one [gate; up] projection.
            list += [
                e(p + "{post_self_attn_layernorm,post_mlp_layernorm}.weight", .replicated),
                e(p + "mlp.gate_up_proj.weight", .fused(0, [.init(.even), .init(.even)])),
                e(p + "mlp.down_proj.weight", .row(1)),
            ]
        }
        if type == "gemma2" || type == "gemma3_text" {
            // Gemma 2/3 normalize each branch's input and output (post_attention_layernorm is the
            // attention output's norm).
            list.append(e(p + "{pre_feedforward_layernorm,post_feedforward_layernorm}.weight", .replicated))
        }
        if type == "stablelm" || type == "starcoder2" {
            // StableLM's and StarCoder2's norms are LayerNorms with biases.
            list += [
                e(p + "{input_layernorm,post_attention_layernorm}.bias", .replicated),
                e("model.norm.bias", .replicated),
            ]
        }
        if type == "olmo2" {
            // OLMo 2 normalizes q and k over the whole projection (all heads), and each branch's output.
            // The norms are replicated; the TP pass all-gathers q and k for them (as vLLM does).
            list += [
                e(p + "self_attn.{q_norm,k_norm}.weight", .replicated),
                e(p + "post_feedforward_layernorm.weight", .replicated),
            ]
        }
        let moe = type == "qwen3_moe" || type == "qwen2_moe"
        if moe {
            // Sparse layers: a replicated router and experts split like a dense MLP (every expert over
            // every rank); layers in mlp_only_layers keep a dense MLP (below, optional).
            list += [e(p + "mlp.gate.weight", .replicated)] + experts(c, p + "mlp.")
        }
        if type == "qwen2_moe" {
            // Qwen2-MoE adds a shared expert (a dense MLP) scaled by sigmoid(shared_expert_gate · x):
            // the gate is one row, [1, hidden], that every rank needs whole.
            list += [
                e(p + "mlp.shared_expert.{gate_proj,up_proj}.weight", .column(0)),
                e(p + "mlp.shared_expert.down_proj.weight", .row(1)),
                e(p + "mlp.shared_expert_gate.weight", .replicated),
            ]
        }
        if type == "starcoder2" {
            // A plain MLP with biases (use_bias): c_fc column-parallel, c_proj row-parallel.
            list += [
                e(p + "mlp.c_fc.weight", .column(0)),
                e(p + "mlp.c_fc.bias", .column(0), optional: true),
                e(p + "mlp.c_proj.weight", .row(1)),
                e(p + "mlp.c_proj.bias", .replicated, optional: true),
            ]
        } else if type == "mixtral" {
            list += [
                e(p + "block_sparse_moe.gate.weight", .replicated),
                e(p + "block_sparse_moe.experts.*.{w1,w3}.weight", .column(0)),
                e(p + "block_sparse_moe.experts.*.w2.weight", .row(1)),
            ]
        } else if type != "phi3" && type != "glm4" {
            list += [
                e(p + "mlp.{gate_proj,up_proj}.weight", .column(0), optional: moe),
                e(p + "mlp.{gate_proj,up_proj}.bias", .column(0), optional: true),
                e(p + "mlp.down_proj.weight", .row(1), optional: moe),
                e(p + "mlp.down_proj.bias", .replicated, optional: true),
            ]
        }
        return list
    }

    /// Routed experts under `prefix` (`model.layers.*.mlp.`), split like a dense MLP, in either layout:
    /// one gate/up/down projection per expert (what save_pretrained writes, and published checkpoints
    /// hold), or transformers 5's in-memory tensors (save_pretrained with save_original_format=False):
    /// `experts.gate_up_proj` `[E, 2I, hidden]` (gate rows then up rows) and `experts.down_proj`
    /// `[E, hidden, I]`. Both are optional: a checkpoint holds one of them.
    static func experts(_ c: Architecture.Context, _ prefix: String) -> [RuleSet.Entry] {
        [
            c.entry(prefix + "experts.*.{gate_proj,up_proj}.weight", .column(0), optional: true),
            c.entry(prefix + "experts.*.down_proj.weight", .row(1), optional: true),
            c.entry(prefix + "experts.gate_up_proj", .fused(1, [.init(.even), .init(.even)]), optional: true),
            c.entry(prefix + "experts.down_proj", .row(2), optional: true),
        ]
    }

    /// gpt-oss: Llama-style attention with q/k/v/o biases and one attention sink per head (`sinks`
    /// [heads], split like the heads); every layer sparse, with a router with a bias (replicated) and
    /// the experts as save_pretrained writes them, input-major: `experts.gate_up_proj` [E, hidden, 2I]
    /// whose last dimension alternates gate and up columns (even gate, odd up) and
    /// `experts.down_proj` [E, I, hidden]. gate_up_proj (and its bias [E, 2I]) is split in whole
    /// (gate, up) pairs, I "heads" of 2 columns (I % G = 0), which keeps each rank's gate column j and
    /// up column j together: rank r holds columns [2·r·I/G, 2·(r+1)·I/G); down_proj is row-parallel over
    /// the same I; down_proj_bias [E, hidden] is replicated.
    @Sendable static func gptOss(_ c: Architecture.Context) throws -> [RuleSet.Entry] {
        let heads = c.heads, kv = c.kvHeads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let inner = try c.config.requireInt("intermediate_size")
        let p = "model.layers.*.", a = p + "self_attn.", x = p + "mlp.experts."
        let biases = c.config.bool("attention_bias") != false
        return [
            e("model.embed_tokens.weight", .vocab(0)),
            e("lm_head.weight", .vocab(0), optional: true),
            e("model.norm.weight", .replicated),
            e(p + "{input_layernorm,post_attention_layernorm}.weight", .replicated),
            e(a + "q_proj.weight", .heads(0, heads)),
            e(a + "q_proj.bias", .heads(0, heads), optional: !biases),
            e(a + "{k_proj,v_proj}.weight", .kvHeads(0, kv)),
            e(a + "{k_proj,v_proj}.bias", .kvHeads(0, kv), optional: !biases),
            e(a + "o_proj.weight", .outProjection(1, heads)),
            e(a + "o_proj.bias", .replicated, optional: !biases),
            e(a + "sinks", .heads(0, heads)),
            e(p + "mlp.router.{weight,bias}", .replicated),
            e(x + "gate_up_proj", .heads(2, inner)),
            e(x + "gate_up_proj_bias", .heads(1, inner)),
            e(x + "down_proj", .row(1)),
            e(x + "down_proj_bias", .replicated),
        ]
    }

    /// Llama 4 (text, `Llama4ForCausalLM`): Llama attention (no norm weights: its q/k norm is an L2
    /// norm); `feed_forward.` is a dense MLP on some layers and on the sparse ones a replicated router,
    /// a shared expert (a dense MLP) and the experts as Meta's checkpoints and save_pretrained hold them,
    /// input-major: `experts.gate_up_proj` [E, hidden, 2I] (gate columns then up columns: two column
    /// parts) and `experts.down_proj` [E, I, hidden] (row-parallel over I).
    @Sendable static func llama4Text(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads, kv = c.kvHeads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let p = "model.layers.*.", a = p + "self_attn.", f = p + "feed_forward."
        return [
            e("model.embed_tokens.weight", .vocab(0)),
            e("lm_head.weight", .vocab(0), optional: true),
            e("model.norm.weight", .replicated),
            e(p + "{input_layernorm,post_attention_layernorm}.weight", .replicated),
            e(a + "q_proj.weight", .heads(0, heads)),
            e(a + "q_proj.bias", .heads(0, heads), optional: true),
            e(a + "{k_proj,v_proj}.weight", .kvHeads(0, kv)),
            e(a + "{k_proj,v_proj}.bias", .kvHeads(0, kv), optional: true),
            e(a + "o_proj.weight", .outProjection(1, heads)),
            e(a + "o_proj.bias", .replicated, optional: true),
            // Dense layers, and the shared expert of the sparse ones.
            e(f + "{gate_proj,up_proj}.weight", .column(0), optional: true),
            e(f + "down_proj.weight", .row(1), optional: true),
            e(f + "shared_expert.{gate_proj,up_proj}.weight", .column(0), optional: true),
            e(f + "shared_expert.down_proj.weight", .row(1), optional: true),
            e(f + "router.weight", .replicated, optional: true),
            e(f + "experts.gate_up_proj", .fused(2, [.init(.even), .init(.even)]), optional: true),
            e(f + "experts.down_proj", .row(1), optional: true),
        ]
    }

    /// DeepSeek-V3. Multi-head latent attention: the low-rank projections into the q and kv latents
    /// (q_a_proj, kv_a_proj_with_mqa, which also yields the rope part of k shared by all heads) and
    /// their norms are replicated; q_b_proj (or q_proj without q_lora_rank) and kv_b_proj are split by
    /// head (kv_b_proj holds, head after head, qk_nope_head_dim rows of k then v_head_dim rows of v);
    /// o_proj is row-parallel along the heads. The first first_k_dense_replace layers have a dense MLP,
    /// the others a router (weight and e_score_correction_bias replicated), routed experts and shared
    /// experts. Multi-token-prediction layers (index num_hidden_layers, outside the forward pass) are
    /// split as vLLM loads them.
    @Sendable static func deepseekV3(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let p = "model.layers.*.", a = p + "self_attn."
        let lora = c.config.int("q_lora_rank") != nil
        let denseLayers = c.config.int("first_k_dense_replace") ?? 3, layers = c.config.layers ?? 0
        let dense = denseLayers > 0, sparse = denseLayers < layers
        let shared = sparse && (c.config.int("n_shared_experts") ?? 1) > 0
        var list = [
            e("model.embed_tokens.weight", .vocab(0)),
            e("lm_head.weight", .vocab(0), optional: true),
            e("model.norm.weight", .replicated),
            e(p + "{input_layernorm,post_attention_layernorm}.weight", .replicated),
            e(a + "{kv_a_proj_with_mqa,kv_a_layernorm}.weight", .replicated),
            e(a + "kv_a_proj_with_mqa.bias", .replicated, optional: true),
            e(a + "kv_b_proj.weight", .heads(0, heads)),
            e(a + "o_proj.weight", .outProjection(1, heads)),
            e(a + "o_proj.bias", .replicated, optional: true),
            e(p + "mlp.{gate_proj,up_proj}.weight", .column(0), optional: !dense),
            e(p + "mlp.down_proj.weight", .row(1), optional: !dense),
            e(p + "mlp.gate.{weight,e_score_correction_bias}", .replicated, optional: !sparse),
            e(p + "mlp.shared_experts.{gate_proj,up_proj}.weight", .column(0), optional: !shared),
            e(p + "mlp.shared_experts.down_proj.weight", .row(1), optional: !shared),
            e(p + "{enorm,hnorm,eh_proj,shared_head.norm}.weight", .replicated, optional: true),
            e(p + "{embed_tokens,shared_head.head}.weight", .vocab(0), optional: true),
        ] + experts(c, p + "mlp.")
        if lora {
            list += [
                e(a + "{q_a_proj,q_a_layernorm}.weight", .replicated),
                e(a + "q_a_proj.bias", .replicated, optional: true),
                e(a + "q_b_proj.weight", .heads(0, heads)),
            ]
        } else {
            list.append(e(a + "q_proj.weight", .heads(0, heads)))
        }
        return list
    }

    /// GPT-2: Conv1D weights stored `[in, out]`.
    @Sendable static func gpt2(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let t = "{transformer.,}"
        let qkv: [RuleSpec.Part] = [.init(.heads(heads)), .init(.heads(heads)), .init(.heads(heads))]
        return [
            e(t + "wte.weight", .vocab(0)),
            e(t + "wpe.weight", .replicated),
            e(t + "h.*.ln_{1,2}.{weight,bias}", .replicated),
            e(t + "h.*.attn.c_attn.weight", .fused(1, qkv)),
            e(t + "h.*.attn.c_attn.bias", .fused(0, qkv)),
            e(t + "h.*.attn.c_proj.weight", .outProjection(0, heads)),
            e(t + "h.*.attn.c_proj.bias", .replicated),
            e(t + "h.*.mlp.c_fc.weight", .column(1)),
            e(t + "h.*.mlp.c_fc.bias", .column(0)),
            e(t + "h.*.mlp.c_proj.weight", .row(0)),
            e(t + "h.*.mlp.c_proj.bias", .replicated),
            e(t + "h.*.attn.{bias,masked_bias}", .replicated, optional: true),
            e(t + "ln_f.{weight,bias}", .replicated),
            e("lm_head.weight", .vocab(0), optional: true),
        ]
    }

    /// GPT-NeoX: per-head interleaved QKV.
    @Sendable static func gptNeoX(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let p = "gpt_neox.layers.*."
        return [
            e("gpt_neox.embed_in.weight", .vocab(0)),
            e("embed_out.weight", .vocab(0), optional: true),
            e(p + "{input_layernorm,post_attention_layernorm}.{weight,bias}", .replicated),
            // [heads, 3, head_dim] interleaved: a "head" of 3·head_dim rows keeps q, k and v together.
            e(p + "attention.query_key_value.{weight,bias}", .heads(0, heads)),
            e(p + "attention.dense.weight", .outProjection(1, heads)),
            e(p + "attention.dense.bias", .replicated),
            e(p + "attention.{bias,masked_bias,rotary_emb.inv_freq}", .replicated, optional: true),
            e(p + "mlp.dense_h_to_4h.{weight,bias}", .column(0)),
            e(p + "mlp.dense_4h_to_h.weight", .row(1)),
            e(p + "mlp.dense_4h_to_h.bias", .replicated),
            e("gpt_neox.final_layer_norm.{weight,bias}", .replicated),
        ]
    }

    /// BERT and RoBERTa encoders.
    @Sendable static func bert(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let b = "{\(c.modelType).,}"
        let l = b + "encoder.layer.*."
        return [
            e(b + "embeddings.word_embeddings.weight", .vocab(0)),
            e(b + "embeddings.{position_embeddings,token_type_embeddings}.weight", .replicated),
            e(b + "embeddings.LayerNorm.{weight,bias}", .replicated),
            e(b + "embeddings.{position_ids,token_type_ids}", .replicated, optional: true),
            e(l + "attention.self.{query,key,value}.{weight,bias}", .heads(0, heads)),
            e(l + "attention.output.dense.weight", .outProjection(1, heads)),
            e(l + "attention.output.dense.bias", .replicated),
            e(l + "{attention.output,output}.LayerNorm.{weight,bias}", .replicated),
            e(l + "intermediate.dense.{weight,bias}", .column(0)),
            e(l + "output.dense.weight", .row(1)),
            e(l + "output.dense.bias", .replicated),
            e(b + "pooler.dense.{weight,bias}", .replicated, optional: true),
            // Pretraining heads (not read by the pass): the transform replicated, the decoder and its bias
            // vocab-parallel like the embedding they are tied to.
            e("{cls.predictions.transform,lm_head}.dense.{weight,bias}", .replicated, optional: true),
            e("{cls.predictions.transform.LayerNorm,lm_head.layer_norm}.{weight,bias}", .replicated, optional: true),
            e("{cls.predictions,lm_head}.decoder.weight", .vocab(0), optional: true),
            e("{cls.predictions,lm_head}.{bias,decoder.bias}", .vocab(0), optional: true),
            e("cls.seq_relationship.{weight,bias}", .replicated, optional: true),
        ]
    }

    /// How Falcon fuses q, k and v in `query_key_value` (transformers' `FalconAttention._split_heads`).
    public enum FalconQKV: Equatable, Sendable {
        /// new_decoder_architecture: `[kv, heads/kv + 2, head_dim]`, each KV group's queries, then its k, its v.
        case grouped(kvHeads: Int)
        /// multi_query: `[heads + 2, head_dim]`, every query head, then the one shared k and v.
        case multiQuery
        /// Neither: `[heads, 3, head_dim]`, per-head interleaved (as GPT-NeoX).
        case perHead

        /// The layout config.json describes, with transformers' defaults (multi_query true).
        public init(_ config: ModelConfig) {
            if config.bool("new_decoder_architecture") == true {
                self = .grouped(kvHeads: config.int("num_kv_heads") ?? config.attentionHeads ?? 1)
            } else {
                self = config.bool("multi_query") ?? true ? .multiQuery : .perHead
            }
        }

        /// The number of K/V heads.
        public func kvHeads(heads: Int) -> Int {
            switch self {
            case .grouped(let kv): return kv
            case .multiQuery: return 1
            case .perHead: return heads
            }
        }
    }

    /// Falcon (`transformer.h.N.`): LayerNorms with biases, optional linear biases (`bias`).
    @Sendable static func falcon(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let qkv: RuleSpec
        switch FalconQKV(c.config) {
        case .grouped(let kv):
            // A KV group (its queries, k and v) stays whole: KV/G groups per rank, or with fewer groups
            // than ranks, group ⌊r·KV/G⌋ on each of the G/KV ranks that share it, queries included (the
            // out projection's split picks each rank's own heads).
            qkv = .kvHeads(0, kv)
        case .multiQuery:
            // The one K and V head is replicated on every rank.
            qkv = .fused(0, [.init(.heads(heads)), .init(.kvHeads(1)), .init(.kvHeads(1))])
        case .perHead:
            qkv = .heads(0, heads)
        }
        let t = "{transformer.,}", l = t + "h.*."
        return [
            e(t + "word_embeddings.weight", .vocab(0)),
            e("lm_head.weight", .vocab(0), optional: true),
            e(l + "{input_layernorm,post_attention_layernorm,ln_attn,ln_mlp}.{weight,bias}", .replicated),
            e(l + "self_attention.query_key_value.weight", qkv),
            e(l + "self_attention.query_key_value.bias", qkv, optional: true),
            e(l + "self_attention.dense.weight", .outProjection(1, heads)),
            e(l + "self_attention.dense.bias", .replicated, optional: true),
            e(l + "mlp.dense_h_to_4h.weight", .column(0)),
            e(l + "mlp.dense_h_to_4h.bias", .column(0), optional: true),
            e(l + "mlp.dense_4h_to_h.weight", .row(1)),
            e(l + "mlp.dense_4h_to_h.bias", .replicated, optional: true),
            e(t + "ln_f.{weight,bias}", .replicated),
        ]
    }

    /// BLOOM: per-head interleaved QKV (as GPT-NeoX), an embedding LayerNorm.
    @Sendable static func bloom(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let t = "{transformer.,}", l = t + "h.*."
        return [
            e(t + "word_embeddings.weight", .vocab(0)),
            e("lm_head.weight", .vocab(0), optional: true),
            e(t + "word_embeddings_layernorm.{weight,bias}", .replicated),
            e(l + "{input_layernorm,post_attention_layernorm}.{weight,bias}", .replicated),
            // [heads, 3, head_dim]: whole heads per rank; each rank uses its heads' ALiBi slopes.
            e(l + "self_attention.query_key_value.{weight,bias}", .heads(0, heads)),
            e(l + "self_attention.dense.weight", .outProjection(1, heads)),
            e(l + "self_attention.dense.bias", .replicated),
            e(l + "mlp.dense_h_to_4h.{weight,bias}", .column(0)),
            e(l + "mlp.dense_4h_to_h.weight", .row(1)),
            e(l + "mlp.dense_4h_to_h.bias", .replicated),
            e(t + "ln_f.{weight,bias}", .replicated),
        ]
    }

    /// GPT-J: q/k/v without biases, an LM head with a bias split with the vocabulary.
    @Sendable static func gptJ(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let t = "transformer.", l = t + "h.*."
        return [
            e(t + "wte.weight", .vocab(0)),
            e("lm_head.{weight,bias}", .vocab(0)),
            e(l + "ln_1.{weight,bias}", .replicated),
            e(l + "attn.{q_proj,k_proj,v_proj}.weight", .heads(0, heads)),
            e(l + "attn.out_proj.weight", .outProjection(1, heads)),
            e(l + "attn.{bias,masked_bias}", .replicated, optional: true),
            e(l + "mlp.fc_in.{weight,bias}", .column(0)),
            e(l + "mlp.fc_out.weight", .row(1)),
            e(l + "mlp.fc_out.bias", .replicated),
            e(t + "ln_f.{weight,bias}", .replicated),
        ]
    }

    /// OPT: biases everywhere (`enable_bias`), learned positions (replicated), project_in/project_out
    /// (when word_embed_proj_dim ≠ hidden_size; replicated).
    @Sendable static func opt(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let d = "{model.,}decoder.", l = d + "layers.*."
        return [
            e(d + "embed_tokens.weight", .vocab(0)),
            e("lm_head.weight", .vocab(0), optional: true),
            e(d + "embed_positions.weight", .replicated),
            e(d + "{project_in,project_out}.weight", .replicated, optional: true),
            e(d + "final_layer_norm.{weight,bias}", .replicated, optional: true),
            e(l + "{self_attn_layer_norm,final_layer_norm}.{weight,bias}", .replicated, optional: true),
            e(l + "self_attn.{q_proj,k_proj,v_proj}.weight", .heads(0, heads)),
            e(l + "self_attn.{q_proj,k_proj,v_proj}.bias", .heads(0, heads), optional: true),
            e(l + "self_attn.out_proj.weight", .outProjection(1, heads)),
            e(l + "self_attn.out_proj.bias", .replicated, optional: true),
            e(l + "fc1.weight", .column(0)),
            e(l + "fc1.bias", .column(0), optional: true),
            e(l + "fc2.weight", .row(1)),
            e(l + "fc2.bias", .replicated, optional: true),
        ]
    }

    /// Phi-1/2: q/k/v and dense with biases, an LM head with a bias split with the vocabulary.
    @Sendable static func phi(_ c: Architecture.Context) -> [RuleSet.Entry] {
        let heads = c.heads, kv = c.kvHeads
        func e(_ p: String, _ r: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            c.entry(p, r, optional: optional)
        }
        let l = "model.layers.*."
        return [
            e("model.embed_tokens.weight", .vocab(0)),
            e("lm_head.{weight,bias}", .vocab(0), optional: true),
            e(l + "input_layernorm.{weight,bias}", .replicated),
            e(l + "self_attn.q_proj.{weight,bias}", .heads(0, heads)),
            e(l + "self_attn.{k_proj,v_proj}.{weight,bias}", .kvHeads(0, kv)),
            // qk_layernorm: LayerNorms over each head's head_dim features.
            e(l + "self_attn.{q_layernorm,k_layernorm}.{weight,bias}", .replicated, optional: true),
            e(l + "self_attn.dense.weight", .outProjection(1, heads)),
            e(l + "self_attn.dense.bias", .replicated),
            e(l + "mlp.fc1.{weight,bias}", .column(0)),
            e(l + "mlp.fc2.weight", .row(1)),
            e(l + "mlp.fc2.bias", .replicated),
            e("model.final_layernorm.{weight,bias}", .replicated),
        ]
    }
}
