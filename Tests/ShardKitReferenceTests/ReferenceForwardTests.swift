import Foundation
import ShardKit
import Testing
@testable import ShardKitReference

/// The f32 fixtures must match Hugging Face within 1e-4 relative error; the bf16 fixture's reference was
/// computed in f32 from the bf16-rounded weights, so the same bound applies to our f32 pass, but the
/// default option for low-precision weights (1e-3) is what the report applies.
let fixtureNames = ["llama-gqa", "llama-bf16-sharded", "qwen2-bias", "qwen3", "qwen3-moe", "granite", "olmo2", "stablelm", "stablelm-parallel", "mistral", "gemma", "phi3", "gpt2",
                    "gpt-neox", "gpt-neox-rope-v5", "mixtral", "bert", "qwen2-moe", "qwen2-moe-fused", "gemma2", "gemma3-text",
                    "deepseek-v3", "deepseek-v3-qdirect", "falcon", "falcon-mq", "falcon-seq", "bloom", "bloom-postln", "gptj",
                    "opt", "opt-proj", "phi", "starcoder2", "roberta", "glm4", "cohere", "gpt-oss", "llama4-text"]

/// Fixtures whose head counts (and MLP widths) allow G = 8: 8 heads, 2 KV heads replicated 4 times, or
/// DeepSeek's 8 MLA heads; every head count a multiple of 8, Falcon's 2 KV groups and Phi's and
/// StarCoder2's 2 KV heads each on 4 ranks.
let fixturesAtEight = ["qwen3", "qwen3-moe", "granite", "olmo2", "qwen2-moe", "qwen2-moe-fused", "gemma2", "gemma3-text", "deepseek-v3", "deepseek-v3-qdirect",
                       "falcon", "falcon-mq", "falcon-seq", "bloom", "bloom-postln", "gptj", "opt", "opt-proj", "phi",
                       "starcoder2", "roberta", "glm4", "cohere", "gpt-oss", "llama4-text"]
/// The encoders among them (their output is the last hidden state, with no final norm).
let encoderFixtures: Set = ["bert", "roberta"]

@Suite("Reference forward pass")
struct ReferenceForwardTests {
    @Test("full pass and TP pass match the reference and each other", arguments: fixtureNames, [1, 2, 4])
    func fixtureMatches(fixture: String, tp: Int) throws {
        let (set, ckpt, dir) = try shardFixture(fixture, tp: tp)
        defer { removeDirectory(dir) }
        let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: fixturePath(fixture) + "/reference.safetensors",
                                                 options: NumericsOptions())
        let ref = try #require(report.reference), refTP = try #require(report.referenceTP)
        print(String(format: "[numerics] %-20@ tp=%d ref(full) rel %.2e cos %.9f | ref(TP) rel %.2e | TP-vs-full rel %.2e abs %.2e | worst %@",
                     fixture as NSString, tp, ref.maxRelError, ref.cosine, refTP.maxRelError, report.final.maxRelError,
                     report.final.maxAbsError, (report.worstLayer ?? "-") as NSString))
        #expect(report.passed)
        #expect(ref.maxRelError <= 1e-4)
        #expect(refTP.maxRelError <= 1e-4)
        #expect(report.final.maxRelError <= 1e-4)
        let passCheckpoints = report.layers.filter { !$0.name.hasPrefix("weight ") }
        #expect(passCheckpoints.count == 2 + ckpt.config!.layers! - (encoderFixtures.contains(fixture) ? 1 : 0))
        // Split weights the 7 reference tokens never reach are checked one by one: Mixtral routes them
        // past some experts; every other fixture's pass reads every split weight.
        let unread = report.layers.filter { $0.name.hasPrefix("weight ") }.map(\.name)
        if fixture == "mixtral" {
            #expect(!unread.isEmpty && unread.allSatisfy { $0.contains("block_sparse_moe.experts.") && $0.hasSuffix("(not read by the pass)") })
        } else {
            #expect(unread.isEmpty, "\(unread)")
        }
        #expect(report.layers.allSatisfy { $0.stats.passed })
        #expect(report.tp == tp && report.tokens == 7)
    }

    @Test("full pass and TP pass at G = 8 match the reference", arguments: fixturesAtEight)
    func fixtureMatchesAtEight(fixture: String) throws {
        try fixtureMatches(fixture: fixture, tp: 8)
    }

    /// Every intermediate state of the full pass matches HF's output_hidden_states (hidden_states.0 is
    /// the embeddings, .N layer N's output, the last one after the final norm for decoders).
    @Test("full pass matches hidden_states", arguments: fixtureNames)
    func hiddenStatesMatch(fixture: String) throws {
        let ckpt = try Checkpoint(path: fixturePath(fixture))
        let model = try Model(config: ckpt.config!)
        let ref = try ReferenceFile(path: fixturePath(fixture) + "/reference.safetensors")
        let types = ref.has("token_type_ids") ? try ref.ints("token_type_ids") : nil
        var states: [String: [Float]] = [:]
        _ = try model.forward(TPContext(weights: try CheckpointWeights(ckpt), gemm: GemmEngine()), tokens: try ref.ints("input_ids"),
                              tokenTypes: types) { name, acts in states[name] = acts[0].data }
        for n in 0...model.layers {
            let name = n == 0 ? "embeddings" : n == model.layers && !encoderFixtures.contains(fixture) ? "final_norm" : "layers.\(n - 1)"
            let s = ComparisonStats.compare(try #require(states[name]), try ref.floats("hidden_states.\(n)"), tolerance: 1e-4)
            #expect(s.passed, "\(fixture) hidden_states.\(n) vs \(name): rel \(s.maxRelError)")
        }
    }

    @Test("full weights reassembled from the shards", arguments: ["gpt2", "phi3"])
    func reassembledFull(fixture: String) throws {
        let (set, _, dir) = try shardFixture(fixture, tp: 2)
        defer { removeDirectory(dir) }
        let report = try ReferenceForward.verify(shards: set, full: nil, reference: fixturePath(fixture) + "/reference.safetensors",
                                                 options: NumericsOptions())
        #expect(report.passed)
        #expect(try #require(report.reference).maxRelError <= 1e-4)
    }

    @Test("fused QKV split contiguously fails the TP pass", arguments: [
        ("phi3", "model.layers.0.self_attn.qkv_proj.weight"),
        ("gpt2", "transformer.h.1.attn.c_attn.weight"),
        ("phi3", "model.layers.1.mlp.gate_up_proj.weight"),
    ])
    func contiguousFusedSplitFails(fixture: String, tensor: String) throws {
        let (set, ckpt, dir) = try shardFixture(fixture, tp: 2)
        defer { removeDirectory(dir) }
        try corruptToContiguousSplit(set, checkpoint: ckpt, name: tensor)
        let corrupted = try ShardSet(directory: dir)
        let report = try ReferenceForward.verify(shards: corrupted, full: ckpt, reference: fixturePath(fixture) + "/reference.safetensors",
                                                 options: NumericsOptions())
        #expect(!report.passed)
        #expect(!report.final.passed)
        #expect(report.reference?.passed == true)      // the full pass is still right
        #expect(report.referenceTP?.passed == false)
        let generic = try GenericLinearCheck.verify(shards: corrupted, full: ckpt, options: NumericsOptions())
        #expect(!generic.passed)
        #expect(generic.worstLayer == tensor)
    }

    @Test("q/k norms split across ranks instead of whole on each fail verify (Qwen3, Gemma 3: per head; OLMo 2: whole projection)",
          arguments: [("qwen3", "qwen3"), ("olmo2", "olmo2"), ("gemma3-text", "gemma3_text")])
    func qkNormsSplitFail(fixture: String, preset: String) throws {
        #expect(try wrongSplitFails(fixture, preset, #"{"pattern": "model.layers.*.self_attn.{q_norm,k_norm}.weight", "rule": "column"}"#,
                                    mentioning: "q_norm"))
    }

    /// Shards `fixture` with `preset` plus one overriding rules-file `entry` and verifies at G = 2: true when
    /// the report fails, or verify throws a verification failure that mentions `mentioning`.
    func wrongSplitFails(_ fixture: String, _ preset: String, _ entry: String, mentioning: String) throws -> Bool {
        let dir = fixturePath(fixture)
        let ckpt = try Checkpoint(path: dir)
        let json = #"{"extends": "\#(preset)", "rules": [\#(entry)]}"#
        let rules = try RulesFile.ruleSet(from: try JSONValue.parse(Array(json.utf8)), origin: "rules.json", config: ckpt.config)
        let out = temporaryPath("\(fixture)-wrong-split")
        defer { removeDirectory(out) }
        try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: 2, output: out)
        do {
            let report = try ReferenceForward.verify(shards: try ShardSet(directory: out), full: ckpt,
                                                     reference: dir + "/reference.safetensors", options: NumericsOptions())
            #expect(report.reference?.passed == true)    // the full pass is still right
            return !report.passed
        } catch let e as ShardKitError {
            return e.code == .verificationFailed && e.message.contains(mentioning)
        }
    }

    /// The tensors each architecture needs whole, or split its own way, split otherwise.
    @Test("special tensors split the wrong way fail verify", arguments: [
        // Qwen2-MoE's shared-expert gate is one row every rank needs whole.
        ("qwen2-moe", "qwen2_moe", #"{"pattern": "model.layers.*.mlp.shared_expert_gate.weight", "rule": "row", "dim": 1}"#,
         "shared_expert_gate"),
        // transformers 5's fused gate_up_proj [E, 2I, H] split contiguously instead of as two parts.
        ("qwen2-moe-fused", "qwen2_moe", #"{"pattern": "model.layers.*.mlp.experts.gate_up_proj", "rule": "column", "dim": 1}"#,
         "gate features"),
        // Gemma 2's post-branch norms are replicated like the others.
        ("gemma2", "gemma2", #"{"pattern": "model.layers.*.post_feedforward_layernorm.weight", "rule": "column"}"#,
         "post_feedforward_layernorm"),
        // DeepSeek-V3: kv_b_proj read as [k of all heads; v of all heads] instead of head by head.
        ("deepseek-v3", "deepseek_v3", #"{"pattern": "model.layers.*.self_attn.kv_b_proj.weight", "rule": "fused", "parts": [{"rule": "heads", "heads": 8}, {"rule": "heads", "heads": 8}]}"#,
         "kv_b_proj"),
        // The latents are computed whole on every rank.
        ("deepseek-v3", "deepseek_v3", #"{"pattern": "model.layers.*.self_attn.kv_a_proj_with_mqa.weight", "rule": "column"}"#,
         "kv_a_proj_with_mqa"),
        ("deepseek-v3", "deepseek_v3", #"{"pattern": "model.layers.*.self_attn.q_a_proj.weight", "rule": "column"}"#,
         "q_a_proj"),
        ("deepseek-v3", "deepseek_v3", #"{"pattern": "model.layers.*.self_attn.{q_a_layernorm,kv_a_layernorm}.weight", "rule": "column"}"#,
         "layernorm"),
        // Every rank routes with the whole correction bias.
        ("deepseek-v3", "deepseek_v3", #"{"pattern": "model.layers.*.mlp.gate.e_score_correction_bias", "rule": "column"}"#,
         "e_score_correction_bias"),
        // GLM-4's gate_up_proj [gate; up] split contiguously instead of as two parts.
        ("glm4", "glm4", #"{"pattern": "model.layers.*.mlp.gate_up_proj.weight", "rule": "column"}"#, "gate features"),
        // GLM-4's post-branch norms are replicated.
        ("glm4", "glm4", #"{"pattern": "model.layers.*.post_mlp_layernorm.weight", "rule": "column"}"#, "post_mlp_layernorm"),
        ("glm4", "glm4", #"{"pattern": "model.layers.*.post_self_attn_layernorm.weight", "rule": "column"}"#,
         "post_self_attn_layernorm"),
        // Cohere's per-head q/k norms [heads, head_dim]: a rank holding other heads' rows than its own, or
        // part of each head's row.
        ("cohere", "cohere", #"{"pattern": "model.layers.*.self_attn.q_norm.weight", "rule": "fused", "parts": [{"rule": "heads", "heads": 4}, {"rule": "heads", "heads": 4}]}"#,
         "q_norm"),
        ("cohere", "cohere", #"{"pattern": "model.layers.*.self_attn.k_norm.weight", "rule": "column", "dim": 1}"#, "k_norm"),
        // gpt-oss: sinks [heads] in two parts (each rank gets other heads' sinks than its own).
        ("gpt-oss", "gpt_oss", #"{"pattern": "model.layers.*.self_attn.sinks", "rule": "fused", "parts": [{"rule": "heads", "heads": 4}, {"rule": "heads", "heads": 4}]}"#,
         "attention sink"),
        // gate_up_proj [E, hidden, 2I] split as two halves (as if gate block, up block) instead of in
        // contiguous runs of interleaved pairs: rank 0 holds columns 0..<16 and 32..<48, i.e. intermediate
        // features 0..<8 and 16..<24, which down_proj's rows 0..<16 do not match; and its bias so split
        // too; the weight alone so split no longer matches its bias.
        ("gpt-oss", "gpt_oss", #"{"pattern": "model.layers.*.mlp.experts.gate_up_proj", "rule": "fused", "dim": 2, "parts": [{"rule": "even"}, {"rule": "even"}]}, {"pattern": "model.layers.*.mlp.experts.gate_up_proj_bias", "rule": "fused", "dim": 1, "parts": [{"rule": "even"}, {"rule": "even"}]}"#,
         "down_proj[0] needs input feature 8"),
        ("gpt-oss", "gpt_oss", #"{"pattern": "model.layers.*.mlp.experts.gate_up_proj", "rule": "fused", "dim": 2, "parts": [{"rule": "even"}, {"rule": "even"}]}"#,
         "gate_up_proj_bias[0] holds output features 0..<32, but the rank's layer produces 0..<16, 32..<48"),
        ("gpt-oss", "gpt_oss", #"{"pattern": "model.layers.*.mlp.experts.gate_up_proj_bias", "rule": "fused", "dim": 1, "parts": [{"rule": "even"}, {"rule": "even"}]}"#,
         "gate_up_proj_bias"),
        // Llama 4's gate_up_proj [E, hidden, 2I] split contiguously instead of as two column parts; its
        // router replicated.
        ("llama4-text", "llama4_text", #"{"pattern": "model.layers.*.feed_forward.experts.gate_up_proj", "rule": "column", "dim": 2}"#,
         "gate features"),
        ("llama4-text", "llama4_text", #"{"pattern": "model.layers.*.feed_forward.router.weight", "rule": "column"}"#,
         "router"),
        // gpt-oss: the router (with its bias) and the down-projection bias are replicated.
        ("gpt-oss", "gpt_oss", #"{"pattern": "model.layers.*.mlp.router.bias", "rule": "column"}"#, "router.bias"),
        ("gpt-oss", "gpt_oss", #"{"pattern": "model.layers.*.mlp.experts.down_proj_bias", "rule": "column", "dim": 1}"#,
         "down_proj_bias"),
    ])
    func specialTensorsSplitWrongFail(fixture: String, preset: String, entry: String, mentioning: String) throws {
        #expect(try wrongSplitFails(fixture, preset, entry, mentioning: mentioning))
    }

    /// gpt-oss's gate_up_proj is split in whole (gate, up) pairs: a rules file that cuts one (the first pair
    /// as a part of its own, split over 2 ranks: rank 0 would get gate 0, rank 1 up 0) is refused when
    /// sharding, with the preset's rule named.
    @Test("a gpt-oss gate/up pair cut between ranks is refused")
    func gptOssPairCutRefused() throws {
        let ckpt = try Checkpoint(path: fixturePath("gpt-oss"))
        let json = #"{"extends": "gpt_oss", "rules": [{"pattern": "model.layers.*.mlp.experts.gate_up_proj", "rule": "fused", "dim": 2, "parts": [{"rule": "even", "size": 2}, {"rule": "even", "size": 62}]}]}"#
        let rules = try RulesFile.ruleSet(from: try JSONValue.parse(Array(json.utf8)), origin: "rules.json", config: ckpt.config)
        let out = temporaryPath("gpt-oss-pair-cut")
        defer { removeDirectory(out) }
        #expect {
            try Shard.run(checkpoint: ckpt, sourcePath: fixturePath("gpt-oss"), rules: rules, tp: 2, output: out)
        } throws: { error in
            "\(error)".contains("cuts a head") && "\(error)".contains("heads(dim 2, 32 heads)")
        }
    }

    /// Llama 4's q/k norm follows the rotation in transformers; the pass normalizes first, which is the same
    /// only when the rope scaling leaves cos and sin unscaled: YaRN's attention factor is refused.
    @Test("Llama 4 with a rope scaling that scales cos and sin is refused")
    func llama4ScaledRopeRefused() throws {
        let dir = temporaryPath("llama4-yarn")
        defer { removeDirectory(dir) }
        try FileManager.default.copyItem(atPath: fixturePath("llama4-text"), toPath: dir)
        let text = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        try text.replacingOccurrences(of: #""rope_type": "llama3""#, with: #""rope_type": "yarn""#)
            .write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        let ckpt = try Checkpoint(path: dir)
        let model = try Model(config: ckpt.config!)
        #expect {
            _ = try model.forward(TPContext(weights: try CheckpointWeights(ckpt), gemm: GemmEngine()), tokens: [1, 2, 3],
                                  tokenTypes: nil) { _, _ in }
        } throws: { error in
            (error as? ShardKitError)?.message.contains("attention factor") == true
        }
    }

    /// The config keys the new passes must honour: with one changed, the pass no longer matches the
    /// reference that transformers computed with the original (and Gemma 3's attention ignores
    /// attn_logit_softcapping, as transformers does).
    @Test("config features change the pass as in transformers", arguments: [
        ("gemma2", #""final_logit_softcapping": 5.0"#, #""final_logit_softcapping": null"#, false),
        ("gemma2", #""attn_logit_softcapping": 2.0"#, #""attn_logit_softcapping": null"#, false),
        ("gemma2", #""query_pre_attn_scalar": 24"#, #""query_pre_attn_scalar": 16"#, false),
        ("gemma2", #""sliding_window": 4"#, #""sliding_window": 64"#, false),
        ("gemma3-text", #""rope_theta": 20000.0"#, #""rope_theta": 10000.0"#, false),
        ("gemma3-text", #""rope_theta": 500000.0"#, #""rope_theta": 1000000.0"#, false),
        ("gemma3-text", #""factor": 4.0"#, #""factor": 1.0"#, false),
        ("gemma3-text", #""attn_logit_softcapping": null"#, #""attn_logit_softcapping": 2.0"#, true),
        ("qwen2-moe", #""norm_topk_prob": false"#, #""norm_topk_prob": true"#, false),
        ("deepseek-v3", #""rope_interleave": true"#, #""rope_interleave": false"#, false),
        ("deepseek-v3", #""routed_scaling_factor": 2.5"#, #""routed_scaling_factor": 1.0"#, false),
        ("deepseek-v3", #""mscale_all_dim": 0.707"#, #""mscale_all_dim": 0.0"#, false),
        ("deepseek-v3", #""topk_group": 2"#, #""topk_group": 4"#, false),
        ("glm4", #""partial_rotary_factor": 0.5"#, #""partial_rotary_factor": 1.0"#, false),
        ("cohere", #""logit_scale": 0.25"#, #""logit_scale": 0.0625"#, false),
        ("cohere", #""use_qk_norm": true"#, #""use_qk_norm": false"#, false),
        ("gpt-oss", #""swiglu_limit": 1.5"#, #""swiglu_limit": 7.0"#, false),
        ("gpt-oss", #""swiglu_alpha": 1.702"#, #""swiglu_alpha": 1.0"#, false),
        ("gpt-oss", #""sliding_window": 4"#, #""sliding_window": 64"#, false),
        ("gpt-oss", #""truncate": false"#, #""truncate": true"#, false),
        ("llama4-text", #""attention_chunk_size": 4"#, #""attention_chunk_size": 64"#, false),
        ("llama4-text", #""floor_scale": 2"#, #""floor_scale": 8192"#, false),
        ("llama4-text", #""attn_temperature_tuning": true"#, #""attn_temperature_tuning": false"#, false),
        ("llama4-text", #""use_qk_norm": true"#, #""use_qk_norm": false"#, false),
        ("llama4-text", #""factor": 16.0"#, #""factor": 1.0"#, false),
        ("llama4-text", "\"no_rope_layers\": [\n    1,\n    0\n  ]", "\"no_rope_layers\": [1, 1]", false),
    ])
    func configFeatures(fixture: String, key: String, changed: String, stillMatches: Bool) throws {
        let dir = temporaryPath("\(fixture)-config")
        defer { removeDirectory(dir) }
        try FileManager.default.copyItem(atPath: fixturePath(fixture), toPath: dir)
        let text = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        #expect(text.components(separatedBy: key).count == 2)
        try text.replacingOccurrences(of: key, with: changed).write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        let (set, ckpt, out) = try shardTemporary(dir, tp: 2)
        defer { removeDirectory(out) }
        let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: dir + "/reference.safetensors",
                                                 options: NumericsOptions())
        #expect(report.reference?.passed == stillMatches)
        #expect(report.final.passed)    // the TP pass still agrees with the full one
    }

    /// The same models described in transformers 4's config dialect (as published Gemma 2/3 and DeepSeek-V3
    /// configs are: no layer_types, top-level rope_theta, Gemma 3's rope_local_base_freq,
    /// sliding_window_pattern and rope_scaling for its global layers, DeepSeek's rope_scaling "type"),
    /// which transformers 5.24 reads into the same model: the pass must match the same reference.
    @Test("transformers 4 config dialect gives the same pass", arguments: ["gemma2", "gemma3-text", "deepseek-v3"])
    func legacyConfigDialect(fixture: String) throws {
        let dir = temporaryPath("\(fixture)-legacy")
        defer { removeDirectory(dir) }
        try FileManager.default.copyItem(atPath: fixturePath(fixture), toPath: dir)
        let url = URL(fileURLWithPath: dir + "/config.json")
        var c = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        var rope = try #require(c.removeValue(forKey: "rope_parameters") as? [String: Any])
        c["layer_types"] = nil
        switch fixture {
        case "gemma3-text":
            c["_sliding_window_pattern"] = nil
            c["sliding_window_pattern"] = 2
            c["rope_local_base_freq"] = (rope["sliding_attention"] as? [String: Any])?["rope_theta"]
            var global = try #require(rope["full_attention"] as? [String: Any])
            c["rope_theta"] = global.removeValue(forKey: "rope_theta")
            c["rope_scaling"] = global
        case "deepseek-v3":
            c["rope_theta"] = rope.removeValue(forKey: "rope_theta")
            rope["type"] = rope.removeValue(forKey: "rope_type")
            c["rope_scaling"] = rope
        default:
            c["rope_theta"] = rope["rope_theta"]
        }
        try JSONSerialization.data(withJSONObject: c, options: [.sortedKeys]).write(to: url)
        let (set, ckpt, out) = try shardTemporary(dir, tp: 2)
        defer { removeDirectory(out) }
        let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: dir + "/reference.safetensors",
                                                 options: NumericsOptions())
        #expect(report.passed && report.reference?.passed == true)
    }

    /// Each special layout of Falcon, GPT-J, Phi, OPT and StarCoder2, overridden by a plausible wrong rule, fails
    /// verify (by a failed comparison or a verification error).
    @Test("a wrong split of a special tensor fails verify", arguments: [
        // Falcon's one K/V head split with the query heads instead of replicated: rank 0 has no key head.
        ("falcon-mq", #"{"pattern": "transformer.h.*.self_attention.query_key_value.{weight,bias}", "rule": "column"}"#,
         "needs key head 0"),
        // An LM head bias replicated instead of split with the vocabulary.
        ("gptj", #"{"pattern": "lm_head.bias", "rule": "replicated"}"#, "lm_head.bias"),
        ("phi", #"{"pattern": "lm_head.bias", "rule": "replicated"}"#, "lm_head.bias"),
        // OPT: a column-parallel bias replicated, a row-parallel bias split.
        ("opt", #"{"pattern": "model.decoder.layers.*.fc1.bias", "rule": "replicated"}"#, "fc1.bias"),
        ("opt", #"{"pattern": "model.decoder.layers.*.self_attn.out_proj.bias", "rule": "column"}"#, "out_proj.bias"),
        // StarCoder2: the same for its plain MLP and its K/V biases.
        ("starcoder2", #"{"pattern": "model.layers.*.mlp.c_fc.bias", "rule": "replicated"}"#, "c_fc.bias"),
        ("starcoder2", #"{"pattern": "model.layers.*.mlp.c_proj.bias", "rule": "column"}"#, "c_proj.bias"),
        ("starcoder2", #"{"pattern": "model.layers.*.self_attn.{k_proj,v_proj}.bias", "rule": "replicated"}"#, "k_proj.bias"),
    ])
    func specialWrongSplitFails(fixture: String, rule: String, mentions: String) throws {
        let dir = fixturePath(fixture)
        let ckpt = try Checkpoint(path: dir)
        let json = #"{"extends": "auto", "rules": ["# + rule + "]}"
        let rules = try RulesFile.ruleSet(from: try JSONValue.parse(Array(json.utf8)), origin: "rules.json", config: ckpt.config)
        let out = temporaryPath("\(fixture)-wrong-split")
        defer { removeDirectory(out) }
        try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: 2, output: out)
        var failed = false
        do {
            let report = try ReferenceForward.verify(shards: try ShardSet(directory: out), full: ckpt,
                                                     reference: dir + "/reference.safetensors", options: NumericsOptions())
            failed = !report.passed && report.reference?.passed == true
        } catch let e as ShardKitError {
            failed = e.code == .verificationFailed && e.message.contains(mentions)
            print("[wrong split] \(fixture): \(e.message)")
        }
        #expect(failed)
    }

    /// Falcon's grouped query_key_value ([KV, H/KV + 2, hd]) taken for [q; k; v] (Phi-3's and vLLM's fused
    /// layout): shard refuses such a rule (it cuts a group), and the bytes it would give, under a manifest
    /// that claims the right rule, fail verify.
    @Test("Falcon's grouped QKV split as [q; k; v] is refused by shard and fails verify")
    func falconGroupedAsConcatenated() throws {
        let dir = fixturePath("falcon")
        let ckpt = try Checkpoint(path: dir)
        let name = "transformer.h.0.self_attention.query_key_value.weight"
        let json = #"{"extends": "falcon", "rules": [{"pattern": "\#(name)", "rule": "fused", "parts": "#
            + #"[{"rule": "heads", "heads": 8}, {"rule": "kv_heads", "heads": 2}, {"rule": "kv_heads", "heads": 2}]}]}"#
        let rules = try RulesFile.ruleSet(from: try JSONValue.parse(Array(json.utf8)), origin: "rules.json", config: ckpt.config)
        let refused = temporaryPath("falcon-qkv-refused")
        defer { removeDirectory(refused) }
        #expect { try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: 2, output: refused) } throws: { e in
            (e as? ShardKitError)?.message.contains("cuts a head") == true
        }
        let (set, _, out) = try shardFixture("falcon", tp: 2)
        defer { removeDirectory(out) }
        // Read as [q (64 rows); k (16); v (16)], rank r would hold q heads 4r..<4r+4, k head r and v head r.
        let rows = (0..<2).map { r in Array((32 * r)..<(32 * r + 32)) + Array((64 + 8 * r)..<(72 + 8 * r))
            + Array((80 + 8 * r)..<(88 + 8 * r)) }
        try corruptRows(set, checkpoint: ckpt, name: name, rows: rows)
        let report = try ReferenceForward.verify(shards: try ShardSet(directory: out), full: ckpt,
                                                 reference: dir + "/reference.safetensors", options: NumericsOptions())
        print(String(format: "[falcon qkv as q;k;v] TP-vs-full rel %.2e", report.final.maxRelError))
        #expect(!report.passed && report.reference?.passed == true && report.referenceTP?.passed == false)
    }

    /// Rank 0 and rank 1 trade their heads (Q/K/V rows and out-projection columns of layer 0) while the
    /// manifest keeps the right labels. Attention heads are interchangeable without ALiBi, so GPT-NeoX
    /// still passes; BLOOM's ranks then apply the slopes of heads they do not hold, and fail.
    @Test("heads on the wrong ranks fail BLOOM (per-head ALiBi slopes) and not GPT-NeoX",
          arguments: [("bloom", "transformer.h.0.self_attention.", "query_key_value", true),
                      ("gpt-neox", "gpt_neox.layers.0.attention.", "query_key_value", false)])
    func swappedHeads(fixture: String, prefix: String, qkv: String, alibi: Bool) throws {
        let (set, ckpt, dir) = try shardFixture(fixture, tp: 2)
        defer { removeDirectory(dir) }
        var manifest = set.manifest
        for name in [qkv + ".weight", qkv + ".bias", "dense.weight"].map({ prefix + $0 }) {
            let pieces = try (0..<2).map { try pieceBytes(set, name: name, rank: $0) }
            for r in 0..<2 { try overwritePiece(set, &manifest, name: name, rank: r, with: pieces[1 - r]) }
        }
        try Data(manifest.encoded()).write(to: URL(fileURLWithPath: set.directory + "/" + Manifest.fileName))
        let report = try ReferenceForward.verify(shards: try ShardSet(directory: dir), full: ckpt,
                                                 reference: fixturePath(fixture) + "/reference.safetensors",
                                                 options: NumericsOptions())
        print(String(format: "[swapped heads] %@ TP-vs-full rel %.2e", fixture as NSString, report.final.maxRelError))
        #expect(report.passed == !alibi)
        #expect(report.reference?.passed == true)
        #expect(report.referenceTP?.passed == !alibi)
    }

    @Test("a perturbed reference fails the reference check")
    func perturbedReferenceFails() throws {
        let (set, ckpt, dir) = try shardFixture("llama-gqa", tp: 2)
        defer { removeDirectory(dir) }
        let refPath = temporaryPath("perturbed") + ".safetensors"
        try FileManager.default.copyItem(atPath: fixturePath("llama-gqa") + "/reference.safetensors", toPath: refPath)
        defer { removeDirectory(refPath) }
        let logits = try #require(try SafetensorsFile(path: refPath).tensor(named: "logits"))
        var values = try ReferenceFile(path: refPath).floats("logits")
        for i in stride(from: 0, to: values.count, by: 3) { values[i] += 1e-2 }
        let handle = try #require(FileHandle(forUpdatingAtPath: refPath))
        try handle.seek(toOffset: UInt64(logits.offset))
        try handle.write(contentsOf: values.withUnsafeBytes { Data($0) })
        try handle.close()
        let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: refPath, options: NumericsOptions())
        #expect(!report.passed)
        #expect(report.reference?.passed == false)
        #expect(report.final.passed)
        #expect(report.worstLayer?.hasPrefix("reference") == true)
    }

    @Test("default tokens, report encodes as JSON")
    func defaultTokensAndJSON() throws {
        let (set, ckpt, dir) = try shardFixture("mixtral", tp: 4)
        defer { removeDirectory(dir) }
        let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: nil, options: NumericsOptions())
        #expect(report.passed && report.tokens == 16 && report.reference == nil)
        #expect(report.gemmFlops > 0)
        let json = try JSONEncoder().encode(report)
        #expect(try JSONDecoder().decode(NumericsReport.self, from: json).final == report.final)
    }

    @Test("unsupported model type throws")
    func unsupported() throws {
        let config = ModelConfig(json: try JSONValue.parse(Array(#"{"model_type": "t5", "hidden_size": 8}"#.utf8)))
        #expect(throws: ShardKitError.self) { try Model(config: config) }
        #expect(ReferenceForward.supportedModelTypes.count == Architectures.withForwardPass.count)
    }

    @Test("generic linear check passes on correct shard sets", arguments: ["llama-gqa", "gpt2", "gpt-neox", "phi3"], [2, 4])
    func genericPasses(fixture: String, tp: Int) throws {
        let (set, ckpt, dir) = try shardFixture(fixture, tp: tp)
        defer { removeDirectory(dir) }
        let report = try GenericLinearCheck.verify(shards: set, full: ckpt, options: NumericsOptions())
        #expect(report.passed, "\(report.worstLayer ?? "") \(report.final)")
        #expect(report.layers.count > 5)
        let reassembled = try GenericLinearCheck.verify(shards: set, full: nil, options: NumericsOptions())
        #expect(reassembled.passed)
    }

    @Test("sgemm throughput is measured")
    func throughput() {
        #expect(ReferenceForward.sgemmThroughput(n: 64) > 0)
    }

    @Test("fp8 and half tables")
    func widening() throws {
        #expect(Widen.e4m3[0x38] == 1 && Widen.e4m3[0x7E] == 448 && Widen.e4m3[0x7F].isNaN && Widen.e4m3[0x01] == Float(pow(2.0, -9)))
        #expect(Widen.e5m2[0x3C] == 1 && Widen.e5m2[0x7C] == .infinity && Widen.e5m2[0x7B] == 57344)
        let bf: [UInt16] = [0x3F80, 0xC000]
        let v = try bf.withUnsafeBytes { try Widen.toFloat($0, dtype: .bf16, count: 2, name: "t") }
        #expect(v == [1, -2])
        let h: [UInt16] = [0x3C00, 0x7BFF]
        #expect(try h.withUnsafeBytes { try Widen.toFloat($0, dtype: .f16, count: 2, name: "t") } == [1, 65504])
        #expect(Widen.round(55.4256, to: .bf16) == 55.5)
    }
}

@Test("print corrupted-layout numbers (informational)")
func corruptedNumbers() throws {
    let (set, ckpt, dir) = try shardFixture("phi3", tp: 2)
    defer { removeDirectory(dir) }
    try corruptToContiguousSplit(set, checkpoint: ckpt, name: "model.layers.0.self_attn.qkv_proj.weight")
    let r = try ReferenceForward.verify(shards: try ShardSet(directory: dir), full: ckpt, reference: fixturePath("phi3") + "/reference.safetensors", options: NumericsOptions())
    for l in r.layers { print("[corrupt] \(l.name) rel \(l.stats.maxRelError) cos \(l.stats.cosine)") }
    print("[corrupt] final rel \(r.final.maxRelError) cos \(r.final.cosine) refTP \(r.referenceTP!.maxRelError) gemm \(r.gemmGFLOPS) GFLOP/s \(r.seconds)s")
    #expect(!r.passed)
}

@Test("sliding window and longrope building blocks")
func windowAndRope() throws {
    // One head, hd 2, 3 tokens: with window 1 every token attends only to itself.
    let q = Act(rows: 3, labels: [0, 1], data: [1, 0, 0, 1, 1, 1])
    let v = Act(rows: 3, labels: [0, 1], data: [1, 2, 3, 4, 5, 6])
    let own = try Attention.run(q: q, k: q, v: v, heads: 1, kvHeads: 1, headDim: 2, rope: nil, causal: true, window: 1, scale: 1, rank: 0, layer: "t")
    #expect(own.data == v.data)
    let wide = try Attention.run(q: q, k: q, v: v, heads: 1, kvHeads: 1, headDim: 2, rope: nil, causal: true, window: 3, scale: 1, rank: 0, layer: "t")
    let none = try Attention.run(q: q, k: q, v: v, heads: 1, kvHeads: 1, headDim: 2, rope: nil, causal: true, scale: 1, rank: 0, layer: "t")
    #expect(wide.data == none.data && wide.data != own.data)
    // longrope with unit short factors and attention_factor 1 is the default rotary embedding.
    let scaling = try JSONValue.parse(Array(#"{"type": "longrope", "short_factor": [1, 1], "long_factor": [4, 4], "attention_factor": 1.0, "original_max_position_embeddings": 16}"#.utf8))
    let lr = try Rope(dims: 4, theta: 10000, positions: [0, 1, 2], scaling: scaling)
    let plain = try Rope(dims: 4, theta: 10000, positions: [0, 1, 2], scaling: nil)
    #expect(lr.cos == plain.cos && lr.sin == plain.sin)
}

/// A wrong layout on a weight the forward pass never reads is still caught.
@Suite("weights outside the pass")
struct UnreadWeightTests {
    @Test("swapped ranks of an expert no reference token is routed to fail the numerics")
    func unroutedExpertSwapped() throws {
        let (set, ckpt, dir) = try shardFixture("mixtral", tp: 2)
        defer { removeDirectory(dir) }
        let reference = fixturePath("mixtral") + "/reference.safetensors"
        let clean = try ReferenceForward.verify(shards: set, full: ckpt, reference: reference, options: NumericsOptions())
        #expect(clean.passed)
        let unread = clean.layers.map(\.name).filter { $0.hasPrefix("weight ") && $0.contains(".w1.weight") }
        let label = try #require(unread.first)
        let name = String(label.dropFirst("weight ".count).prefix { $0 != " " })

        // Swap rank 0's and rank 1's bytes of that w1 and make the checksums match again.
        var manifest = set.manifest
        let pieces = try (0..<2).map { try pieceBytes(set, name: name, rank: $0) }
        #expect(pieces[0] != pieces[1])
        for r in 0..<2 { try overwritePiece(set, &manifest, name: name, rank: r, with: pieces[1 - r]) }
        try Data(manifest.encoded()).write(to: URL(fileURLWithPath: set.directory + "/" + Manifest.fileName))

        let broken = try ReferenceForward.verify(shards: try ShardSet(directory: set.directory), full: ckpt, reference: reference,
                                                 options: NumericsOptions())
        #expect(!broken.passed)
        #expect(broken.layers.first { $0.name == label }?.stats.passed == false)
        // The pass itself never touches the expert: only the per-weight check sees it.
        #expect(broken.layers.filter { !$0.name.hasPrefix("weight ") }.allSatisfy { $0.stats.passed })
    }
}
