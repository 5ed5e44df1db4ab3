import Foundation
import Testing
import ShardKit

/// `plan`, `shard` and `verify` on a model type with no preset: the rules derived from transformers'
/// tensor-parallel plan (docs/rules.md, "Derived rule sets").
@Suite("derived rule sets, CLI")
struct DerivedCLITests {
    @Test("plan says the rules are derived; verify runs the generic per-weight check and passes")
    func planShardVerify() throws {
        let plan = try CLI.run(["plan", Fixtures.path("seed_oss"), "--tp", "4"])
        #expect(plan.status == 0, "\(plan)")
        #expect(plan.stdout.contains("(derived from transformers 5.24.0 base_model_tp_plan (seed_oss))"))
        #expect(plan.stdout.contains("the rules are derived (no preset for this model type)"))
        #expect(plan.stdout.contains("kv_heads(dim 0, 2 heads)"))
        let json = try CLI.run(["plan", Fixtures.path("seed_oss"), "--tp", "4", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(report?["derived"] as? Bool == true)
        try withTempDir { dir in
            let out = dir + "/tp4"
            let s = try CLI.run(["shard", Fixtures.path("seed_oss"), "--tp", "4", "--out", out])
            #expect(s.status == 0, "\(s)")
            let v = try CLI.run(["verify", out, "--source", Fixtures.path("seed_oss")])
            #expect(v.status == 0, "\(v)")
            #expect(v.stdout.contains("generic linear check"))
            #expect(v.stdout.hasSuffix("PASSED\n"))
        }
    }

    @Test("a rules file for a derived model type may not cut the heads the derived rules keep whole")
    func headCutRefused() throws {
        try withTempDir { dir in
            let rule = #"{"pattern": "model.layers.*.self_attn.k_proj.weight", "rule": "column"}"#
            try #"{"extends": "auto", "rules": [\#(rule)]}"#
                .write(toFile: dir + "/rules.json", atomically: true, encoding: .utf8)
            let r = try CLI.run(["plan", Fixtures.path("helium"), "--tp", "4", "--rules", dir + "/rules.json"])
            expectCLIError(r, ["cuts a head",
                               "derived from transformers 5.24.0 base_model_tp_plan (helium) splits it as kv_heads"])
        }
    }
}
