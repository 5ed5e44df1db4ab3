import Foundation
import Testing
@testable import ShardKit
@testable import ShardKitReference

/// Rule sets derived from transformers 5.24's tensor-parallel plans (DerivedRulesTable.swift, made by
/// scripts/derive_rules.py), on fixtures of model types with no preset (fixtures/make_archs_derived.py).
@Suite("derived rule sets")
struct DerivedRulesTests {
    static let fixtures = ["ernie4_5", "exaone4", "smollm3", "helium", "seed_oss", "apertus", "granite_swa", "olmoe",
                           "glm4_moe"]

    private func config(_ json: String) throws -> ModelConfig {
        ModelConfig(json: try JSONValue.parse(Array(json.utf8)), path: "/x/config.json")
    }

    /// Expects `body` to throw a ShardKitError of `code` whose message contains every word.
    private func expectError(_ code: ShardKitError.Code, _ words: [String], _ body: () throws -> Void,
                             sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try body()
            Issue.record("no error", sourceLocation: sourceLocation)
        } catch let e as ShardKitError {
            #expect(e.code == code, "\(e.message)", sourceLocation: sourceLocation)
            for w in words {
                #expect(e.message.contains(w), "\"\(e.message)\" lacks \"\(w)\"", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("the table covers every configuration class with a plan; every derived entry builds")
    func table() throws {
        #expect(DerivedRules.modelTypes.count + DerivedRules.refusedModelTypes.count == 164)
        #expect(DerivedRules.modelTypes.count >= 40)
        for type in DerivedRules.modelTypes {
            guard case .rules(_, let headsKey, let kvKey, let entries)? = DerivedRules.derivation(for: type) else {
                Issue.record("\(type)"); continue
            }
            #expect(entries.filter(\.required).count <= 1, "\(type): only the token embedding is required")
            for e in entries {
                #expect((try? NamePattern(e.pattern)) != nil, "\(type): \(e.pattern)")
                #expect(DerivedRules.spec(e, heads: 8, kvHeads: 2) != nil, "\(type): \(e.rule)")
                if ["heads", "kv_heads", "out_projection"].contains(e.rule) {
                    #expect(headsKey != nil && kvKey != nil, "\(type) splits heads without head count keys")
                }
            }
        }
        for type in DerivedRules.refusedModelTypes {
            guard case .refused(_, let reason)? = DerivedRules.derivation(for: type) else { continue }
            #expect(!reason.isEmpty)
        }
    }

    @Test("a preset wins over the derived set of its model type")
    func presetWins() throws {
        #expect(DerivedRules.modelTypes.contains("llama"))
        let rules = try Architectures.rules(for: try config(
            #"{"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 2}"#))
        #expect(rules.name == "preset llama")
        #expect(!rules.derived)
    }

    @Test("where a preset exists, the derived set gives every tensor of its fixture the preset's rule", arguments: [
        "llama-gqa", "mistral", "qwen2-bias", "qwen3", "granite", "olmo2", "gemma", "mixtral", "qwen3-moe",
    ])
    func agreesWithPreset(fixture: String) throws {
        let ckpt = try Checkpoint(path: fixturePath(fixture))
        let config = try #require(ckpt.config)
        let type = try #require(config.modelType)
        let preset = try Architectures.rules(for: config)
        let derived = try #require(try DerivedRules.ruleSet(for: config, modelType: type))
        let tensors = ckpt.tensors.map { (name: $0.info.name, shape: $0.info.shape) }
        let (p, d) = (try preset.assign(tensors), try derived.assign(tensors))
        for (t, (a, b)) in zip(tensors, zip(p, d)) {
            #expect(a == b, "\(fixture) \(t.name): preset \(a.summary), derived \(b.summary)")
        }
    }

    @Test("shard with the derived rules and pass the generic per-weight check", arguments: fixtures, [2, 4, 8])
    func shardAndVerify(fixture: String, tp: Int) throws {
        let (set, ckpt, dir) = try shardFixture(fixture, tp: tp)
        defer { removeDirectory(dir) }
        #expect(Architectures.named(fixture) == nil, "\(fixture) has a preset: pick another model type")
        let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
        #expect(rules.derived)
        #expect(rules.name == "derived from transformers 5.24.0 base_model_tp_plan (\(fixture))")
        #expect(set.manifest.source.rules == rules.name)
        // ShardKit's head semantics on top of the plan's colwise / rowwise.
        let tensors = set.manifest.tensors
        #expect(tensors["model.layers.0.self_attn.q_proj.weight"]?.rule == .heads(dim: 0, heads: 8))
        #expect(tensors["model.layers.0.self_attn.k_proj.weight"]?.rule == .kvHeads(dim: 0, heads: 2))
        #expect(tensors["model.layers.0.self_attn.o_proj.weight"]?.rule == .outProjection(dim: 1, heads: 8))
        #expect(tensors["model.embed_tokens.weight"]?.rule == .vocab(dim: 0, multiple: 1))
        #expect(tensors["model.norm.weight"]?.rule == .replicated)
        var run = VerifyRun(shards: set, source: ckpt)
        run.options = NumericsOptions()
        let report = try run.run()
        #expect(report.passed, "\(report.checks.map { "\($0.name): \($0.detail) \($0.failures)" })")
        #expect(report.numerics?.mode == "generic linear check")
        let numerics = try #require(report.numerics?.report)
        print("[numerics] derived \(fixture) TP \(tp): generic check of \(numerics.layers.count) weights, "
              + "max rel \(String(format: "%.2e", numerics.final.maxRelError)) (worst \(numerics.worstLayer ?? "-"))")
    }

    @Test("special cases: biases split with their weights, attention sinks by heads, tied head absent")
    func specialCases() throws {
        let (ernie, _, d1) = try shardFixture("ernie4_5", tp: 2)
        defer { removeDirectory(d1) }
        #expect(ernie.manifest.tensors["model.layers.0.self_attn.k_proj.bias"]?.rule == .kvHeads(dim: 0, heads: 2))
        #expect(ernie.manifest.tensors["model.layers.0.self_attn.o_proj.bias"]?.rule == .replicated)
        #expect(ernie.manifest.tensors["model.layers.0.mlp.up_proj.bias"]?.rule == .column(dim: 0))
        let (swa, _, d2) = try shardFixture("granite_swa", tp: 4)
        defer { removeDirectory(d2) }
        #expect(swa.manifest.tensors["model.layers.1.self_attn.sinks"]?.rule == .heads(dim: 0, heads: 8))
        #expect(swa.manifest.tensors["model.layers.1.self_attn.sinks"]?.pieces[3].shape == [2])
        let (helium, _, d3) = try shardFixture("helium", tp: 2)
        defer { removeDirectory(d3) }
        #expect(helium.manifest.tensors["lm_head.weight"] == nil)
        #expect(helium.manifest.tensors["model.layers.0.mlp.down_proj.bias"]?.rule == .replicated)
    }

    @Test("MoE: experts saved per expert split like a dense MLP on every rank, routers whole, shared experts split")
    func experts() throws {
        let (glm, _, dir) = try shardFixture("glm4_moe", tp: 4)
        defer { removeDirectory(dir) }
        let t = glm.manifest.tensors
        for e in 0..<4 {
            #expect(t["model.layers.1.mlp.experts.\(e).gate_proj.weight"]?.rule == .column(dim: 0))
            #expect(t["model.layers.1.mlp.experts.\(e).up_proj.weight"]?.rule == .column(dim: 0))
            #expect(t["model.layers.1.mlp.experts.\(e).down_proj.weight"]?.rule == .row(dim: 1))
            #expect(t["model.layers.1.mlp.experts.\(e).down_proj.weight"]?.pieces[3].shape == [64, 8])
        }
        #expect(t["model.layers.1.mlp.gate.weight"]?.rule == .replicated)
        #expect(t["model.layers.1.mlp.gate.e_score_correction_bias"]?.rule == .replicated)
        #expect(t["model.layers.1.mlp.shared_experts.gate_proj.weight"]?.rule == .column(dim: 0))
        #expect(t["model.layers.1.mlp.shared_experts.down_proj.weight"]?.rule == .row(dim: 1))
        #expect(t["model.layers.0.mlp.gate_proj.weight"]?.rule == .column(dim: 0))  // the dense layer
    }

    @Test("KV heads replicated round-robin (rank r holds head r % KV) instead of in blocks fail the generic check",
          arguments: fixtures)
    func roundRobinKVFails(fixture: String) throws {
        let (set, _, dir) = try shardFixture(fixture, tp: 4)
        defer { removeDirectory(dir) }
        let ckpt = try Checkpoint(path: fixturePath(fixture))
        let name = "model.layers.1.self_attn.v_proj.weight"
        // 2 KV heads at TP 4: ranks 0, 1 hold head 0 and ranks 2, 3 head 1. Swap ranks 1 and 2.
        var manifest = set.manifest
        let one = try pieceBytes(set, name: name, rank: 1), two = try pieceBytes(set, name: name, rank: 2)
        #expect(one != two)
        try overwritePiece(set, &manifest, name: name, rank: 1, with: two)
        try overwritePiece(set, &manifest, name: name, rank: 2, with: one)
        try Data(manifest.encoded()).write(to: URL(fileURLWithPath: dir + "/" + Manifest.fileName))
        let report = try GenericLinearCheck.verify(shards: try ShardSet(directory: dir), full: ckpt,
                                                   options: NumericsOptions())
        #expect(!report.passed)
        #expect(report.worstLayer == name)
    }

    @Test("a rules file extends a derived model type as it extends a preset")
    func extendsDerived() throws {
        let ckpt = try Checkpoint(path: fixturePath("exaone4"))
        let json = #"{"extends": "exaone4", "rules": [{"pattern": "lm_head.weight", "rule": "replicated"}]}"#
        let rules = try RulesFile.ruleSet(from: try JSONValue.parse(Array(json.utf8)), origin: "rules.json",
                                          config: ckpt.config)
        #expect(rules.name == "rules.json + derived from transformers 5.24.0 base_model_tp_plan (exaone4)")
        let tensors = ckpt.tensors.map { (name: $0.info.name, shape: $0.info.shape) }
        let assigned = Dictionary(uniqueKeysWithValues: zip(tensors.map(\.name), try rules.assign(tensors)))
        #expect(assigned["lm_head.weight"] == .replicated)
        #expect(assigned["model.layers.1.self_attn.k_proj.weight"] == .kvHeads(dim: 0, heads: 2))
    }

    @Test("a refused plan gives the reason", arguments: [
        ("qwen3_next", ["model.layers.*.linear_attn.conv1d.weight [8192, 1, 4] is not in the plan"]),
        ("longcat_flash", ["plan kind moe_identity_expert", "has no ShardKit rule"]),
        ("aria_text", ["plan kind packed_rowwise", "packed along its input features"]),
        ("hunyuan_v1_dense", ["model.layers.*.self_attn.q_proj.weight", "is not in the plan",
                              "the plan names only"]),
        ("codegen", ["transformer.h.*.attn.qkv_proj.weight", "head layout is not known"]),
    ])
    func refused(type: String, words: [String]) throws {
        expectError(.invalidConfig, ["model_type \"\(type)\" has no preset", "presets: llama",
                                     "base_model_tp_plan is refused"] + words) {
            _ = try Architectures.rules(for: try config(
                #"{"model_type": "\#(type)", "num_attention_heads": 8, "num_key_value_heads": 2}"#))
        }
    }

    @Test("an unknown model_type lists the presets and says there is no derived rule set")
    func unknown() throws {
        expectError(.invalidConfig, ["unknown model_type \"t5x\"", "presets: llama", "no derived rule set either",
                                     "no base_model_tp_plan"]) {
            _ = try Architectures.rules(for: try config(#"{"model_type": "t5x"}"#))
        }
    }

    @Test("a tensor no derived rule matches names the nearest rules and its shape")
    func unmatchedTensor() throws {
        let rules = try ShardPlan.rules(for: try Checkpoint(path: fixturePath("helium")), rulesFile: nil)
        expectError(.unmatchedRule, ["model.layers.0.mlp.gate_projection.weight", "shape [96, 64]",
                                     "nearest patterns", "\"model.layers.*.mlp.gate_proj.weight\"",
                                     "derived from transformers"]) {
            _ = try rules.assign([("model.layers.0.mlp.gate_projection.weight", [96, 64])])
        }
    }

    @Test("head counts set per layer are refused")
    func perLayerHeads() throws {
        expectError(.invalidConfig, ["per_layer_config sets num_key_value_heads for layer 1", "helium"]) {
            _ = try Architectures.rules(for: try config(#"{"model_type": "helium", "num_attention_heads": 8, "#
                + #""num_key_value_heads": 2, "per_layer_config": {"1": {"num_key_value_heads": 1}}}"#))
        }
    }

    @Test("missing head count keys are an error, not a default")
    func missingHeads() throws {
        expectError(.invalidConfig, ["num_key_value_heads", "helium"]) {
            _ = try Architectures.rules(for: try config(#"{"model_type": "helium", "num_attention_heads": 8}"#))
        }
    }
}
