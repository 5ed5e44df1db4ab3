import Foundation
import Testing
@testable import ShardKit
import ShardKitTestSupport

/// Meta's consolidated checkpoints (fixtures/llama-meta-mp2*: a tiny transformers Llama cut the way
/// Meta's llama repository ships it, MP = 2), resharded without gathering any tensor.
@Suite("Meta consolidated checkpoints")
struct MetaCheckpointTests {
    /// A copy of fixture `name`'s Meta files in `dir`, for tests that break them.
    func copyMeta(_ name: String, to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for f in ["params.json", "consolidated.00.pth", "consolidated.01.pth"] {
            try FileManager.default.copyItem(atPath: Fixtures.path(name + "/" + f), toPath: dir + "/" + f)
        }
    }

    @Test("--tp 1 writes the Hugging Face checkpoint: HF names, HF q/k row order, the converter's config",
          arguments: ["llama-meta-mp2", "llama-meta-mp2-bf16", "llama-meta-mp2-llama3"])
    func toHuggingFace(_ fixture: String) throws {
        let meta = try MetaCheckpoint(directory: Fixtures.path(fixture))
        #expect(meta.files.count == 2)
        try withTempDir { dir in
            try Reshard.run(meta: meta, tp: 1, output: dir + "/hf")
            // TP 1 is a plain checkpoint: model.safetensors and config.json at the top.
            let ours = try Checkpoint(path: dir + "/hf")
            let hf = try Checkpoint(path: Fixtures.path(fixture + "/hf"))
            let differences = try tensorDifferences(ours, hf)
            #expect(differences.isEmpty, "\(differences)")
            let config = try #require(ours.config)
            let expected = try #require(hf.config)
            #expect(config.modelType == "llama")
            for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "vocab_size"] {
                #expect(config.json[key]?.intValue == expected.json[key]?.intValue, "\(key)")
            }
            #expect(config.json["rms_norm_eps"]?.doubleValue == expected.json["rms_norm_eps"]?.doubleValue)
            #expect(config.json["rope_theta"]?.doubleValue == expected.json["rope_theta"]?.doubleValue)
        }
    }

    @Test("MP 2 → TP 2 and TP 4: every rank holds what sharding the HF checkpoint gives it")
    func toOtherDegrees() throws {
        let meta = try MetaCheckpoint(directory: Fixtures.path("llama-meta-mp2"))
        let hf = try Checkpoint(path: Fixtures.path("llama-meta-mp2/hf"))
        let rules = try ShardPlan.rules(for: hf, rulesFile: nil)
        try withTempDir { dir in
            for tp in [2, 4] {
                try Reshard.run(meta: meta, tp: tp, output: dir + "/meta-\(tp)")
                try Shard.run(checkpoint: hf, sourcePath: hf.directory, rules: rules, tp: tp, output: dir + "/hf-\(tp)")
                for r in 0..<tp {
                    let a = try readCheckpointTensors(dir + "/meta-\(tp)/rank-\(r)")
                    let b = try readCheckpointTensors(dir + "/hf-\(tp)/rank-\(r)")
                    #expect(Set(a.keys) == Set(b.keys))
                    for (name, t) in b { #expect(same(a[name], t), "tp \(tp) rank \(r) \(name)") }
                }
                let set = try ShardSet(directory: dir + "/meta-\(tp)")
                #expect(Verify.integrity(set).status == .pass)
                #expect(Verify.reconstruction(set, source: hf).status == .pass)
            }
        }
    }

    @Test("q/k rows: HF row j of a head is Meta row 2j, or 2(j − hd/2) + 1 in the second half")
    func rowOrder() throws {
        let meta = try MetaCheckpoint(directory: Fixtures.path("llama-meta-mp2"))
        let handles = try meta.files.map { try ReadOnlyFile(path: $0.path) }
        let q = try meta.byteSource(for: "model.layers.0.self_attn.q_proj.weight", files: handles)
        let metaQ = try #require(meta.files[0].tensors.first { $0.name == "layers.0.attention.wq.weight" })
        let file0 = handles[0]
        let rowBytes = 64 * 4, hd = 8
        for j in 0..<hd {
            let metaRow = j < hd / 2 ? 2 * j : 2 * (j - hd / 2) + 1
            #expect(try q.read(count: rowBytes, at: j * rowBytes) == file0.read(count: rowBytes, at: metaQ.offset + metaRow * rowBytes))
        }
        // Rows 32..<64 (heads 4 to 7) are in the second file.
        let metaQ1 = try #require(meta.files[1].tensors.first { $0.name == "layers.0.attention.wq.weight" })
        #expect(try q.read(count: rowBytes, at: 33 * rowBytes) == handles[1].read(count: rowBytes, at: metaQ1.offset + 2 * rowBytes))
    }

    @Test("malformed Meta directories are refused with the reason, before anything is written")
    func refused() throws {
        try withTempDir { dir in
            func expectRefused(_ words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
                expectShardKitError(caught { _ = try MetaCheckpoint(directory: dir + "/m") }, .invalidCheckpoint, words,
                                    sourceLocation: sourceLocation)
            }
            try copyMeta("llama-meta-mp2", to: dir + "/m")
            // A missing file in the sequence.
            try FileManager.default.moveItem(atPath: dir + "/m/consolidated.01.pth", toPath: dir + "/m/consolidated.02.pth")
            expectRefused(["consolidated.00.pth", "consolidated.02.pth"])
            try FileManager.default.moveItem(atPath: dir + "/m/consolidated.02.pth", toPath: dir + "/m/consolidated.01.pth")
            // params.json that disagrees with the tensors, or lacks a field.
            let params = try readBytes(dir + "/m/params.json")
            try writeBytes(Array(#"{"dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 4, "norm_eps": 1e-05}"#.utf8),
                           to: dir + "/m/params.json")
            expectRefused(["do not match params.json"])
            try writeBytes(Array(#"{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2}"#.utf8), to: dir + "/m/params.json")
            expectRefused(["wk.weight", "not whole heads of 16"])
            try writeBytes(Array(#"{"n_layers": 2, "n_heads": 8}"#.utf8), to: dir + "/m/params.json")
            expectRefused(["params.json", "dim"])
            try writeBytes(Array(#"{"dim": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 3}"#.utf8), to: dir + "/m/params.json")
            expectRefused(["whole heads"])
            try writeBytes(params, to: dir + "/m/params.json")
            // A file from another checkpoint: different tensors.
            try FileManager.default.removeItem(atPath: dir + "/m/consolidated.01.pth")
            try FileManager.default.copyItem(atPath: Fixtures.path("llama-gqa-bin/pytorch_model.bin"),
                                             toPath: dir + "/m/consolidated.01.pth")
            expectRefused(["consolidated.01.pth holds other tensors"])
        }
    }
}
