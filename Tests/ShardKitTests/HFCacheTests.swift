import Foundation
import Testing
@testable import ShardKit
import ShardKitTestSupport

/// `hf-cache:ORG/NAME[@REV]`: the Hugging Face hub cache as huggingface_hub lays it out (snapshot
/// files are relative links into `blobs/`), resolved offline.
@Suite("Hugging Face cache")
struct HFCacheTests {
    static let commit = "0123456789abcdef0123456789abcdef01234567"

    /// A cache under `dir` holding fixture llama-gqa as `acme/tiny` at `commit`, with refs/main and a tag.
    func makeCache(_ dir: String) throws -> String {
        let repo = dir + "/hub/models--acme--tiny"
        let fm = FileManager.default
        try fm.createDirectory(atPath: repo + "/blobs", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: repo + "/refs", withIntermediateDirectories: true)
        let snapshot = repo + "/snapshots/" + HFCacheTests.commit
        try fm.createDirectory(atPath: snapshot, withIntermediateDirectories: true)
        for (i, f) in ["config.json", "model.safetensors", "tokenizer_config.json"].enumerated() {
            let blob = String(repeating: String(i), count: 40)
            try fm.copyItem(atPath: Fixtures.path("llama-gqa/" + f), toPath: repo + "/blobs/" + blob)
            try fm.createSymbolicLink(atPath: snapshot + "/" + f, withDestinationPath: "../../blobs/" + blob)
        }
        try writeBytes(Array(HFCacheTests.commit.utf8), to: repo + "/refs/main")
        // A revision downloaded by tag or branch name is recorded as refs/<name>.
        try writeBytes(Array((HFCacheTests.commit + "\n").utf8), to: repo + "/refs/v1")
        return snapshot
    }

    @Test("a snapshot of symlinked blobs shards, by path and by hf-cache: name, into the fixture's bytes")
    func shardsFromCache() throws {
        try withTempDir { dir in
            let snapshot = try makeCache(dir)
            let env = ["HF_HUB_CACHE": dir + "/hub"]
            #expect(try HFCache.resolve("hf-cache:acme/tiny", environment: env) == snapshot)
            #expect(try HFCache.resolve("hf-cache:acme/tiny@v1", environment: ["HF_HOME": dir]) == snapshot)
            #expect(try HFCache.resolve("hf-cache:acme/tiny@\(HFCacheTests.commit)", environment: env) == snapshot)
            #expect(try HFCache.resolve("model.safetensors", environment: env) == nil)
            let checkpoint = try Checkpoint(path: snapshot)
            #expect(try tensorDifferences(checkpoint, loadCheckpoint("llama-gqa")).isEmpty)
            let rules = try ShardPlan.rules(for: checkpoint, rulesFile: nil)
            try Shard.run(checkpoint: checkpoint, sourcePath: "hf-cache:acme/tiny", rules: rules, tp: 2,
                          output: dir + "/out")
            try shardFixture("llama-gqa", tp: 2, to: dir + "/expected")
            for r in 0..<2 {
                let name = "/rank-\(r)/model.safetensors"
                #expect(same(try readBytes(dir + "/out" + name), try readBytes(dir + "/expected" + name)))
            }
        }
    }

    @Test("the cache directory follows huggingface_hub's order of variables")
    func cacheRoot() {
        #expect(HFCache.cacheRoot(["HF_HUB_CACHE": "/a", "HF_HOME": "/b"]) == "/a")
        #expect(HFCache.cacheRoot(["HF_HOME": "/b", "XDG_CACHE_HOME": "/c"]) == "/b/hub")
        #expect(HFCache.cacheRoot(["XDG_CACHE_HOME": "/c", "HOME": "/h"]) == "/c/huggingface/hub")
        #expect(HFCache.cacheRoot(["HOME": "/h"]) == "/h/.cache/huggingface/hub")
    }

    @Test("missing repository, revision, snapshot, a dangling link and malformed names are clear errors")
    func errors() throws {
        try withTempDir { dir in
            let snapshot = try makeCache(dir)
            let env = ["HF_HUB_CACHE": dir + "/hub"]
            func resolve(_ s: String) throws { _ = try HFCache.resolve(s, environment: env) }
            expectShardKitError(caught { try resolve("hf-cache:acme/other") }, .notFound,
                                ["acme/other is not in the Hugging Face cache", "models--acme--other", "download"])
            expectShardKitError(caught { try resolve("hf-cache:acme/tiny@dev") }, .notFound,
                                ["revision dev is not in the cache", "refs/dev"])
            expectShardKitError(caught { try resolve("hf-cache:acme/tiny@" + String(repeating: "a", count: 40)) },
                                .notFound, ["snapshot aaaa", "not in the cache"])
            for bad in ["hf-cache:acme", "hf-cache:../x", "hf-cache:acme/tiny/extra", "hf-cache:acme/..", "hf-cache:/x"] {
                expectShardKitError(caught { try resolve(bad) }, .invalidArgument, ["expected hf-cache:ORG/NAME"])
            }
            expectShardKitError(caught { try resolve("hf-cache:acme/tiny@../../x") }, .invalidArgument,
                                ["not a branch, tag or commit"])
            // A pruned blob: the snapshot's link dangles.
            let blob = try FileManager.default.destinationOfSymbolicLink(atPath: snapshot + "/model.safetensors")
            try FileManager.default.removeItem(atPath: snapshot + "/" + blob)
            expectShardKitError(caught { try resolve("hf-cache:acme/tiny") }, .notFound,
                                ["model.safetensors", "does not exist", "download the revision again"])
        }
    }
}
