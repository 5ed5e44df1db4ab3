import Foundation
import Testing
import ShardKit

/// A manifest with its provenance (`tool`, `source`) blanked, for comparing two runs.
func withoutProvenance(_ m: Manifest) -> Manifest {
    var m = m
    m.tool.name = ""; m.tool.version = ""; m.tool.operation = ""
    m.source.path = ""; m.source.files = []; m.source.modelType = nil; m.source.rules = ""
    return m
}

/// Every file of `b` has the same bytes in `a` and the file lists agree (manifest.json compared apart).
func expectSameFiles(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let fa = listFiles(a).filter { $0 != "manifest.json" }
    let fb = listFiles(b).filter { $0 != "manifest.json" }
    #expect(fa == fb, "file lists differ: \(fa) vs \(fb)", sourceLocation: sourceLocation)
    for f in Set(fa).intersection(fb).sorted() {
        let equal = same(try readBytes(a + "/" + f), try readBytes(b + "/" + f))
        #expect(equal, "\(f) differs", sourceLocation: sourceLocation)
    }
    #expect(withoutProvenance(try readManifest(a)) == withoutProvenance(try readManifest(b)), "manifests differ",
            sourceLocation: sourceLocation)
}

@Suite("Reshard")
struct ReshardTests {
    @Test("reshard(shard(src, G), M) == shard(src, M) for every (G, M) the heads allow", arguments: allFixtures)
    func matrix(_ f: FixtureCase) throws {
        let source = try sourceTensors(f.name)
        try withTempDir { tmp in
            for g in f.allowed { try shardFixture(f.name, tp: g, to: tmp + "/shard-\(g)") }
            for g in f.allowed {
                let input = try ShardSet(directory: tmp + "/shard-\(g)")
                for m in f.allowed {
                    let out = tmp + "/reshard-\(g)-\(m)"
                    let manifest = try Reshard.run(input: input, tp: m, output: out)
                    #expect(manifest.tool.operation == "reshard")
                    #expect(manifest.tp == m)
                    try expectSameFiles(out, tmp + "/shard-\(m)")
                    if m == 1 {
                        // An ordinary checkpoint: model.safetensors at the top, no rank directories.
                        #expect(exists(out + "/model.safetensors"))
                        #expect(!listFiles(out).contains { $0.hasPrefix("rank-") })
                        let ckpt = try Checkpoint(path: out)
                        #expect(ckpt.tensors.count == source.count)
                        #expect(ckpt.config?.modelType != nil)
                        let back = try readCheckpointTensors(out)
                        #expect(same(back, source), "M=1 from G=\(g) is not the source")
                    }
                    try FileManager.default.removeItem(atPath: out)
                }
            }
            // Refused degrees are refused by reshard too, before anything is written.
            for m in f.refused {
                let out = tmp + "/refused-\(m)"
                let error = caught { try Reshard.run(input: try ShardSet(directory: tmp + "/shard-1"), tp: m, output: out) }
                expectShardKitError(error, .impossibleSplit, ["\(m) ranks"])
                #expect(!exists(out))
            }
        }
    }

    @Test("a corrupted input piece makes reshard throw checksumMismatch naming file and tensor; no output left")
    func corruptedInput() throws {
        try withTempDir { tmp in
            let input = tmp + "/in"
            let m = try shardFixture("llama-gqa", tp: 2, to: input)
            let name = "model.layers.1.self_attn.q_proj.weight"
            let file = input + "/" + m.tensors[name]!.pieces[1].file
            #expect(file.hasSuffix("rank-1/model.safetensors"))
            let raw = try readRawSafetensors(file)
            var bytes = try readBytes(file)
            bytes[raw.offsets[name]! + 1000] ^= 0x01
            try writeBytes(bytes, to: file)

            for tp in [1, 4] {
                let out = tmp + "/out-\(tp)"
                let error = caught { try Reshard.run(input: try ShardSet(directory: input), tp: tp, output: out) }
                expectShardKitError(error, .checksumMismatch, [name, "rank-1/model.safetensors", "crc32c"])
                #expect(!exists(out), "reshard must leave no output directory behind")
            }
        }
    }

    @Test("reshard refuses an existing output without force, and a non-ShardKit directory even with force")
    func reshardOutputExists() throws {
        try withTempDir { tmp in
            try shardFixture("gemma", tp: 2, to: tmp + "/in")
            let input = try ShardSet(directory: tmp + "/in")
            try FileManager.default.createDirectory(atPath: tmp + "/mine", withIntermediateDirectories: true)
            try writeBytes(Array("precious".utf8), to: tmp + "/mine/notes.txt")
            var force = ShardSetWriter.Options()
            force.force = true
            expectShardKitError(caught { try Reshard.run(input: input, tp: 4, output: tmp + "/mine") }, .outputExists, ["--force"])
            expectShardKitError(caught { try Reshard.run(input: input, tp: 4, output: tmp + "/mine", options: force) },
                                .outputExists, ["not a ShardKit output directory"])
            #expect(try readBytes(tmp + "/mine/notes.txt") == Array("precious".utf8))
            // Replacing an earlier ShardKit output with force works.
            try Reshard.run(input: input, tp: 4, output: tmp + "/re")
            try Reshard.run(input: input, tp: 1, output: tmp + "/re", options: force)
            #expect(try readManifest(tmp + "/re").tp == 1)
            #expect(!exists(tmp + "/re/rank-0"))
        }
    }

    @Test("--ranks partial reshard + finalize gives the full run's bytes and manifest")
    func partialReshard() throws {
        try withTempDir { tmp in
            try shardFixture("phi3", tp: 2, to: tmp + "/in")
            let input = try ShardSet(directory: tmp + "/in")
            try Reshard.run(input: input, tp: 4, output: tmp + "/full")
            let parts = tmp + "/parts"
            for subset in [[3], [0, 1], [2]] {
                var o = ShardSetWriter.Options()
                o.ranks = subset
                try Reshard.run(input: input, tp: 4, output: parts, options: o)
                #expect(!exists(parts + "/manifest.json"), "a partial run writes no manifest")
            }
            expectShardKitError(caught { _ = try ShardSet(directory: parts) }, .invalidManifest, ["no manifest.json", "--finalize"])
            let m = try Reshard.finalize(directory: parts)
            #expect(m.tp == 4)
            #expect(!listFiles(parts).contains { $0.hasSuffix("part.json") })
            try expectSameFiles(parts, tmp + "/full")
            #expect(try readManifest(parts).tool == readManifest(tmp + "/full").tool)
            let set = try ShardSet(directory: parts)
            #expect(Verify.integrity(set).status == .pass)
            #expect(Verify.reconstruction(set, source: try loadCheckpoint("phi3")).status == .pass)
            // Finalizing twice is refused.
            expectShardKitError(caught { try Reshard.finalize(directory: parts) }, .outputExists, ["manifest.json"])
        }
    }

    @Test("--ranks partial shard + finalize equals a full shard")
    func partialShard() throws {
        try withTempDir { tmp in
            try shardFixture("qwen2-bias", tp: 4, to: tmp + "/full")
            for subset in [[2, 3], [0], [1]] {
                var o = ShardSetWriter.Options()
                o.ranks = subset
                try shardFixture("qwen2-bias", tp: 4, to: tmp + "/parts", options: o)
            }
            try Reshard.finalize(directory: tmp + "/parts")
            try expectSameFiles(tmp + "/parts", tmp + "/full")
        }
    }

    @Test("finalize refuses while a rank part is missing")
    func finalizeMissingRank() throws {
        try withTempDir { tmp in
            let parts = tmp + "/parts"
            var o = ShardSetWriter.Options()
            o.ranks = [0, 1, 3]
            try shardFixture("llama-gqa", tp: 4, to: parts, options: o)
            expectShardKitError(caught { try Reshard.finalize(directory: parts) }, .invalidManifest, ["rank 2", "missing"])
            #expect(!exists(parts + "/manifest.json"))
            // The parts are kept, so the missing rank can still be written and finalized.
            o.ranks = [2]
            try shardFixture("llama-gqa", tp: 4, to: parts, options: o)
            try Reshard.finalize(directory: parts)
            try shardFixture("llama-gqa", tp: 4, to: tmp + "/full")
            try expectSameFiles(parts, tmp + "/full")
        }
    }
}

@Suite("partial runs (--ranks) sharing a new directory")
struct ConcurrentPartialRunTests {
    @Test("a failing partial run into a new directory removes only what it created")
    func failingRunKeepsOthersWork() throws {
        let ckpt = try loadCheckpoint("llama-gqa")
        let plan = try ShardPlan(checkpoint: ckpt, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: 2)
        try withTempDir { tmp in
            let out = tmp + "/out"
            var options = ShardSetWriter.Options()
            options.ranks = [0]
            let writer = ShardSetWriter(plan: plan, directory: out, options: options)
            let source = Manifest.Source(path: "x", files: [], modelType: nil, rules: "llama")
            let other = out + "/rank-1/model.safetensors"
            let error = caught {
                let tool = Manifest.Tool(name: "shardkit", version: "0.1.0", operation: "shard")
                try writer.write(source: source, tool: tool, inputs: [],
                                 extraFiles: [], sources: { _ in
                    // Meanwhile another run writes rank 1 into the same directory; then this run fails.
                    try? FileManager.default.createDirectory(atPath: out + "/rank-1", withIntermediateDirectories: true)
                    FileManager.default.createFile(atPath: other, contents: Data([1, 2, 3]))
                    throw ShardKitError(.io, "simulated failure")
                })
            }
            expectShardKitError(error, .io, ["simulated failure"])
            #expect(exists(other), "the other run's rank file must survive")
            #expect(!exists(out + "/rank-0"), "this run's rank directory must be gone")
        }
    }
}
