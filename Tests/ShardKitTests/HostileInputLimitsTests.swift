import Foundation
import Testing
@testable import ShardKit

/// The worst cases of hostile input are refused (or read) in bounded time and memory: huge tensor
/// counts, huge names, deep nesting, oversized side files. docs/formats.md states the bounds.
@Suite("limits on hostile input")
struct HostileInputLimitsTests {
    /// A safetensors file whose header is `header` (padded to 8 bytes), followed by `data` bytes.
    func safetensors(_ header: String, data: Int, in dir: String, name: String = "w.safetensors") throws -> String {
        var h = Array(header.utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        var bytes = withUnsafeBytes(of: UInt64(h.count).littleEndian, Array.init) + h
        bytes += [UInt8](repeating: 0, count: data)
        let path = dir + "/" + name
        try writeBytes(bytes, to: path)
        return path
    }

    /// Runs `body`, expecting it to finish within `seconds` (generous: debug builds, a shared machine).
    func timed(_ what: String, within seconds: Double, _ body: () throws -> Void) throws {
        let start = ContinuousClock.now
        try body()
        let elapsed = ContinuousClock.now - start
        #expect(elapsed < .seconds(seconds), "\(what) took \(elapsed)")
    }

    @Test("100,000 tensors: a valid header is read, and one bad entry at its end is refused, both quickly")
    func manyTensors() throws {
        try withTempDir { dir in
            let n = 100_000
            var entries = (0..<n).map { #""t\#($0)":{"dtype":"U8","shape":[1],"data_offsets":[\#($0),\#($0 + 1)]}"# }
            let good = try safetensors("{" + entries.joined(separator: ",") + "}", data: n, in: dir)
            try timed("reading 100k tensors", within: 20) {
                let count = try SafetensorsFile(path: good).tensors.count
                #expect(count == n)
            }
            // The last entry overlaps the one before it.
            entries[n - 1] = #""t\#(n - 1)":{"dtype":"U8","shape":[1],"data_offsets":[\#(n - 2),\#(n - 1)]}"#
            let bad = try safetensors("{" + entries.joined(separator: ",") + "}", data: n, in: dir, name: "bad.safetensors")
            try timed("refusing 100k tensors", within: 20) {
                expectShardKitError(caught { _ = try SafetensorsFile(path: bad) }, .invalidSafetensors, ["bad.safetensors"])
            }
        }
    }

    @Test("a 64 KB tensor name is read as it is; a header past the size limit is refused before it is read")
    func longNames() throws {
        try withTempDir { dir in
            let long = String(repeating: "n", count: 64 << 10)
            let path = try safetensors(#"{"\#(long)":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: 8, in: dir)
            #expect(try SafetensorsFile(path: path).tensors.map(\.name) == [long])
            // A header length that claims more than the limit: refused from the 8-byte length alone.
            let huge = dir + "/huge.safetensors"
            try writeBytes(withUnsafeBytes(of: UInt64(SafetensorsFile.maxHeaderSize + 8).littleEndian, Array.init)
                           + Array("{}      ".utf8), to: huge)
            try timed("refusing an oversized header", within: 2) {
                expectShardKitError(caught { _ = try SafetensorsFile(path: huge) }, .invalidSafetensors, ["huge.safetensors"])
            }
        }
    }

    @Test("JSON nested a million deep is refused (at depth 64, or sooner by its shape) in a header, a manifest, config.json")
    func deepNesting() throws {
        try withTempDir { dir in
            let deep = String(repeating: "[", count: 1_000_000) + String(repeating: "]", count: 1_000_000)
            let path = try safetensors(#"{"a":"# + deep + "}", data: 0, in: dir)
            try timed("deep safetensors header", within: 5) {
                expectShardKitError(caught { _ = try SafetensorsFile(path: path) }, .invalidSafetensors, ["w.safetensors"])
            }
            try writeBytes(Array(deep.utf8), to: dir + "/config.json")
            try timed("deep config.json", within: 5) {
                #expect(caught { _ = try ModelConfig(path: dir + "/config.json") } != nil)
            }
            try FileManager.default.createDirectory(atPath: dir + "/set", withIntermediateDirectories: true)
            try writeBytes(Array(deep.utf8), to: dir + "/set/manifest.json")
            try timed("deep manifest", within: 5) {
                expectShardKitError(caught { _ = try ShardSet(directory: dir + "/set") }, .invalidManifest, ["manifest.json"])
            }
            let bytes = Array(deep.utf8)
            try timed("deep JSON", within: 5) {
                var message = "parsed"
                do { _ = try JSONValue.parse(bytes) } catch { message = "\(error)" }
                #expect(message.contains("nested too deeply"))
            }
        }
    }

    @Test("a pickle nested deeper than 64 containers is refused where it nests too deep")
    func deepPickle() throws {
        // PROTO 2, then 100,000 × (EMPTY_LIST, MARK) ... a list in a list in a list ..., never closed.
        var bytes: [UInt8] = [0x80, 0x02]
        for _ in 0..<100_000 { bytes += [0x5D, 0x28] }  // EMPTY_LIST, MARK
        for _ in 0..<100_000 { bytes += [0x65] }  // APPENDS
        bytes += [0x2E]  // STOP
        try timed("deep pickle", within: 5) {
            let interpreter = PickleReader.Interpreter(globals: [], dictAttributes: [], reduce: { _, _ in .none },
                                                       persistentLoad: { _ in .none })
            let reader = PickleReader(bytes: bytes, what: "deep.pkl", interpreter: interpreter)
            expectShardKitError(caught { _ = try reader.load { $0 } }, .invalidPyTorchFile, ["nested more than 64 deep"])
        }
    }

    @Test("an oversized config.json or manifest is refused by its size, before it is read")
    func oversizedSideFiles() throws {
        try withTempDir { dir in
            let config = dir + "/config.json"
            _ = FileManager.default.createFile(atPath: config, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: config))
            try handle.truncate(atOffset: 17 << 20)  // sparse: nothing is written
            try handle.close()
            try timed("oversized config.json", within: 2) {
                expectShardKitError(caught { _ = try ModelConfig(path: config) }, .invalidArgument,
                                    ["config.json", "too large", "16 MiB"])
            }
        }
    }

    @Test("a deflated record claiming more than deflate can encode is refused before any buffer is sized by it")
    func deflateBomb() throws {
        expectShardKitError(caught {
            _ = try DeflatedRecord(streamOffset: 0, streamBytes: 2, decodedBytes: (1 << 30) - 1, crc32: nil, what: "data.pkl")
        }, .invalidCheckpoint, ["data.pkl", "more than deflate can encode"])
        #expect(try DeflatedRecord(streamOffset: 0, streamBytes: 1000, decodedBytes: 1_032_000, crc32: nil, what: "x")
                    .decodedBytes == 1_032_000)
        #expect(DeflatedRecord.maxDecodedBytes(streamBytes: Int.max) == Int.max)
    }
}

@Suite("name patterns on hostile input")
struct NamePatternLimitsTests {
    @Test("wildcard runs against long names match in linear time; {a,b} groups cannot multiply without bound")
    func patterns() throws {
        let name = String(repeating: "a.", count: 1000) + "b"
        let hostile = try NamePattern(String(repeating: "**.", count: 60) + "c")
        let start = ContinuousClock.now
        #expect(!hostile.matches(name))
        #expect(try NamePattern(String(repeating: "*.", count: 1000) + "b").matches(name))
        let manyDots = try NamePattern("**" + String(repeating: "*.", count: 50) + "b")
        #expect(!manyDots.matches("x.y" + String(repeating: "z", count: 60) + "b"))
        #expect(ContinuousClock.now - start < .seconds(5))
        // The matcher's semantics: * is one or more non-dot bytes, ** anything.
        #expect(try NamePattern("model.layers.*.mlp.{gate,up}_proj.weight").matches("model.layers.12.mlp.up_proj.weight"))
        #expect(try !NamePattern("model.layers.*.weight").matches("model.layers..weight"))
        #expect(try !NamePattern("model.*.weight").matches("model.a.b.weight"))
        #expect(try NamePattern("model.**.weight").matches("model.a.b.weight"))
        #expect(try NamePattern("**weight").matches("weight"))
        expectShardKitError(caught { _ = try NamePattern(String(repeating: "{a,b}", count: 13)) }, .invalidRules,
                            ["expands to more than 4096 alternatives"])
        #expect(try NamePattern(String(repeating: "{a,b}", count: 12)).matches(String(repeating: "a", count: 12)))
    }
}
