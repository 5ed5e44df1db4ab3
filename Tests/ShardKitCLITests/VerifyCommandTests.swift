import Foundation
import Testing
import ShardKit

/// `shardkit verify` end to end through the binary: exit status, report, and the generic mode.
@Suite("verify command")
struct VerifyCommandTests {
    @Test("passes on a good shard set with --source and --reference; --json parses; exit 0")
    func passes() throws {
        try withTempDir { dir in
            let out = dir + "/tp2"
            #expect(try CLI.run(["shard", Fixtures.path("qwen2-bias"), "--tp", "2", "--out", out]).status == 0)
            let r = try CLI.run(["verify", out, "--source", Fixtures.path("qwen2-bias"),
                                 "--reference", Fixtures.path("qwen2-bias") + "/reference.safetensors", "--json"])
            #expect(r.status == 0, "\(r)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            #expect(json?["passed"] as? Bool == true)
            let checks = (json?["checks"] as? [[String: Any]])?.map { "\($0["name"]!)=\($0["status"]!)" }
            #expect(checks == ["integrity=pass", "reconstruction=pass", "numerics=pass"])
            let numerics = json?["numerics"] as? [String: Any]
            #expect(numerics?["mode"] as? String == "forward pass")
            let report = numerics?["report"] as? [String: Any]
            let reference = report?["reference"] as? [String: Any]
            #expect((reference?["maxRelError"] as? Double).map { $0 < 1e-4 } == true)
        }
    }

    @Test("a flipped byte in a rank file fails integrity and reconstruction: exit 1, failures named")
    func flippedByte() throws {
        try withTempDir { dir in
            let out = dir + "/tp2"
            #expect(try CLI.run(["shard", Fixtures.path("llama-gqa"), "--tp", "2", "--out", out]).status == 0)
            let file = out + "/rank-1/model.safetensors"
            var bytes = try readBytes(file)
            bytes[bytes.count - 100] ^= 0x01
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            let r = try CLI.run(["verify", out, "--source", Fixtures.path("llama-gqa")])
            #expect(r.status == 1, "\(r)")
            #expect(r.stdout.contains("FAIL    integrity"))
            #expect(r.stdout.contains("FAIL    reconstruction"))
            #expect(r.stdout.contains("rank-1/model.safetensors"))
            #expect(r.stdout.contains("SKIPPED numerics"))
            #expect(r.stdout.hasSuffix("FAILED\n"))
        }
    }

    @Test("an architecture without a forward pass gets the generic per-weight check")
    func genericMode() throws {
        try withTempDir { dir in
            // llama-gqa renamed to an unknown model type: only a rules file can shard it.
            let src = dir + "/mystery"
            try copyFixture("llama-gqa", to: src)
            let configPath = src + "/config.json"
            var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as! [String: Any]
            config["model_type"] = "mystery"
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
            try llamaRulesJSON.write(toFile: dir + "/rules.json", atomically: true, encoding: .utf8)
            let out = dir + "/tp4"
            let s = try CLI.run(["shard", src, "--tp", "4", "--out", out, "--rules", dir + "/rules.json"])
            #expect(s.status == 0, "\(s)")
            let r = try CLI.run(["verify", out, "--source", src, "--json"])
            #expect(r.status == 0, "\(r)")
            let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
            let numerics = json?["numerics"] as? [String: Any]
            #expect(numerics?["mode"] as? String == "generic linear check")
            let checks = json?["checks"] as? [[String: Any]]
            let detail = checks?.first { $0["name"] as? String == "numerics" }?["detail"] as? String ?? ""
            #expect(detail.contains("cannot see whether heads stay whole"), "\(detail)")
            let layers = (numerics?["report"] as? [String: Any])?["layers"] as? [[String: Any]]
            // Every split weight is checked: 2 layers × 7 linear weights + embedding + LM head.
            #expect((layers?.count ?? 0) >= 16)
            // A reference needs a forward pass.
            let refused = try CLI.run(["verify", out, "--reference", Fixtures.path("llama-gqa") + "/reference.safetensors"])
            #expect(refused.status == 1)
            #expect(refused.stderr.contains("needs a forward pass"))
        }
    }

    @Test("an unfinished directory fails with a message saying so")
    func unfinished() throws {
        try withTempDir { dir in
            let out = dir + "/tp2"
            #expect(try CLI.run(["shard", Fixtures.path("llama-gqa"), "--tp", "2", "--out", out]).status == 0)
            try FileManager.default.removeItem(atPath: out + "/manifest.json")
            let r = try CLI.run(["verify", out])
            #expect(r.status == 1)
            #expect(r.stderr.hasPrefix("error: ") && r.stderr.contains("unfinished run"))
        }
    }
}

@Suite("no-sync writes")
struct NoSyncTests {
    @Test("--no-sync writes the same bytes and manifest as a durable run")
    func sameBytes() throws {
        try withTempDir { dir in
            #expect(try CLI.run(["shard", Fixtures.path("phi3"), "--tp", "2", "--out", dir + "/a"]).status == 0)
            #expect(try CLI.run(["shard", Fixtures.path("phi3"), "--tp", "2", "--out", dir + "/b", "--no-sync"]).status == 0)
            #expect(listFiles(dir + "/a") == listFiles(dir + "/b"))
            for f in listFiles(dir + "/a") where f != "manifest.json" {
                #expect(same(try readBytes(dir + "/a/" + f), try readBytes(dir + "/b/" + f)), "\(f) differs")
            }
            let a = try ShardSet(directory: dir + "/a").manifest, b = try ShardSet(directory: dir + "/b").manifest
            #expect(a.tensors == b.tensors && a.ranks == b.ranks)
        }
    }
}

/// The same model saved by torch.save, as HDF5 and as safetensors: shard and verify (numerics against
/// transformers' reference included) from each.
@Suite("other input formats through the CLI")
struct InputFormatCLITests {
    @Test("shard and verify from pytorch_model.bin, a sharded .bin with its index, and model.h5",
          arguments: ["llama-gqa-bin", "llama-bf16-sharded-bin", "llama-gqa-h5"])
    func shardAndVerify(_ fixture: String) throws {
        try withTempDir { dir in
            let out = dir + "/tp2"
            let s = try CLI.run(["shard", Fixtures.path(fixture), "--tp", "2", "--out", out])
            #expect(s.status == 0, "\(s)")
            let r = try CLI.run(["verify", out, "--source", Fixtures.path(fixture),
                                 "--reference", Fixtures.path(fixture) + "/reference.safetensors"])
            #expect(r.status == 0, "\(r)")
            #expect(r.stdout.contains("PASS    reconstruction"))
            #expect(r.stdout.contains("PASS    numerics"))
        }
    }

    @Test("a pickle that calls os.system is one error line and nothing is written")
    func evilPickle() throws {
        try withTempDir { dir in
            let r = try CLI.run(["shard", Fixtures.bad("torch/evil-global.bin"), "--tp", "1", "--out", dir + "/out"])
            expectCLIError(r, ["evil-global.bin", "os.system"])
            #expect(!exists(dir + "/out"))
        }
    }

    @Test("an HDF5 file that crashes libhdf5 is one error line: the structure is read in a child process")
    func crashingHDF5() throws {
        let r = try CLI.run(["plan", Fixtures.bad("hdf5/corrupt-heap.h5"), "--tp", "1"])
        expectCLIError(r, ["corrupt-heap.h5", "libhdf5 crashed"])
    }

    @Test("an HDF5 filter ShardKit does not decode is one error line naming the dataset, the filter and the way out")
    func unsupportedFilterHDF5() throws {
        let r = try CLI.run(["plan", Fixtures.bad("hdf5/lzf.h5"), "--tp", "1"])
        expectCLIError(r, ["lzf.h5", "dataset w", "lzf filter", "h5repack"])
    }

    @Test("--hdf5-root: a Keras file shards with the preset once its root group is named; without it, no preset matches")
    func hdf5Root() throws {
        try withTempDir { dir in
            let source = Fixtures.path("hdf5-nested/keras/model.h5")
            let without = try CLI.run(["shard", source, "--tp", "2", "--out", dir + "/a"])
            #expect(without.status != 0 && without.stderr.contains("llama_gqa."), "\(without)")
            let with = try CLI.run(["shard", source, "--tp", "2", "--out", dir + "/b", "--hdf5-root", "llama_gqa"])
            #expect(with.status == 0, "\(with)")
            let verify = try CLI.run(["verify", dir + "/b", "--source", source, "--hdf5-root", "llama_gqa",
                                      "--reference", Fixtures.path("hdf5-nested/f32/reference.safetensors")])
            #expect(verify.status == 0 && verify.stdout.contains("PASSED"), "\(verify)")
        }
    }

    @Test("Meta's consolidated MP 2 checkpoint reshards to TP 4 and to --tp 1, and both reproduce transformers' logits")
    func metaConsolidated() throws {
        try withTempDir { dir in
            let meta = Fixtures.path("llama-meta-mp2")
            for tp in ["4", "1"] {
                let r = try CLI.run(["reshard", meta, "--tp", tp, "--out", dir + "/tp" + tp])
                #expect(r.status == 0, "\(r)")
                let v = try CLI.run(["verify", dir + "/tp" + tp, "--reference", meta + "/reference.safetensors"])
                #expect(v.status == 0 && v.stdout.contains("PASSED"), "\(v)")
            }
            #expect(exists(dir + "/tp1/config.json") && exists(dir + "/tp1/model.safetensors"))
        }
    }
}

/// `--vocab-multiple`: vocabulary padding as serving engines lay it out.
@Suite("vocabulary padding for engines")
struct VocabMultipleTests {
    /// Rows each rank holds of `name` in the manifest of `dir`.
    func rowsPerRank(_ dir: String, _ name: String) throws -> [Int] {
        let m = try ShardSet(directory: dir).manifest
        let t = try #require(m.tensors[name])
        return t.pieces.map { m.layout(of: $0).length }
    }

    @Test("vLLM (64) and Megatron (128 × TP) layouts: the rows per rank each engine expects; verify passes; reshard and --tp 1 drop the padding")
    func engines() throws {
        try withTempDir { dir in
            let source = Fixtures.path("qwen3")  // vocabulary 250
            let name = "model.embed_tokens.weight"
            // vLLM: pad_vocab_size(250, 64) = 256, 4 equal parts.
            #expect(try CLI.run(["shard", source, "--tp", "4", "--vocab-multiple", "64", "--out", dir + "/vllm"]).status == 0)
            #expect(try rowsPerRank(dir + "/vllm", name) == [64, 64, 64, 64])
            // Megatron: 128 × TP = 512 → 128 rows per rank.
            #expect(try CLI.run(["shard", source, "--tp", "4", "--vocab-multiple", "512", "--out", dir + "/megatron"]).status == 0)
            #expect(try rowsPerRank(dir + "/megatron", name) == [128, 128, 128, 128])
            let manifest = try String(contentsOfFile: dir + "/vllm/manifest.json", encoding: .utf8)
            #expect(manifest.contains("\"multiple\": 64") || manifest.contains("\"multiple\":64"))
            for set in ["vllm", "megatron"] {
                let v = try CLI.run(["verify", dir + "/" + set, "--source", source, "--reference",
                                     source + "/reference.safetensors"])
                #expect(v.status == 0 && v.stdout.contains("PASSED"), "\(set): \(v)")
            }
            // Reshard drops the engine padding unless asked again; TP 1 is the source's bytes.
            #expect(try CLI.run(["reshard", dir + "/vllm", "--tp", "2", "--out", dir + "/tp2"]).status == 0)
            #expect(try CLI.run(["shard", source, "--tp", "2", "--out", dir + "/tp2-direct"]).status == 0)
            for r in 0..<2 {
                let f = "/rank-\(r)/model.safetensors"
                #expect(same(try readBytes(dir + "/tp2" + f), try readBytes(dir + "/tp2-direct" + f)))
            }
            #expect(try CLI.run(["reshard", dir + "/megatron", "--tp", "1", "--out", dir + "/tp1"]).status == 0)
            #expect(try tensorDifferences(Checkpoint(path: dir + "/tp1"), Checkpoint(path: source)).isEmpty)
            #expect(try CLI.run(["reshard", dir + "/tp2", "--tp", "4", "--vocab-multiple", "64", "--out", dir + "/back"]).status == 0)
            for r in 0..<4 {
                let f = "/rank-\(r)/model.safetensors"
                #expect(same(try readBytes(dir + "/back" + f), try readBytes(dir + "/vllm" + f)))
            }
            let bad = try CLI.run(["shard", source, "--tp", "2", "--vocab-multiple", "0", "--out", dir + "/bad"])
            #expect(bad.status != 0 && bad.stderr.contains("--vocab-multiple must be 1"))
        }
    }
}
