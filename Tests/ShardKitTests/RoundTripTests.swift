import Foundation
import Testing
import ShardKit

@Suite("Round trips: shard, then reassemble through the manifest")
struct RoundTripTests {
    @Test("every fixture at every G its heads allow reassembles bit for bit", arguments: allowedPairs)
    func roundTrip(_ c: FixtureTP) throws {
        let source = try sourceTensors(c.fixture)
        try withTempDir { tmp in
            let out = tmp + "/out"
            let manifest = try shardFixture(c.fixture, tp: c.tp, to: out)
            #expect(manifest.tp == c.tp)
            #expect(Set(manifest.order) == Set(source.keys))
            #expect(exists(out + "/manifest.json"))
            #expect(!listFiles(out).contains { $0.hasSuffix(".tmp") })

            let rebuilt = try reassembleAll(out)
            #expect(rebuilt.count == source.count)
            for (name, t) in source {
                #expect(same(rebuilt[name], t.bytes), "tensor \(name) differs after reassembly at G=\(c.tp)")
                #expect(manifest.tensors[name]?.shape == t.shape)
                #expect(manifest.tensors[name]?.dtype.rawValue == t.dtype)
            }

            // Every rank's pieces together hold exactly the bytes the plan promises.
            let set = try ShardSet(directory: out)
            for r in 0..<c.tp {
                let rank = try set.rank(r)
                for name in manifest.order {
                    let view = try rank.tensor(name)
                    #expect(view.shape == manifest.tensors[name]!.pieces[r].shape)
                    #expect(view.bytes.count == view.shape.reduce(RawTensor.size(of: view.dtype.rawValue), *))
                }
            }

            // `shardkit verify --source` style checks pass.
            let integrity = Verify.integrity(set)
            #expect(integrity.status == .pass, "\(integrity.failures)")
            let recon = Verify.reconstruction(set, source: try loadCheckpoint(c.fixture))
            #expect(recon.status == .pass, "\(recon.failures)")
        }
    }

    @Test("the planner refuses every G the heads do not allow", arguments: allFixtures.filter { !$0.refused.isEmpty })
    func refusedDegrees(_ f: FixtureCase) throws {
        let ckpt = try loadCheckpoint(f.name)
        let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
        for g in f.refused {
            try withTempDir { tmp in
                let out = tmp + "/out"
                let error = caught { try Shard.run(checkpoint: ckpt, sourcePath: f.name, rules: rules, tp: g, output: out) }
                expectShardKitError(error, .impossibleSplit, ["\(f.heads) heads", "\(g) ranks"])
                #expect(!exists(out), "nothing may be written for a refused split")
            }
        }
    }

    @Test("qwen2-bias at G=8 is refused naming the tensor and the numbers")
    func qwenAtEight() throws {
        let ckpt = try loadCheckpoint("qwen2-bias")
        let error = caught { _ = try ShardPlan(checkpoint: ckpt, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: 8) }
        // The first head-split tensor in file order is layer 0's k_proj.bias (KV = 2 < 8 is allowed
        // by replication), so the refusal comes from a Q-head or out-projection tensor of layer 0.
        expectShardKitError(error, .impossibleSplit, ["model.layers.0.self_attn.", "4 heads", "4 % 8 = 4", "8 ranks"])
    }

    @Test("verification detects a flipped byte and a wrong source")
    func verifyDetectsDamage() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let m = try shardFixture("llama-gqa", tp: 2, to: out)
            let file = out + "/" + m.tensors["model.layers.1.mlp.up_proj.weight"]!.pieces[1].file
            let raw = try readRawSafetensors(file)
            var bytes = try readBytes(file)
            bytes[raw.offsets["model.layers.1.mlp.up_proj.weight"]! + 5] ^= 0x40
            try writeBytes(bytes, to: file)
            let set = try ShardSet(directory: out)
            let integrity = Verify.integrity(set)
            #expect(integrity.status == .fail)
            #expect(integrity.failures.contains { $0.contains("model.layers.1.mlp.up_proj.weight") && $0.contains("rank-1/model.safetensors") })
            let recon = Verify.reconstruction(set, source: try loadCheckpoint("llama-gqa"))
            #expect(recon.status == .fail)
            #expect(recon.failures.contains { $0.contains("model.layers.1.mlp.up_proj.weight") && $0.contains("rank 1") })
            // A different model with the same tensor names is not the source.
            let mistral = Verify.reconstruction(set, source: try loadCheckpoint("mistral"))
            #expect(mistral.status == .fail)
        }
    }

    @Test("a small copy-engine budget (windowed rows) writes the same bytes", arguments: ["gpt2", "qwen2-bias", "phi3"])
    func smallBudget(_ fixture: String) throws {
        try withTempDir { tmp in
            var small = ShardSetWriter.Options()
            small.bufferBudget = 4096
            try shardFixture(fixture, tp: 2, to: tmp + "/small", options: small)
            try shardFixture(fixture, tp: 2, to: tmp + "/big")
            let files = listFiles(tmp + "/big")
            #expect(listFiles(tmp + "/small") == files)
            for f in files { #expect(same(try readBytes(tmp + "/small/" + f), try readBytes(tmp + "/big/" + f)), "\(f)") }
            let rebuilt = try reassembleAll(tmp + "/small", budget: 4096)
            for (name, t) in try sourceTensors(fixture) { #expect(same(rebuilt[name], t.bytes), "\(name)") }
        }
    }

    @Test("RankSlicer (from the checkpoint, or from a shard set of another degree) gives the bytes shard writes")
    func slicerMatchesShard() throws {
        try withTempDir { tmp in
            let m = try shardFixture("phi3", tp: 4, to: tmp + "/out")
            try shardFixture("phi3", tp: 2, to: tmp + "/two")
            let fromCheckpoint = try RankSlicer(checkpoint: try loadCheckpoint("phi3"), tp: 4)
            let fromShards = try RankSlicer(shards: try ShardSet(directory: tmp + "/two"), tp: 4)
            for name in m.order {
                for r in 0..<4 {
                    let written = try piece(tmp + "/out", m, name, rank: r)
                    for slicer in [fromCheckpoint, fromShards] {
                        let p = try slicer.piece(name, rank: r)
                        #expect(p.shape == written.shape && same(p.bytes, written.bytes), "\(name) rank \(r)")
                    }
                }
            }
        }
    }
}
