import Foundation
import ShardKit
import Testing
@testable import ShardKitReference

/// transformers 4.57 config defaults and spellings, and malformed inputs that must be reported, not trap.
@Suite("Reference pass: config defaults and malformed inputs")
struct ConfigAndMalformedInputTests {
    /// One reader of rotary settings for every forward pass: transformers 5's rope_parameters first,
    /// then the model's older top-level spellings, then its defaults.
    @Test("rotary settings: rope_parameters, then the model's legacy names, then its defaults")
    func rotarySettings() throws {
        func config(_ json: String) throws -> ModelConfig { ModelConfig(json: try JSONValue.parse(Array(json.utf8))) }
        let neox = (factorKeys: ["rotary_pct"], thetaKeys: ["rotary_emb_base"])
        func neoxRotary(_ c: ModelConfig) -> ModelConfig.Rotary {
            c.rotary(factorKeys: neox.factorKeys, thetaKeys: neox.thetaKeys, defaultFactor: 0.25)
        }
        let v5 = try config(#"{"rope_parameters": {"rope_theta": 20000.0, "partial_rotary_factor": 0.5}}"#)
        #expect(neoxRotary(v5) == .init(theta: 20000, partialFactor: 0.5))
        let v4 = try config(#"{"rotary_pct": 0.5, "rotary_emb_base": 20000}"#)
        #expect(neoxRotary(v4) == .init(theta: 20000, partialFactor: 0.5))
        #expect(neoxRotary(try config("{}")) == .init(theta: 10000, partialFactor: 0.25))
        // transformers 4 reads a NeoX's rotary_pct, not partial_rotary_factor.
        #expect(neoxRotary(try config(#"{"partial_rotary_factor": 1.0, "rotary_pct": 0.5}"#)).partialFactor == 0.5)
        let llama = try config(#"{"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#)
        #expect(llama.rotary() == .init(theta: 500000, partialFactor: 1))
        let nested = try config(#"{"text_config": {"rope_parameters": {"rope_theta": 1000000.0}}}"#)
        #expect(nested.rotary().theta == 1_000_000)
    }

    func config(_ json: String) throws -> ModelConfig { ModelConfig(json: try JSONValue.parse(Array(json.utf8))) }
    func model(_ type: String, _ extra: String = "") throws -> Model {
        try Model(config: try config(#"{"model_type": "\#(type)", "hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 1, "vocab_size": 32\#(extra)}"#))
    }

    @Test("norm eps and activation defaults follow each config class")
    func defaults() throws {
        #expect(try model("mixtral").eps == 1e-5 && model("phi3").eps == 1e-5)
        #expect(try model("llama").eps == 1e-6 && model("gemma").eps == 1e-6 && model("bert").eps == 1e-12 && model("gpt_neox").eps == 1e-5)
        #expect(try model("gpt_neox").activation == .geluErf && model("bert").activation == .geluErf)
        #expect(try model("llama").activation == .silu && model("gpt2").activation == .geluTanh && model("gemma").activation == .geluTanh)
        // GemmaMLP uses hidden_act; hidden_activation is ignored by transformers 4.57.
        #expect(try model("gemma", #", "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh""#).activation == .geluErf)
    }

    @Test("Qwen2 sliding window only with use_sliding_window; max_window_layers defaults to 28")
    func qwen2Window() throws {
        let off = try model("qwen2", #", "sliding_window": 4, "layer_types": ["sliding_attention"]"#)
        #expect(off.slidingWindow(layer: 0) == nil)
        let on = try model("qwen2", #", "sliding_window": 4, "use_sliding_window": true"#)
        #expect(on.slidingWindow(layer: 27) == nil && on.slidingWindow(layer: 28) == 4)
        #expect(try model("mistral", #", "sliding_window": 4"#).slidingWindow(layer: 0) == 4)
    }

    @Test("longrope: config's original_max_position_embeddings sets the factor; Phi-3's \"su\" is longrope")
    func longrope() throws {
        let c = try config(#"{"model_type": "phi3", "max_position_embeddings": 64, "original_max_position_embeddings": 16}"#)
        let scaling = try JSONValue.parse(Array(#"{"type": "su", "short_factor": [1, 1], "long_factor": [4, 4], "factor": 100}"#.utf8))
        let rope = try Rope(dims: 4, theta: 10000, positions: [0, 1], scaling: scaling, config: c)
        let expected = Float((1 + log(4.0) / log(16.0)).squareRoot())     // factor 64 / 16, not rope_scaling's 100
        #expect(abs(rope.cos[0][0] - expected) < 1e-6)
    }

    /// GPTNeoXConfig: rotary_pct defaults to 0.25 and rotary_emb_base to 10000, and overrides
    /// partial_rotary_factor / rope_theta given under the newer names.
    @Test("GPT-NeoX rotary defaults")
    func neoxRotaryDefaults() throws {
        try withTempDir { dir in
            try copyFixture("gpt-neox", to: dir)
            try editConfig(dir, ["rotary_pct": nil, "rotary_emb_base": nil, "partial_rotary_factor": 1, "rope_theta": 500])
            let ckpt = try Checkpoint(path: dir)
            let ref = try ReferenceFile(path: dir + "/reference.safetensors")
            let out = try Model(config: ckpt.config!).forward(TPContext(weights: try CheckpointWeights(ckpt), gemm: GemmEngine()),
                                                             tokens: try ref.ints("input_ids"), tokenTypes: nil) { _, _ in }
            #expect(ComparisonStats.compare(out[0].data, try ref.floats("logits"), tolerance: 1e-4).passed)
        }
    }

    @Test("a replicated embedding and LM head (user rules) pass: no all-reduce of a replicated lookup")
    func replicatedEmbedding() throws {
        let ckpt = try Checkpoint(path: fixturePath("llama-gqa"))
        let rules = try JSONValue.parse(Array(#"""
            {"rules": [
              {"pattern": "{model.embed_tokens,lm_head}.weight", "rule": "replicated"},
              {"pattern": "**norm.weight", "rule": "replicated"},
              {"pattern": "**.q_proj.weight", "rule": "heads", "heads": "num_attention_heads"},
              {"pattern": "**.{k_proj,v_proj}.weight", "rule": "kv_heads", "heads": "num_key_value_heads"},
              {"pattern": "**.o_proj.weight", "rule": "out_projection", "dim": 1, "heads": "num_attention_heads"},
              {"pattern": "**.{gate_proj,up_proj}.weight", "rule": "column"},
              {"pattern": "**.down_proj.weight", "rule": "row", "dim": 1}]}
            """#.utf8))
        let out = temporaryPath("replicated-embed")
        defer { removeDirectory(out) }
        try Shard.run(checkpoint: ckpt, sourcePath: fixturePath("llama-gqa"), rules: try ShardPlan.rules(for: ckpt, rulesFile: (rules, "rules.json")),
                      tp: 2, output: out, options: ShardSetWriter.Options())
        let report = try ReferenceForward.verify(shards: try ShardSet(directory: out), full: ckpt,
                                                 reference: fixturePath("llama-gqa") + "/reference.safetensors", options: NumericsOptions())
        #expect(report.passed, "\(report.worstLayer ?? "") \(report.final)")
    }

    @Test("all-gather keeps each rank's own copy of a feature several ranks hold")
    func allGatherOwnCopy() throws {
        let ctx = TPContext(weights: try CheckpointWeights(try Checkpoint(path: fixturePath("gpt2"))), gemm: GemmEngine())
        let a = Act(rows: 1, labels: [0, 1], data: [1, 2]), b = Act(rows: 1, labels: [1, 2], data: [9, 3])
        let g = try ctx.allGather([a, b], size: 3, what: "t")
        #expect(g[0].data == [1, 2, 3] && g[1].data == [1, 9, 3])
    }

    @Test("config.json at odds with the tensors' shapes throws instead of trapping")
    func configDisagreesWithShapes() throws {
        let (set, _, dir) = try shardFixture("gpt2", tp: 2)
        defer { removeDirectory(dir) }
        try editConfig(dir, ["n_embd": 32])      // c_attn has 3 × 64 outputs: past the 3 parts of width 32
        #expect(throws: ShardKitError.self) { try ReferenceForward.verify(shards: set, full: nil, reference: nil, options: NumericsOptions()) }
    }

    @Test("a reference whose shapes disagree with the pass throws instead of trapping")
    func malformedReference() throws {
        let (set, _, dir) = try shardFixture("bert", tp: 2)
        defer { removeDirectory(dir) }
        let refPath = dir + "/bad-reference.safetensors"
        // token_type_ids longer than input_ids.
        try writeReference(refPath, ids: Array(0..<7), types: Array(repeating: 0, count: 9), output: [Float](repeating: 0, count: 7 * 64))
        #expect(throws: ShardKitError.self) { try ReferenceForward.verify(shards: set, full: nil, reference: refPath, options: NumericsOptions()) }
        // config.json says hidden 32; the tensors (and so the pass's output) are 64 wide.
        try editConfig(dir, ["hidden_size": 32, "num_attention_heads": 4])
        try writeReference(refPath, ids: Array(0..<7), types: nil, output: [Float](repeating: 0, count: 7 * 32))
        #expect(throws: ShardKitError.self) { try ReferenceForward.verify(shards: set, full: nil, reference: refPath, options: NumericsOptions()) }
    }

    /// Sets (or, with nil, removes) keys of `dir`/config.json.
    func editConfig(_ dir: String, _ changes: [String: Any?]) throws {
        let path = dir + "/config.json"
        var json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        for (k, v) in changes { json[k] = v }
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
    }

    /// A minimal reference.safetensors: I64 input_ids (and token_type_ids), F32 last_hidden_state.
    func writeReference(_ path: String, ids: [Int], types: [Int]?, output: [Float]) throws {
        var header: [String] = [], data: [UInt8] = []
        func add(_ name: String, _ dtype: String, _ shape: [Int], _ bytes: [UInt8]) {
            header.append(#""\#(name)": {"dtype": "\#(dtype)", "shape": \#(shape), "data_offsets": [\#(data.count), \#(data.count + bytes.count)]}"#)
            data += bytes
        }
        func i64(_ v: [Int]) -> [UInt8] { v.map { Int64($0) }.withUnsafeBytes { Array($0) } }
        add("input_ids", "I64", [1, ids.count], i64(ids))
        if let types { add("token_type_ids", "I64", [1, types.count], i64(types)) }
        add("last_hidden_state", "F32", [1, ids.count, output.count / ids.count], output.withUnsafeBytes { Array($0) })
        var h = Array(("{" + header.joined(separator: ", ") + "}").utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        try writeBytes(withUnsafeBytes(of: UInt64(h.count).littleEndian) { Array($0) } + h + data, to: path)
    }
}
