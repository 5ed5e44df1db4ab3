import ArgumentParser
import Foundation
import Testing
import ShardKit
@testable import ShardKitCLI

struct BadCase: Sendable, CustomTestStringConvertible {
    var file: String
    var words: [String]
    var testDescription: String { file }
}

@Suite("CLI errors: one line on stderr, exit 1, nothing left behind")
struct CLIErrorTests {
    @Test("malformed safetensors files", arguments: [
        BadCase(file: "truncated.safetensors", words: ["truncated"]),
        BadCase(file: "bad-json.safetensors", words: ["not valid JSON"]),
        BadCase(file: "overlap.safetensors", words: ["overlaps"]),
        BadCase(file: "duplicate-name.safetensors", words: ["duplicate key"]),
        BadCase(file: "short-file.safetensors", words: ["too short"]),
        BadCase(file: "unknown-dtype.safetensors", words: ["unknown dtype \"F7\""]),
        BadCase(file: "header-too-large.safetensors", words: ["exceeds"]),
    ])
    func malformed(_ c: BadCase) throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let r = try CLI.run(["shard", Fixtures.bad(c.file), "--tp", "2", "--out", out])
            expectCLIError(r, [Fixtures.bad(c.file)] + c.words)
            #expect(!exists(out))
            // The same file as the weights of a checkpoint directory.
            let dir = tmp + "/ckpt"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: Fixtures.path("llama-gqa/config.json"), toPath: dir + "/config.json")
            try FileManager.default.copyItem(atPath: Fixtures.bad(c.file), toPath: dir + "/model.safetensors")
            let r2 = try CLI.run(["shard", dir, "--tp", "2", "--out", out])
            expectCLIError(r2, [dir + "/model.safetensors"] + c.words)
            #expect(!exists(out))
            // plan reads the same way.
            expectCLIError(try CLI.run(["plan", dir, "--tp", "2"]), [dir + "/model.safetensors"] + c.words)
        }
    }

    @Test("missing config.json without --rules")
    func missingConfig() throws {
        try withTempDir { tmp in
            let dir = tmp + "/ckpt"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: Fixtures.path("llama-gqa/model.safetensors"), toPath: dir + "/model.safetensors")
            let r = try CLI.run(["shard", dir, "--tp", "2", "--out", tmp + "/out"])
            expectCLIError(r, [dir + "/config.json", "missing", "--rules"])
            #expect(!exists(tmp + "/out"))
        }
    }

    @Test("unknown model_type")
    func unknownModelType() throws {
        try withTempDir { tmp in
            let dir = tmp + "/ckpt"
            try copyFixture("mistral", to: dir)
            let config = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
            #expect(config.contains("\"model_type\": \"mistral\""))
            try config.replacingOccurrences(of: "\"model_type\": \"mistral\"", with: "\"model_type\": \"mistralish\"")
                .write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
            let r = try CLI.run(["shard", dir, "--tp", "2", "--out", tmp + "/out"])
            expectCLIError(r, ["unknown model_type \"mistralish\"", dir + "/config.json"])
            #expect(!exists(tmp + "/out"))
        }
    }

    @Test("index naming a missing file")
    func indexMissingFile() throws {
        try withTempDir { tmp in
            let r = try CLI.run(["shard", Fixtures.bad("index-missing-file"), "--tp", "2", "--out", tmp + "/out"])
            expectCLIError(r, ["model-00002-of-00002.safetensors", "does not exist"])
            #expect(!exists(tmp + "/out"))
        }
    }

    @Test("existing OUT without --force; --force on a directory ShardKit did not write")
    func outputExists() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try Data("keep me".utf8).write(to: URL(fileURLWithPath: out + "/notes.txt"))
            expectCLIError(try CLI.run(["shard", Fixtures.path("gemma"), "--tp", "2", "--out", out]), [out, "--force"])
            expectCLIError(try CLI.run(["shard", Fixtures.path("gemma"), "--tp", "2", "--out", out, "--force"]),
                           [out, "not a ShardKit output directory"])
            #expect(listFiles(out) == ["notes.txt"])
            // --force replaces ShardKit's own output.
            let mine = tmp + "/mine"
            #expect(try CLI.run(["shard", Fixtures.path("gemma"), "--tp", "2", "--out", mine]).status == 0)
            expectCLIError(try CLI.run(["shard", Fixtures.path("gemma"), "--tp", "4", "--out", mine]), ["--force"])
            let r = try CLI.run(["shard", Fixtures.path("gemma"), "--tp", "4", "--out", mine, "--force"])
            #expect(r.status == 0, "\(r)")
            #expect(try ShardSet(directory: mine).tp == 4)
        }
    }

    @Test("an impossible split is refused before OUT is created")
    func impossibleSplit() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let r = try CLI.run(["shard", Fixtures.path("qwen2-bias"), "--tp", "8", "--out", out])
            expectCLIError(r, ["model.layers.0.self_attn.", "4 heads", "8 ranks"])
            #expect(!exists(out))
            expectCLIError(try CLI.run(["shard", Fixtures.path("llama-gqa"), "--tp", "3", "--out", out]), ["3 ranks"])
            #expect(!exists(out))
        }
    }

    @Test("a tensor no rule covers is named")
    func uncoveredTensor() throws {
        try withTempDir { tmp in
            let dir = tmp + "/ckpt"
            try copyFixture("llama-gqa", to: dir, skipping: ["model.safetensors"])
            var tensors = try checkpointTensors(Fixtures.path("llama-gqa")).sorted { $0.key < $1.key }
                .map { (name: $0.key, dtype: DType.f32, shape: $0.value.shape, bytes: $0.value.bytes) }
            tensors.insert((name: "model.layers.1.adapter.weight", dtype: .f32, shape: [4], bytes: [UInt8](repeating: 0, count: 16)), at: 3)
            try writeSafetensors(tensors, to: dir + "/model.safetensors")
            let r = try CLI.run(["shard", dir, "--tp", "2", "--out", tmp + "/out"])
            expectCLIError(r, ["model.layers.1.adapter.weight", "matches no rule", "--rules"])
            #expect(!exists(tmp + "/out"))
        }
    }

    @Test("disk full: tmpfs of 200 KiB (fallback: ulimit -f)")
    func diskFull() throws {
        try withTempDir { tmp in
            let mnt = tmp + "/mnt"
            try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
            let mount = try CLI.spawn("/bin/mount", ["-t", "tmpfs", "-o", "size=200k", "tmpfs", mnt])
            if mount.status != 0 || mount.signaled {
                // Not allowed to mount here: a file-size limit gives the same class of error.
                try fileSizeLimit()
                return
            }
            defer { _ = try? CLI.spawn("/bin/umount", [mnt]) }
            let out = mnt + "/out"
            let r = try CLI.run(["shard", Fixtures.path("llama-gqa"), "--tp", "2", "--out", out])
            expectCLIError(r, ["No space left on device"])
            #expect(!exists(out))
            #expect(listFiles(mnt).isEmpty, "left behind: \(listFiles(mnt))")
            // A partial run into an existing directory also cleans up after itself.
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let r2 = try CLI.run(["shard", Fixtures.path("mixtral"), "--tp", "2", "--out", out, "--ranks", "0"])
            expectCLIError(r2, ["No space left on device"])
            #expect(listFiles(mnt).isEmpty, "left behind: \(listFiles(mnt))")
        }
    }

    @Test("a file-size limit (ulimit -f) gives an error, not a SIGXFSZ death")
    func fileSizeLimit() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let r = try CLI.bash("ulimit -f 100; exec \"$SHARDKIT\" shard '\(Fixtures.path("llama-gqa"))' --tp 1 --out '\(out)'")
            expectCLIError(r, ["File too large"])
            #expect(!exists(out), "left behind: \(listFiles(out))")
        }
    }

    @Test("in process: parseAsRoot + run throws ExitCode(1) for a ShardKitError")
    func inProcess() throws {
        try withTempDir { tmp in
            var command = try ShardKitCommand.parseAsRoot(["shard", Fixtures.path("gemma"), "--tp", "8", "--out", tmp + "/out"])
            do {
                try command.run()
                Issue.record("shard of gemma at tp 8 should fail")
            } catch let e as ExitCode {
                #expect(e.rawValue == 1)
            }
            #expect(!exists(tmp + "/out"))
            // Usage errors are ArgumentParser's, before any file is touched.
            #expect(throws: (any Error).self) { _ = try ShardKitCommand.parseAsRoot(["shard", Fixtures.path("gemma"), "--out", tmp + "/o"]) }
            let r = try CLI.run(["shard", Fixtures.path("gemma"), "--tp", "2"])
            #expect(r.status != 0 && !r.signaled)
            #expect(r.stderr.contains("--out"))
        }
    }

    @Test("verify fails with exit 1 on a damaged shard set")
    func verifyDamaged() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            #expect(try CLI.run(["shard", Fixtures.path("bert"), "--tp", "2", "--out", out]).status == 0)
            let ok = try CLI.run(["verify", out, "--source", Fixtures.path("bert"), "--no-numerics"])
            #expect(ok.status == 0, "\(ok)")
            #expect(ok.stdout.contains("PASS    integrity") && ok.stdout.contains("PASS    reconstruction") && ok.stdout.contains("PASSED"))
            let file = out + "/rank-1/model.safetensors"
            var bytes = try readBytes(file)
            bytes[bytes.count - 3] ^= 0xFF
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            let bad = try CLI.run(["verify", out, "--source", Fixtures.path("bert"), "--json"])
            #expect(bad.status == 1 && !bad.signaled, "\(bad)")
            let json = try JSONSerialization.jsonObject(with: Data(bad.stdout.utf8)) as! [String: Any]
            #expect(json["passed"] as? Bool == false)
            let checks = json["checks"] as! [[String: Any]]
            #expect(checks.first { $0["name"] as? String == "integrity" }?["status"] as? String == "fail")
            #expect(checks.first { $0["name"] as? String == "reconstruction" }?["status"] as? String == "fail")
            // Not a shard set at all.
            let none = try CLI.run(["verify", tmp])
            expectCLIError(none, ["manifest.json"])
        }
    }
}
