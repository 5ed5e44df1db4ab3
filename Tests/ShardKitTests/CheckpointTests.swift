import Foundation
import Testing
@testable import ShardKit

/// Which files of a directory make up the checkpoint.
@Suite("checkpoint files")
struct CheckpointTests {
    @Test("model.safetensors is the checkpoint even beside other .safetensors files")
    func modelFileWins() throws {
        // The fixture directories hold reference.safetensors beside model.safetensors.
        let c = try Checkpoint(path: Fixtures.path("llama-gqa"))
        #expect(c.files.map { $0.path.lastPathComponent } == ["model.safetensors"])
        #expect(c.tensors.count == 21)
    }

    @Test("several .safetensors files without an index or model.safetensors are refused, naming them")
    func ambiguousDirectory() throws {
        try withTempDir { dir in
            try copyFixture("llama-gqa", to: dir)
            try FileManager.default.moveItem(atPath: dir + "/model.safetensors", toPath: dir + "/weights.safetensors")
            expectShardKitError(caught { _ = try Checkpoint(path: dir) }, .invalidCheckpoint,
                                ["several .safetensors files", "reference.safetensors", "weights.safetensors", "give the file's path"])
            // Naming the file works.
            let c = try Checkpoint(path: dir + "/weights.safetensors")
            #expect(c.tensors.count == 21)
        }
    }

    @Test("a lone .safetensors file under another name is the checkpoint")
    func loneFile() throws {
        try withTempDir { dir in
            try copyFixture("llama-gqa", to: dir, skipping: ["reference.safetensors"])
            try FileManager.default.moveItem(atPath: dir + "/model.safetensors", toPath: dir + "/weights.safetensors")
            let c = try Checkpoint(path: dir)
            #expect(c.files.map { $0.path.lastPathComponent } == ["weights.safetensors"])
            #expect(c.config?.modelType == "llama")
        }
    }
}
