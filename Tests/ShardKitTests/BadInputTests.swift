import Foundation
import Testing
import ShardKit

struct BadFile: Sendable, CustomTestStringConvertible {
    var file: String
    /// Words that distinguish this defect's message from the others.
    var words: [String]
    var testDescription: String { file }
}

let badFiles: [BadFile] = [
    .init(file: "truncated.safetensors", words: ["truncated", "40", "30"]),
    .init(file: "header-past-eof.safetensors", words: ["header length 4096", "past the end", "192 bytes"]),
    .init(file: "header-too-large.safetensors", words: ["200000000", "exceeds", "limit"]),
    .init(file: "bad-json.safetensors", words: ["not valid JSON"]),
    .init(file: "not-utf8.safetensors", words: ["UTF-8"]),
    .init(file: "unknown-dtype.safetensors", words: ["unknown dtype", "\"F7\"", "\"a\""]),
    .init(file: "overlap.safetensors", words: ["\"b\"", "overlaps", "16 < 24"]),
    .init(file: "gap.safetensors", words: ["gap", "24..<32", "\"b\""]),
    .init(file: "size-mismatch.safetensors", words: ["\"a\"", "24 bytes", "cover 20"]),
    .init(file: "trailing-bytes.safetensors", words: ["8 bytes past the last tensor"]),
    .init(file: "duplicate-name.safetensors", words: ["duplicate key", "\"a\""]),
    .init(file: "bad-metadata.safetensors", words: ["__metadata__", "\"step\"", "not a string"]),
    .init(file: "short-file.safetensors", words: ["5 bytes", "too short"]),
    .init(file: "negative-offset.safetensors", words: ["\"a\"", "data_offsets", "-8"]),
    .init(file: "shape-overflow.safetensors", words: ["\"a\"", "overflows"]),
]

@Suite("Malformed input")
struct BadInputTests {
    @Test("each malformed safetensors file is refused naming the file and the defect", arguments: badFiles)
    func malformed(_ b: BadFile) throws {
        let path = Fixtures.bad(b.file)
        expectShardKitError(caught { _ = try SafetensorsFile(path: path) }, .invalidSafetensors, [path] + b.words)
        // Through Checkpoint as well (a single-file checkpoint).
        expectShardKitError(caught { _ = try Checkpoint(path: path) }, .invalidSafetensors, [path] + b.words)
    }

    @Test("every file in fixtures/bad is covered by a test")
    func allCovered() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Fixtures.root + "/bad").filter { $0.hasSuffix(".safetensors") }
        #expect(Set(files) == Set(badFiles.map(\.file) + ["valid.safetensors"]))
    }

    @Test("the control file loads: a = 0..5 F32 [2,3], b = 100..103 F32 [4]")
    func validControl() throws {
        let f = try SafetensorsFile(path: Fixtures.bad("valid.safetensors"))
        #expect(f.tensors.map(\.name) == ["a", "b"])
        #expect(f.tensors[0].dtype == .f32 && f.tensors[0].shape == [2, 3] && f.tensors[0].byteCount == 24)
        #expect(f.tensors[1].shape == [4] && f.tensors[1].byteCount == 16)
        #expect(f.metadata == ["format": "pt"])
        let bytes = try readBytes(Fixtures.bad("valid.safetensors"))
        func floats(_ t: TensorInfo) -> [Float] {
            stride(from: t.offset, to: t.offset + t.byteCount, by: 4).map { o in
                Float(bitPattern: UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24)
            }
        }
        #expect(floats(f.tensors[0]) == [0, 1, 2, 3, 4, 5])
        #expect(floats(f.tensors[1]) == [100, 101, 102, 103])
    }

    @Test("an index naming a missing file is refused naming that file")
    func indexMissingFile() throws {
        expectShardKitError(caught { _ = try Checkpoint(path: Fixtures.bad("index-missing-file")) }, .invalidCheckpoint,
                            ["model-00002-of-00002.safetensors", "does not exist", "model.safetensors.index.json"])
    }

    @Test("a directory without config.json needs --rules")
    func missingConfig() throws {
        try withTempDir { tmp in
            let dir = tmp + "/ckpt"
            try copyFixture("llama-gqa", to: dir, skipping: ["config.json"])
            let ckpt = try Checkpoint(path: dir)
            #expect(ckpt.config == nil)
            expectShardKitError(caught { _ = try ShardPlan.rules(for: ckpt, rulesFile: nil) }, .invalidCheckpoint,
                                ["config.json", "missing", "--rules"])
        }
    }

    @Test("an unknown model_type is refused naming it")
    func unknownModelType() throws {
        try withTempDir { tmp in
            let dir = tmp + "/ckpt"
            try copyFixture("llama-gqa", to: dir)
            let config = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
            try config.replacingOccurrences(of: "\"model_type\": \"llama\"", with: "\"model_type\": \"llamoid\"")
                .write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
            let ckpt = try Checkpoint(path: dir)
            expectShardKitError(caught { _ = try ShardPlan.rules(for: ckpt, rulesFile: nil) }, .invalidConfig,
                                ["unknown model_type", "\"llamoid\"", "--rules"])
        }
    }

    @Test("a tensor no rule covers is refused naming it, before anything is written")
    func uncoveredTensor() throws {
        try withTempDir { tmp in
            let dir = tmp + "/ckpt"
            try copyFixture("llama-gqa", to: dir, skipping: ["model.safetensors"])
            // Source tensors plus one the llama preset does not know.
            var tensors = try sourceTensors("llama-gqa").sorted { $0.key < $1.key }.map { (name: $0.key, tensor: $0.value) }
            tensors.append((name: "model.layers.0.mystery.weight", tensor: RawTensor(dtype: "F32", shape: [2, 2], bytes: [UInt8](repeating: 1, count: 16))))
            try writeRawSafetensors(tensors, to: dir + "/model.safetensors")
            let ckpt = try Checkpoint(path: dir)
            let out = tmp + "/out"
            let error = caught { try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: 2, output: out) }
            expectShardKitError(error, .unmatchedRule, ["model.layers.0.mystery.weight", "matches no rule"])
            #expect(!exists(out))
        }
    }

    @Test("an existing output is refused without force; force refuses a non-ShardKit directory")
    func outputExists() throws {
        try withTempDir { tmp in
            let ckpt = try loadCheckpoint("llama-gqa")
            let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
            let out = tmp + "/out"
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            try writeBytes([1, 2, 3], to: out + "/thesis.tex")
            expectShardKitError(caught { try Shard.run(checkpoint: ckpt, sourcePath: "x", rules: rules, tp: 2, output: out) },
                                .outputExists, [out, "already exists", "--force"])
            var force = ShardSetWriter.Options()
            force.force = true
            expectShardKitError(caught { try Shard.run(checkpoint: ckpt, sourcePath: "x", rules: rules, tp: 2, output: out, options: force) },
                                .outputExists, [out, "not a ShardKit output directory"])
            #expect(listFiles(out) == ["thesis.tex"])
            #expect(try readBytes(out + "/thesis.tex") == [1, 2, 3])
            // An empty existing directory is fine; so is replacing ShardKit output with force.
            let empty = tmp + "/empty"
            try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
            try Shard.run(checkpoint: ckpt, sourcePath: "x", rules: rules, tp: 2, output: empty)
            expectShardKitError(caught { try Shard.run(checkpoint: ckpt, sourcePath: "x", rules: rules, tp: 4, output: empty) },
                                .outputExists, ["--force"])
            try Shard.run(checkpoint: ckpt, sourcePath: "x", rules: rules, tp: 4, output: empty, options: force)
            #expect(try readManifest(empty).tp == 4)
            #expect(Set(listFiles(empty).filter { $0.hasPrefix("rank-") }) == Set((0..<4).map { "rank-\($0)/model.safetensors" }))
        }
    }

    @Test("a manifest that disagrees with its rule is refused")
    func tamperedManifest() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            try shardFixture("llama-gqa", tp: 2, to: out)
            // Swap rank 1's q_proj interval for rank 0's.
            var m = try readManifest(out)
            m.tensors["model.layers.0.self_attn.q_proj.weight"]!.pieces[1].intervals = [[0, 32]]
            let json = String(decoding: try m.encoded(), as: UTF8.self)
            try json.write(toFile: out + "/manifest.json", atomically: true, encoding: .utf8)
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest,
                                ["model.layers.0.self_attn.q_proj.weight", "rank 1", "intervals"])
        }
    }
}

/// A minimal independent safetensors writer (header padded with spaces to 8 bytes).
func writeRawSafetensors(_ tensors: [(name: String, tensor: RawTensor)], to path: String) throws {
    var header: [String: Any] = [:]
    var offset = 0
    var data: [UInt8] = []
    for (name, t) in tensors {
        header[name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.count]]
        offset += t.bytes.count
        data += t.bytes
    }
    var h = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
    while h.count % 8 != 0 { h.append(0x20) }
    var out: [UInt8] = (0..<8).map { UInt8((h.count >> (8 * $0)) & 0xFF) }
    out += h
    out += data
    try writeBytes(out, to: path)
}
