import Foundation
import Testing
import ShardKit
import ShardKitTestSupport

/// Quantized checkpoints through the command line: plan states each companion's unit, an impossible
/// degree is refused with the numbers, --pad-intermediate makes it possible.
@Suite("quantized checkpoints (CLI)")
struct QuantizedCLITests {
    @Test("plan names each tensor's unit; an impossible degree is refused with the numbers; --pad-intermediate pads")
    func planAndPadding() throws {
        let src = Fixtures.path("llama-gptq")
        let plan = try CLI.run(["plan", src, "--tp", "1"])
        #expect(plan.status == 0, "\(plan.stderr)")
        #expect(plan.stdout.contains("8 values per int32 (GPTQ packing)") && plan.stdout.contains("group size 32 (GPTQ)"))
        let refused = try CLI.run(["plan", src, "--tp", "2"])
        expectCLIError(refused, ["down_proj", "48 per rank", "not a multiple of group size 32 (GPTQ)"])
        let padded = try CLI.run(["plan", src, "--tp", "2", "--pad-intermediate", "--json"])
        #expect(padded.status == 0, "\(padded.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(padded.stdout.utf8)) as! [String: Any]
        let rows = report["tensors"] as! [[String: Any]]
        let down = rows.first { ($0["name"] as! String) == "model.layers.0.mlp.down_proj.qweight" }!
        let rule = down["rule"] as! [String: Any]
        #expect(rule["kind"] as? String == "units" && (rule["of"] as? [String: Any])?["kind"] as? String == "padded")
        // 96 input features padded to 128: 64 (two groups of 32) per rank.
        #expect((down["rankShapes"] as! [[Int]]).map { $0[0] } == [8, 8])
    }

    @Test("a quant_method ShardKit does not split is refused by name")
    func unknownMethod() throws {
        try withTempDir { dir in
            try copyFixture("llama-gptq", to: dir + "/src")
            let path = dir + "/src/config.json"
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
            var q = config["quantization_config"] as! [String: Any]
            q["quant_method"] = "hqq"
            config["quantization_config"] = q
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path))
            expectCLIError(try CLI.run(["shard", dir + "/src", "--tp", "1", "--out", dir + "/out"]),
                           ["quant_method \"hqq\" is not supported"])
        }
    }
}
