import Foundation
import Testing
@testable import ShardKit

/// Regression tests for what a run may destroy or read: links in an old output, an output that
/// overlaps the input, links out of a checkpoint or shard set, views that outlive their rank.
@Suite("Output and input safety")
struct OutputSafetyTests {
    static func force() -> ShardSetWriter.Options {
        var o = ShardSetWriter.Options()
        o.force = true
        return o
    }

    @Test("--force on an old output whose rank-0 is a link removes the link, never what it points to")
    func forceDoesNotFollowLinks() throws {
        try withTempDir { tmp in
            let out = tmp + "/out", elsewhere = tmp + "/elsewhere"
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: elsewhere + "/keep", withIntermediateDirectories: true)
            try writeBytes([7], to: elsewhere + "/precious.bin")
            try writeBytes([8], to: elsewhere + "/keep/also.bin")
            try writeBytes(Array("{}".utf8), to: out + "/manifest.json")
            try FileManager.default.createSymbolicLink(atPath: out + "/rank-0", withDestinationPath: elsewhere)
            try FileManager.default.createSymbolicLink(atPath: out + "/rank-1", withDestinationPath: elsewhere + "/keep")
            try shardFixture("llama-gqa", tp: 2, to: out, options: Self.force())
            #expect(try readBytes(elsewhere + "/precious.bin") == [7])
            #expect(try readBytes(elsewhere + "/keep/also.bin") == [8])
            #expect(listFiles(elsewhere).sorted() == ["keep/also.bin", "precious.bin"])
            for r in 0..<2 {
                let attributes = try FileManager.default.attributesOfItem(atPath: out + "/rank-\(r)")
                #expect(attributes[.type] as? FileAttributeType == .typeDirectory, "rank-\(r) is a real directory")
            }
            #expect(Verify.integrity(try ShardSet(directory: out)).status == .pass)
        }
    }

    @Test("a leftover .tmp that is a link is replaced, never written through")
    func temporaryFileLink() throws {
        try withTempDir { tmp in
            let victim = tmp + "/victim"
            try writeBytes([1, 2, 3], to: victim)
            try FileManager.default.createSymbolicLink(atPath: tmp + "/file.tmp", withDestinationPath: victim)
            let f = try OutputFile(path: tmp + "/file")
            try ([9, 9] as [UInt8]).withUnsafeBytes { try f.write($0, at: 0) }
            try f.commit()
            #expect(try readBytes(victim) == [1, 2, 3])
            #expect(try readBytes(tmp + "/file") == [9, 9])
        }
    }

    @Test("a view kept after its RankView and ShardSet are released reads the right bytes")
    func viewOutlivesRank() throws {
        try withTempDir { tmp in
            try shardFixture("llama-gqa", tp: 2, to: tmp + "/out")
            let name = "model.layers.0.self_attn.q_proj.weight"
            let expected = try piece(tmp + "/out", try readManifest(tmp + "/out"), name, rank: 1).bytes
            // Nothing but the view is kept: the RankView and ShardSet are temporaries.
            let view = try ShardSet(directory: tmp + "/out").rank(1).tensor(name)
            // Churn memory so that an unmapped region would be reused.
            for _ in 0..<8 { _ = try ShardSet(directory: tmp + "/out").rank(0) }
            #expect(view.withUnsafeBytes { Array($0) } == expected)
            #expect(view.bytes == expected && view.byteCount == expected.count)
        }
    }

    @Test("the output may not be the input, contain it, or lie inside it (links resolved); nothing is deleted")
    func outputOverlapsInput() throws {
        try withTempDir { tmp in
            let src = tmp + "/src"
            try copyFixture("llama-gqa", to: src)
            try writeBytes([0], to: src + "/partial.tmp")   // made it look like ShardKit output before
            let before = listFiles(src)
            let ckpt = try Checkpoint(path: src)
            let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
            try FileManager.default.createSymbolicLink(atPath: tmp + "/alias", withDestinationPath: src)
            for (out, words) in [(src, ["is the input"]), (tmp, ["contains the input"]),
                                 (src + "/out", ["lies inside the input"]), (tmp + "/alias", ["is the input"])] {
                let e = caught {
                    try Shard.run(checkpoint: ckpt, sourcePath: src, rules: rules, tp: 2, output: out, options: Self.force())
                }
                expectShardKitError(e, .outputExists, [out] + words)
                #expect(listFiles(src) == before, "\(out): the checkpoint is intact")
            }
            // reshard OUT --out OUT --force, and into a directory inside the set.
            let set = tmp + "/set"
            try shardFixture("llama-gqa", tp: 2, to: set)
            let setFiles = listFiles(set)
            for out in [set, set + "/rank-0", set + "/new"] {
                let e = caught { try Reshard.run(input: try ShardSet(directory: set), tp: 4, output: out, options: Self.force()) }
                expectShardKitError(e, .outputExists, [out])
                #expect(listFiles(set) == setFiles)
            }
            #expect(Verify.integrity(try ShardSet(directory: set)).status == .pass)
        }
    }

    @Test("a run holding the output directory makes a second run fail with the holder's pid")
    func lockedOutput() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            try shardFixture("llama-gqa", tp: 2, to: out)
            let held = try OutputDirectory(path: out, inputs: [], force: true, ranks: nil)
            expectShardKitError(caught { try shardFixture("llama-gqa", tp: 2, to: out, options: Self.force()) },
                                .outputExists, [out, "in use", "pid \(getpid())"])
            var partial = Self.force()
            partial.ranks = [0]
            expectShardKitError(caught { try shardFixture("llama-gqa", tp: 2, to: out, options: partial) },
                                .outputExists, ["in use"])
            held.abandon()
            try shardFixture("llama-gqa", tp: 2, to: out, options: Self.force())
            #expect(!listFiles(out).contains { $0.hasSuffix(".lock") }, "the lock file goes with the run")
            #expect(Verify.integrity(try ShardSet(directory: out)).status == .pass)
        }
    }

    @Test("finalize waits for no run: it is refused while a --ranks run still holds the directory")
    func finalizeWhileWriting() throws {
        try withTempDir { tmp in
            let parts = tmp + "/parts"
            for r in 0..<2 {
                var o = ShardSetWriter.Options()
                o.ranks = [r]
                try shardFixture("llama-gqa", tp: 2, to: parts, options: o)
            }
            let writing = try OutputDirectory(path: parts, inputs: [], force: false, ranks: [1])
            expectShardKitError(caught { _ = try Reshard.finalize(directory: parts) }, .outputExists, [parts, "in use"])
            #expect(!exists(parts + "/manifest.json"))
            writing.release()
            try Reshard.finalize(directory: parts)
            #expect(Verify.integrity(try ShardSet(directory: parts)).status == .pass)
            #expect(!listFiles(parts).contains { $0.hasSuffix(".lock") })
        }
    }

    @Test("carried files that link out of the checkpoint are refused; a dangling optional file is skipped")
    func linksOutOfTheCheckpoint() throws {
        try withTempDir { tmp in
            let src = tmp + "/src"
            try copyFixture("llama-gqa", to: src, skipping: ["generation_config.json"])
            try writeBytes(Array("secret".utf8), to: tmp + "/secret.txt")
            try FileManager.default.createSymbolicLink(atPath: src + "/generation_config.json",
                                                       withDestinationPath: tmp + "/missing.json")
            let ckpt = try Checkpoint(path: src)
            #expect(!ckpt.auxiliaryFiles.contains("generation_config.json"))
            #expect(ckpt.warnings.count == 1 && ckpt.warnings[0].contains("generation_config.json"))
            try FileManager.default.createSymbolicLink(atPath: src + "/tokenizer.json", withDestinationPath: tmp + "/secret.txt")
            expectShardKitError(caught { _ = try Checkpoint(path: src) }, .invalidCheckpoint,
                                ["tokenizer.json", "outside the checkpoint directory"])
        }
    }

    @Test("a Hugging Face cache snapshot whose files link into blobs/ shards, extra files included")
    func huggingFaceCacheSnapshot() throws {
        try withTempDir { tmp in
            let repo = tmp + "/models--org--tiny", snapshot = repo + "/snapshots/0123abc"
            try FileManager.default.createDirectory(atPath: repo + "/blobs", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: snapshot, withIntermediateDirectories: true)
            for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
                try FileManager.default.copyItem(atPath: Fixtures.path("llama-gqa") + "/" + f, toPath: repo + "/blobs/" + f + ".blob")
                try FileManager.default.createSymbolicLink(atPath: snapshot + "/" + f, withDestinationPath: "../../blobs/" + f + ".blob")
            }
            let ckpt = try Checkpoint(path: snapshot)
            #expect(ckpt.auxiliaryFiles.sorted() == ["config.json", "tokenizer_config.json"])
            try Shard.run(checkpoint: ckpt, sourcePath: snapshot, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil),
                          tp: 2, output: tmp + "/out")
            #expect(exists(tmp + "/out/tokenizer_config.json"))
            #expect(Verify.reconstruction(try ShardSet(directory: tmp + "/out"), source: ckpt).status == .pass)
        }
    }

    @Test("a shard set's rank file or extra file that links out of the set is refused, not read")
    func linksOutOfTheShardSet() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            try shardFixture("llama-gqa", tp: 2, to: out)
            try FileManager.default.moveItem(atPath: out + "/rank-1/model.safetensors", toPath: tmp + "/outside.safetensors")
            try FileManager.default.createSymbolicLink(atPath: out + "/rank-1/model.safetensors",
                                                       withDestinationPath: tmp + "/outside.safetensors")
            let set = try ShardSet(directory: out)
            expectShardKitError(caught { _ = try set.rank(1) }, .invalidManifest, ["outside the shard set"])
            #expect(Verify.integrity(set).status == .fail)
            try FileManager.default.removeItem(atPath: out + "/rank-1/model.safetensors")
            try FileManager.default.moveItem(atPath: tmp + "/outside.safetensors", toPath: out + "/rank-1/model.safetensors")
            try FileManager.default.removeItem(atPath: out + "/config.json")
            try FileManager.default.createSymbolicLink(atPath: out + "/config.json", withDestinationPath: "/etc/passwd")
            expectShardKitError(caught { try Reshard.run(input: set, tp: 1, output: tmp + "/one") }, .invalidManifest,
                                ["config.json", "outside the shard set"])
            #expect(!exists(tmp + "/one"))
        }
    }

    @Test("a manifest with tp 1e30 or nesting 200,000 deep says what is wrong")
    func manifestMessages() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            try shardFixture("llama-gqa", tp: 2, to: out)
            let text = String(decoding: try readBytes(out + "/manifest.json"), as: UTF8.self)
            let huge = text.replacingOccurrences(of: "\"tp\": 2", with: "\"tp\": 1e30")
            try writeBytes(Array(huge.utf8), to: out + "/manifest.json")
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest, ["tp", "expected an integer", "1e30"])
            let deep = String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000)
            try writeBytes(Array(("{\"format\": " + deep + "}").utf8), to: out + "/manifest.json")
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest, ["format", "expected a string"])
            try writeBytes(Array(("{\"tensors\": {\"a\": {\"shape\": " + deep + "}}}").utf8), to: out + "/manifest.json")
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest,
                                ["tensors.a.shape[0]", "expected an integer, found an array"])
            try writeBytes(Array(text.replacingOccurrences(of: "\"tp\": 2", with: "\"tp\": 2, \"tp\": 2").utf8), to: out + "/manifest.json")
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest, ["duplicate key \"tp\""])
        }
    }

    @Test("a safetensors tensor named __metadata__ is named as such")
    func metadataTensor() throws {
        try withTempDir { tmp in
            let header = #"{"__metadata__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
            var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) }
            bytes += Array(header.utf8) + [0, 0, 0, 0]
            try writeBytes(bytes, to: tmp + "/m.safetensors")
            expectShardKitError(caught { _ = try SafetensorsFile(path: tmp + "/m.safetensors") }, .invalidSafetensors,
                                ["a tensor named __metadata__", "rename"])
        }
    }
}
