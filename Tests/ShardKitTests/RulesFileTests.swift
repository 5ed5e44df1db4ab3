import Foundation
import Testing
@testable import ShardKit

/// Llama's layout spelled out as a rules file (no preset, no `extends`); heads given both as numbers
/// and as config.json keys.
let llamaRulesJSON = #"""
{
  "description": "Llama, spelled out",
  "rules": [
    {"pattern": "model.embed_tokens.weight", "rule": "vocab", "dim": 0},
    {"pattern": "lm_head.weight", "rule": "vocab"},
    {"pattern": "model.norm.weight", "rule": "replicated"},
    {"pattern": "model.layers.*.{input_layernorm,post_attention_layernorm}.weight", "rule": "replicated"},
    {"pattern": "model.layers.*.self_attn.q_proj.weight", "rule": "heads", "dim": 0, "heads": "num_attention_heads"},
    {"pattern": "model.layers.*.self_attn.{k_proj,v_proj}.weight", "rule": "kv_heads", "heads": "num_key_value_heads"},
    {"pattern": "model.layers.*.self_attn.o_proj.weight", "rule": "out_projection", "dim": 1, "heads": 8},
    {"pattern": "model.layers.*.mlp.{gate_proj,up_proj}.weight", "rule": "column", "dim": 0},
    {"pattern": "model.layers.**.down_proj.weight", "rule": "row", "dim": 1}
  ]
}
"""#

func rulesFromJSON(_ text: String, config: ModelConfig?, origin: String = "rules.json") throws -> RuleSet {
    try RulesFile.ruleSet(from: try JSONValue.parse(Array(text.utf8)), origin: origin, config: config)
}

@Suite("Rules files")
struct RulesFileTests {
    @Test("a JSON rules file spelling out Llama shards llama-gqa into the preset's bytes", arguments: [1, 2, 4, 8])
    func llamaByHand(_ g: Int) throws {
        try withTempDir { tmp in
            let ckpt = try loadCheckpoint("llama-gqa")
            let rules = try rulesFromJSON(llamaRulesJSON, config: ckpt.config)
            #expect(rules.entries.allSatisfy { $0.required })
            try Shard.run(checkpoint: ckpt, sourcePath: "llama-gqa", rules: rules, tp: g, output: tmp + "/rules")
            try shardFixture("llama-gqa", tp: g, to: tmp + "/preset")
            try expectSameFiles(tmp + "/rules", tmp + "/preset")
            #expect(try readManifest(tmp + "/rules").source.rules == "rules.json")
            #expect(try readManifest(tmp + "/preset").source.rules == "preset llama")
        }
    }

    @Test("extends: the file's rules come first and override the preset")
    func extendsOverrides() throws {
        try withTempDir { tmp in
            let ckpt = try loadCheckpoint("llama-gqa")
            let rules = try rulesFromJSON(#"{"extends": "llama", "rules": [{"pattern": "lm_head.weight", "rule": "replicated"}]}"#,
                                          config: ckpt.config)
            let m = try Shard.run(checkpoint: ckpt, sourcePath: "x", rules: rules, tp: 2, output: tmp + "/out")
            #expect(m.tensors["lm_head.weight"]!.rule == .replicated)
            #expect(m.tensors["model.embed_tokens.weight"]!.rule == .vocab(dim: 0))
            #expect(same(try reassembleAll(tmp + "/out")["lm_head.weight"], try sourceTensors("llama-gqa")["lm_head.weight"]!.bytes))
        }
    }

    /// Shards `fixture` with `rules` (JSON text), expecting a refusal and no output directory.
    func refused(_ fixture: String, _ rules: String, _ code: ShardKitError.Code, _ words: [String],
                 sourceLocation: SourceLocation = #_sourceLocation) throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let ckpt = try loadCheckpoint(fixture)
            let error = caught {
                let set = try rulesFromJSON(rules, config: ckpt.config)
                try Shard.run(checkpoint: ckpt, sourcePath: fixture, rules: set, tp: 2, output: out)
            }
            expectShardKitError(error, code, words, sourceLocation: sourceLocation)
            #expect(!exists(out), "nothing may be written", sourceLocation: sourceLocation)
        }
    }

    @Test("a pattern that matches nothing")
    func patternMatchesNothing() throws {
        try refused("llama-gqa", #"{"extends": "llama", "rules": [{"pattern": "model.layers.*.attn.qkv.weight", "rule": "column"}]}"#,
                    .unmatchedRule, ["rules.json entry 1", "model.layers.*.attn.qkv.weight", "matches no tensor"])
    }

    @Test("a tensor matched by no rule")
    func tensorMatchedByNoRule() throws {
        let withoutNorm = llamaRulesJSON.replacingOccurrences(
            of: #"{"pattern": "model.norm.weight", "rule": "replicated"},"#, with: "")
        try refused("llama-gqa", withoutNorm, .unmatchedRule, ["model.norm.weight", "matches no rule"])
    }

    @Test("fused parts whose sizes do not add up")
    func fusedSizes() throws {
        let rules = #"""
        {"extends": "phi3", "rules": [{"pattern": "model.layers.*.self_attn.qkv_proj.weight", "rule": "fused", "parts": [
            {"rule": "heads", "heads": 8, "size": 64}, {"rule": "kv_heads", "heads": 2, "size": 16},
            {"rule": "kv_heads", "heads": 2, "size": 8}]}]}
        """#
        try refused("phi3", rules, .impossibleSplit, ["qkv_proj.weight", "[64, 16, 8]", "add up to 88", "96"])
        // Sizes derived from head counts that cannot divide the dimension.
        let uneven = #"""
        {"extends": "phi3", "rules": [{"pattern": "model.layers.*.mlp.gate_up_proj.weight", "rule": "fused", "parts": [
            {"rule": "heads", "heads": 5}, {"rule": "heads", "heads": 2}]}]}
        """#
        try refused("phi3", uneven, .impossibleSplit, ["gate_up_proj.weight", "192"])
    }

    @Test("a user rule that cuts a head of a Q/K/V tensor the preset splits by heads is refused at plan time")
    func headCuttingRefused() throws {
        let ckpt = try loadCheckpoint("llama-gqa")  // 8 heads, 2 KV heads, head_dim 8: k_proj is [16, 64]
        let kColumn = #"{"extends": "llama", "rules": [{"pattern": "model.layers.*.self_attn.k_proj.weight", "rule": "column"}]}"#
        let rules = try rulesFromJSON(kColumn, config: ckpt.config)
        // TP 4: 4 rows per rank, half a KV head each.
        let error = caught { _ = try ShardPlan(checkpoint: ckpt, rules: rules, tp: 4) }
        expectShardKitError(error, .impossibleSplit, ["k_proj.weight", "column(dim 0)", "TP 4", "cuts a head",
                                                     "8-wide head", "kv_heads"])
        // TP 2: one whole KV head per rank, the same pieces as the preset's.
        let plan = try ShardPlan(checkpoint: ckpt, rules: rules, tp: 2)
        let preset = try ShardPlan(checkpoint: ckpt, rules: try Architectures.rules(for: ckpt.config!), tp: 2)
        let name = "model.layers.0.self_attn.k_proj.weight"
        #expect(plan.tensor(named: name)?.layouts == preset.tensor(named: name)?.layouts)
        // A rules file without extends is guarded the same way.
        let byHand = llamaRulesJSON.replacingOccurrences(
            of: #""rule": "kv_heads", "heads": "num_key_value_heads"}"#, with: #""rule": "column"}"#)
        #expect(byHand != llamaRulesJSON)
        let v = caught { _ = try ShardPlan(checkpoint: ckpt, rules: try rulesFromJSON(byHand, config: ckpt.config), tp: 4) }
        expectShardKitError(v, .impossibleSplit, ["_proj.weight", "cuts a head"])
        // q_proj by column at TP 4 is two whole heads per rank: allowed.
        let qColumn = #"{"extends": "llama", "rules": [{"pattern": "model.layers.*.self_attn.q_proj.weight", "rule": "column"}]}"#
        _ = try ShardPlan(checkpoint: ckpt, rules: try rulesFromJSON(qColumn, config: ckpt.config), tp: 4)
    }

    @Test("a model type with no preset and no head count (T5) is told there is no preset, not that a head count is missing")
    func unknownTypeBeforeHeads() throws {
        let config = ModelConfig(json: try JSONValue.parse(Array(#"{"model_type": "t5", "d_model": 64}"#.utf8)))
        expectShardKitError(caught { _ = try Architectures.rules(for: config) }, .invalidConfig,
                            ["unknown model_type \"t5\"", "presets: llama"])
    }

    /// Hub checkpoints of BERT and RoBERTa are usually the pretraining models, with MLM (and NSP) heads.
    @Test("BERT and RoBERTa presets cover the pretraining heads: decoder and its bias by vocabulary, the rest whole")
    func encoderPretrainingHeads() throws {
        let heads: [(String, [String], [String])] = [
            ("roberta", ["lm_head.decoder.weight", "lm_head.decoder.bias", "lm_head.bias"],
             ["lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight", "lm_head.layer_norm.bias"]),
            ("bert", ["cls.predictions.decoder.weight", "cls.predictions.bias"],
             ["cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.bias",
              "cls.seq_relationship.weight", "cls.seq_relationship.bias"]),
        ]
        for (type, vocab, whole) in heads {
            let json = #"{"model_type": "\#(type)", "num_attention_heads": 8}"#
            let rules = try Architectures.rules(for: ModelConfig(json: try JSONValue.parse(Array(json.utf8))))
            func kind(_ name: String) throws -> RuleKind? {
                try rules.entries.first { $0.pattern.matches(name) }?.rule.resolve(shape: [250, 64], tensor: name).kind
            }
            for name in vocab { #expect(try kind(name) == .vocab, "\(type) \(name)") }
            for name in whole { #expect(try kind(name) == .replicated, "\(type) \(name)") }
        }
    }

    @Test("a tensor that matches no rule is named with its shape and the nearest patterns")
    func nearestPatterns() throws {
        let ckpt = try loadCheckpoint("llama-gqa")
        let rules = llamaRulesJSON.replacingOccurrences(
            of: #"{"pattern": "model.layers.*.self_attn.o_proj.weight", "rule": "out_projection", "dim": 1, "heads": 8},"#,
            with: "")
        let error = caught { _ = try ShardPlan(checkpoint: ckpt, rules: try rulesFromJSON(rules, config: ckpt.config), tp: 2) }
        expectShardKitError(error, .unmatchedRule, ["model.layers.0.self_attn.o_proj.weight", "[64, 64]", "nearest patterns",
                                                    "model.layers.*.self_attn.q_proj.weight"])
        #expect(RuleSet.editDistance(Array("kitten".utf8), Array("sitting".utf8)) == 3)
    }

    @Test("an unknown rule kind")
    func unknownKind() throws {
        try refused("llama-gqa", #"{"extends": "llama", "rules": [{"pattern": "lm_head.weight", "rule": "diagonal"}]}"#,
                    .invalidRules, ["rules.json", "entry 1", "unknown rule \"diagonal\"", "column"])
    }

    @Test("other malformed rules files name the entry and the problem")
    func otherMistakes() throws {
        let config = try loadCheckpoint("llama-gqa").config
        let cases: [(String, [String])] = [
            (#"{"rules": []}"#, ["non-empty list"]),
            (#"{"rulez": [{"pattern": "a", "rule": "column"}]}"#, ["unknown key \"rulez\""]),
            (#"{"rules": [{"pattern": "a", "rule": "heads"}]}"#, ["entry 1", "needs \"heads\""]),
            (#"{"rules": [{"pattern": "a", "rule": "column", "colour": 1}]}"#, ["entry 1", "unknown key \"colour\""]),
            (#"{"rules": [{"pattern": "a", "rule": "heads", "heads": "num_wizards"}]}"#, ["config.json has no integer \"num_wizards\""]),
            (#"{"rules": [{"pattern": "a{b", "rule": "column"}]}"#, ["entry 1", "unclosed"]),
            (#"{"rules": [{"pattern": "a", "rule": "column", "parts": []}]}"#, ["only applies to fused"]),
            (#"{"rules": [{"pattern": "a", "rule": "fused", "parts": [{"rule": "diagonal"}]}]}"#, ["part 1", "unknown part rule"]),
            (#"{"extends": "llamalike", "rules": [{"pattern": "a", "rule": "column"}]}"#, ["unknown preset \"llamalike\""]),
        ]
        for (text, words) in cases {
            expectShardKitError(caught { _ = try rulesFromJSON(text, config: config) }, .invalidRules, ["rules.json"] + words)
        }
    }
}
