import Foundation
import Testing
import ShardKit
@testable import ShardKitReference

/// `verify` simulates a layout: stages in sequence handing on the hidden state, TP inside a stage,
/// EP dispatch and combine, each rank from its own pieces only.
@Suite("verify with pipeline stages and expert parallelism")
struct ParallelVerifyTests {
    static let layouts: [(String, Int, Int, Int)] = [
        ("mixtral-4l", 2, 2, 1), ("mixtral-4l", 1, 3, 1), ("mixtral-4l", 2, 1, 2), ("mixtral-4l", 4, 1, 2),
        ("mixtral-4l", 2, 2, 2), ("mixtral-4l", 4, 1, 4), ("mixtral-4l", 4, 2, 2),
        ("llama-tied-3l", 2, 2, 1), ("llama-tied-3l", 1, 3, 1), ("llama-tied-3l", 4, 3, 1), ("gpt2", 2, 2, 1),
        ("bert", 2, 2, 1), ("qwen3-moe", 2, 2, 2), ("qwen2-moe", 4, 1, 4), ("deepseek-v3", 2, 2, 2),
    ]

    @Test("verify --reference passes for (T, P, E) layouts", arguments: layouts)
    func layoutPasses(fixture: String, tp: Int, pp: Int, ep: Int) throws {
        let dir = fixturePath(fixture)
        let ckpt = try Checkpoint(path: dir)
        let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
        let out = temporaryPath("\(fixture)-\(tp)\(pp)\(ep)")
        defer { removeDirectory(out) }
        try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, layout: LayoutRequest(tp: tp, pp: pp, ep: ep),
                      output: out)
        let set = try ShardSet(directory: out)
        let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: dir + "/reference.safetensors",
                                                 options: NumericsOptions())
        print(String(format: "[numerics] %-14@ (T,P,E)=(%d,%d,%d) ref(TP) rel %.2e TP-vs-full rel %.2e", fixture as NSString,
                     tp, pp, ep, report.referenceTP?.maxRelError ?? -1, report.final.maxRelError))
        #expect(report.passed)
        #expect(try #require(report.referenceTP).maxRelError <= 1e-4)
        #expect(report.pp == pp && report.ep == ep)
        let stages = try #require(report.stages)
        #expect(stages.map(\.stage) == Array(0..<pp))
        #expect(stages.map { $0.layers[1] - $0.layers[0] } == set.layout.stageLayers.map(\.count))
        // Every state is computed by the stage holding its layer: embeddings first, the output last.
        #expect(stages.first?.checkpoints.first == "embeddings")
        #expect(stages.last?.checkpoints.last == (encoderFixtures.contains(fixture) ? "last_hidden_state" : "logits"))
        for s in stages {
            for name in s.checkpoints where name.hasPrefix("layers.") {
                let layer = Int(name.dropFirst(7))!
                #expect(set.layout.stageLayers[s.stage].contains(layer), "\(name) computed by stage \(s.stage)")
            }
        }
        // Every expert was computed (the fixture's tokens reach every expert): nothing left unread.
        if fixture == "mixtral-4l" { #expect(!report.layers.contains { $0.name.hasPrefix("weight ") }) }
        #expect(try GenericLinearCheck.verify(shards: set, full: ckpt, options: NumericsOptions()).passed)
    }

    /// Every preset's fixture (the forward-pass fixtures) at two stages of TP 2: names place every
    /// tensor, whatever the architecture.
    @Test("every forward-pass fixture verifies at (T, P, E) = (2, 2, 1)", arguments: fixtureNames)
    func everyPresetAtTwoStages(fixture: String) throws {
        let dir = fixturePath(fixture)
        let ckpt = try Checkpoint(path: dir)
        let out = temporaryPath("\(fixture)-221")
        defer { removeDirectory(out) }
        try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil),
                      layout: LayoutRequest(tp: 2, pp: 2), output: out)
        let report = try ReferenceForward.verify(shards: try ShardSet(directory: out), full: ckpt,
                                                 reference: dir + "/reference.safetensors", options: NumericsOptions())
        #expect(report.passed && report.stages?.count == 2)
    }

    /// Stages and EP change who computes, not what: both layouts match the reference.
    @Test("stages and EP match the reference as closely as plain TP")
    func sameLogitsAsTP() throws {
        let dir = fixturePath("mixtral-4l")
        let ckpt = try Checkpoint(path: dir)
        let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
        var finals: [ComparisonStats] = []
        for (tp, pp, ep) in [(2, 1, 1), (2, 2, 2)] {
            let out = temporaryPath("same-\(tp)\(pp)\(ep)")
            defer { removeDirectory(out) }
            try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules,
                          layout: LayoutRequest(tp: tp, pp: pp, ep: ep), output: out)
            let report = try ReferenceForward.verify(shards: try ShardSet(directory: out), full: ckpt,
                                                     reference: dir + "/reference.safetensors", options: NumericsOptions())
            finals.append(try #require(report.referenceTP))
        }
        #expect(finals[0].maxRelError <= 1e-4 && finals[1].maxRelError <= 1e-4)
    }
}
