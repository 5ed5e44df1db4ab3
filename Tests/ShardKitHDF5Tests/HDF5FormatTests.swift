import Foundation
import Testing
import ShardKit
@testable import ShardKitHDF5
import ShardKitTestSupport

private func open(_ name: String) throws -> CheckpointFile {
    try CheckpointFile(path: Fixtures.bad("hdf5/" + name), formats: [HDF5Format()])
}

private func bytes(_ file: CheckpointFile, _ name: String) throws -> [UInt8] {
    let t = try #require(file.tensors.first { $0.name == name }, "no tensor \(name)")
    let (source, offset) = t.byteSource(in: try ReadOnlyFile(path: file.path))
    return try source.read(count: t.byteCount, at: offset)
}

private func le<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) } }
private func f32(_ values: [Float]) -> [UInt8] { le(values.map(\.bitPattern)) }

private func expectError(_ body: () throws -> Void, _ code: ShardKitError.Code, _ words: [String],
                         sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        try body()
        Issue.record("expected an error containing \(words)", sourceLocation: sourceLocation)
    } catch let e as ShardKitError {
        #expect(e.code == code, "\(e.message)", sourceLocation: sourceLocation)
        for w in words { #expect(e.message.contains(w), "\"\(e.message)\" should contain \"\(w)\"", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("HDF5 weights files (fixtures/bad/hdf5, llama-gqa-h5)")
struct HDF5FormatTests {
    @Test("an inspection report from a child is checked like any untrusted input")
    func childReportValidated() throws {
        let file = try ReadOnlyFile(path: Fixtures.bad("hdf5/valid.h5"))
        func parse(_ json: String) throws -> [TensorInfo] { try HDF5Inspection.parse(Data(json.utf8), file: file) }
        let good = try parse(HDF5Format.inspectionReport(path: file.path))
        // The report carries dataset paths; names are made from them afterwards (`HDF5Format.named`).
        #expect(good.map(\.name).sorted() == ["a", "b", "c", "flag", "group/sub/d"])
        expectError({ _ = try parse(#"{"tensors":[{"name":"a","dtype":"F32","shape":[2,3],"offset":\#(file.size - 8),"bytes":24}]}"#) },
                    .invalidHDF5File, ["dataset a", "not inside the file"])
        expectError({ _ = try parse(#"{"tensors":[{"name":"a","dtype":"F32","shape":[2,3],"offset":0,"bytes":25}]}"#) },
                    .invalidHDF5File, ["dataset a"])
        expectError({ _ = try parse(#"{"tensors":[{"name":"a","dtype":"Q9","shape":[1],"offset":0,"bytes":4}]}"#) },
                    .invalidHDF5File, ["malformed entry"])
        expectError({ _ = try parse("not json") }, .invalidHDF5File, ["not valid JSON"])
        // Chunk tables: the grid complete, each chunk inside the file, well-formed rows, known filters.
        func chunked(_ table: String) -> String {
            #"{"tensors":[{"name":"w","dtype":"F32","shape":[8,8],"offset":0,"bytes":256,"chunked":"# + table + "}]}"
        }
        let row = "[0,64,0]"
        #expect(try parse(chunked(#"{"chunk":[4,4],"filters":[],"chunks":[\#(row),\#(row),\#(row),\#(row)]}"#)).count == 1)
        expectError({ _ = try parse(chunked(#"{"chunk":[4,4],"filters":[],"chunks":[\#(row),\#(row),\#(row)]}"#)) },
                    .invalidHDF5File, ["3 chunks stored", "has 4"])
        expectError({ _ = try parse(chunked(#"{"chunk":[4,4],"filters":[],"chunks":[\#(row),\#(row),\#(row),[\#(file.size - 8),64,0]]}"#)) },
                    .invalidHDF5File, ["chunk 3", "not inside the file"])
        expectError({ _ = try parse(chunked(#"{"chunk":[4,"4"],"filters":[],"chunks":[]}"#)) },
                    .invalidHDF5File, ["malformed chunk table"])
        expectError({ _ = try parse(chunked(#"{"chunk":[4,4],"filters":["lzf"],"chunks":[\#(row),\#(row),\#(row),\#(row)]}"#)) },
                    .invalidHDF5File, ["malformed chunk table"])
        expectError({ _ = try parse(chunked(#"{"chunk":[1,1],"filters":[],"chunks":[]}"#.replacingOccurrences(of: "[1,1]", with: "[100000000,100000000]"))) },
                    .invalidHDF5File, ["exceed", "MiB per chunk"])
        expectError({ _ = try parse(#"{"error":{"code":"invalidHDF5File","message":"x: dataset w: is chunked"}}"#) },
                    .invalidHDF5File, ["is chunked"])
    }

    @Test("valid.h5: every dataset, nested ones named by their path with dots, with its dtype, shape and bytes")
    func valid() throws {
        let file = try open("valid.h5")
        #expect(file.format == "hdf5")
        let byName = Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0) })
        #expect(Set(byName.keys) == ["a", "b", "c", "flag", "group.sub.d"])
        #expect(byName["a"]?.dtype == .f32 && byName["a"]?.shape == [2, 3])
        #expect(byName["b"]?.dtype == .f16 && byName["b"]?.shape == [4])
        #expect(byName["c"]?.dtype == .i64 && byName["c"]?.shape == [3])
        #expect(byName["flag"]?.dtype == .bool && byName["flag"]?.shape == [2])
        #expect(byName["group.sub.d"]?.dtype == .f64 && byName["group.sub.d"]?.shape == [2])
        #expect(try bytes(file, "a") == f32([0, 1, 2, 3, 4, 5]))
        #expect(try bytes(file, "b") == le([Float16(0), 1, 2, 3].map(\.bitPattern)))
        #expect(try bytes(file, "c") == le([Int64(-1), 0, 7]))
        #expect(try bytes(file, "flag") == [1, 0])
        #expect(try bytes(file, "group.sub.d") == le([0.5, 1.5].map { (x: Double) in x.bitPattern }))
    }

    @Test("chunked datasets, with and without gzip, are decoded chunk by chunk into their values",
          arguments: ["chunked.h5", "compressed.h5"])
    func chunked(_ name: String) throws {
        let file = try open(name)
        let w = try #require(file.tensors.first { $0.name == "w" })
        guard case .chunked(let storage) = w.encoding else { Issue.record("\(name): not chunked"); return }
        #expect(storage.chunkShape == [4, 4] && storage.chunks.count == 4)
        #expect(storage.filters == (name == "compressed.h5" ? [.deflate] : []))
        #expect(try bytes(file, "w") == f32((0..<64).map(Float.init)))
        // Read back to front and in odd pieces: the same bytes (the decoder restarts or skips).
        let (source, _) = w.byteSource(in: try ReadOnlyFile(path: file.path))
        var pieces: [UInt8] = []
        for start in stride(from: 0, to: 256, by: 36) { pieces += try source.read(count: min(36, 256 - start), at: start) }
        #expect(pieces == f32((0..<64).map(Float.init)))
        #expect(try source.read(count: 8, at: 248) == f32([62, 63]))
        #expect(try source.read(count: 4, at: 0) == f32([0]))
    }

    @Test("a 16-bit float with bfloat16's bit layout is BF16, not F16")
    func bf16() throws {
        let file = try open("bf16.h5")
        #expect(file.tensors.map(\.dtype) == [.bf16])
        #expect(try bytes(file, "w") == [0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F, 0x40, 0x40])
    }

    @Test("a file with a 512-byte user block: offsets are absolute")
    func userBlock() throws {
        #expect(try bytes(try open("userblock.h5"), "a") == f32([0, 1, 2, 3, 4, 5]))
    }

    @Test("a zero-element dataset is an empty tensor; a scalar dataset has shape []")
    func emptyAndScalar() throws {
        let file = try open("empty-dims.h5")
        let z = try #require(file.tensors.first { $0.name == "z" })
        #expect(z.shape == [0, 4] && z.byteCount == 0)
        let s = try #require(file.tensors.first { $0.name == "s" })
        #expect(s.shape == [] && s.dtype == .f32)
        #expect(try bytes(file, "s") == f32([2.5]))
    }

    // corrupt-heap.h5 is not here: it crashes libhdf5 itself, so it is tested through the CLI,
    // which reads HDF5 structure in a child process.
    @Test("each dataset that cannot be read in place, and each broken file, is refused with its reason", arguments: [
        ("compact.h5", ["dataset w", "compact"]),
        ("unwritten.h5", ["dataset w", "never written"]),
        ("big-endian.h5", ["dataset w", "big-endian"]),
        ("string.h5", ["dataset s", "strings"]),
        ("truncated.h5", ["truncated"]),
        ("not-hdf5.h5", ["signature"]),
        ("enum-i8.h5", ["dataset a", "enum"]),
        ("float-unnormalized.h5", ["dataset w", "implied leading mantissa bit"]),
        ("virtual.h5", ["dataset w", "virtual"]),
    ])
    func refused(_ name: String, _ words: [String]) {
        expectError({ _ = try open(name) }, .invalidHDF5File, [name] + words)
    }

    @Test("a name decides the format: a torch ZIP named .h5 is refused as HDF5, an HDF5 file named .bin as PyTorch")
    func nameDecides() throws {
        try withTempDir { tmp in
            try FileManager.default.copyItem(atPath: Fixtures.bad("torch/valid.bin"), toPath: tmp + "/model.h5")
            expectError({ _ = try Checkpoint(path: tmp, formats: [HDF5Format()]) }, .invalidHDF5File, ["model.h5", "signature"])
            try FileManager.default.copyItem(atPath: Fixtures.bad("hdf5/valid.h5"), toPath: tmp + "/w.bin")
            expectError({ _ = try CheckpointFile(path: tmp + "/w.bin", formats: [HDF5Format()]) }, .invalidPyTorchFile, ["w.bin", "not a PyTorch checkpoint"])
        }
    }

    @Test("without HDF5Format, an HDF5 file is refused naming the library that reads it")
    func needsTheFormat() {
        expectError({ _ = try CheckpointFile(path: Fixtures.bad("hdf5/valid.h5")) }, .invalidCheckpoint, ["HDF5", "ShardKitHDF5"])
    }

    @Test("every 97th truncation of valid.h5 is refused cleanly or still reads inside the file")
    func truncations() throws {
        let full = try readBytes(Fixtures.bad("hdf5/valid.h5"))
        try withTempDir { tmp in
            for length in stride(from: 0, to: full.count, by: 97) {
                let path = tmp + "/t.h5"
                try writeBytes(Array(full[..<length]), to: path)
                do {
                    let file = try CheckpointFile(path: path, formats: [HDF5Format()])
                    for t in file.tensors { #expect(t.offset + t.byteCount <= length) }
                } catch let e as ShardKitError {
                    #expect([.invalidHDF5File, .invalidSafetensors].contains(e.code), "length \(length): \(e.message)")
                }
            }
        }
    }

    @Test("h5py's nested groups (f32, f16, bf16, chunked gzip+shuffle, a Keras root group) are the HF names and shard at G = 2 and 4 into their safetensors twins' bytes",
          arguments: ["f32", "f16", "bf16", "gzip", "gzip-bf16", "keras"])
    func nested(_ variant: String) throws {
        let dir = Fixtures.path("hdf5-nested/" + variant)
        let root = variant == "keras" ? "llama_gqa" : nil
        let h5 = try Checkpoint(path: dir + "/model.h5", formats: [HDF5Format(rootGroup: root)])
        let twin = try Checkpoint(path: dir + "/model.safetensors")
        let differences = try tensorDifferences(h5, twin)
        #expect(differences.isEmpty, "\(differences)")
        let chunked = h5.tensors.filter { if case .chunked = $0.info.encoding { return true }; return false }
        #expect(chunked.isEmpty == !variant.hasPrefix("gzip"))
        if variant.hasPrefix("gzip") {
            // Several chunks along both dimensions, the last ones partial.
            let down = try #require(h5.tensor(named: "model.layers.0.mlp.down_proj.weight"))
            guard case .chunked(let storage) = down.info.encoding else { Issue.record("not chunked"); return }
            #expect(storage.grid.allSatisfy { $0 > 1 } && storage.filters == [.shuffle, .deflate])
            #expect(zip(storage.shape, storage.chunkShape).contains { $0 % $1 != 0 })
        }
        let rules = try ShardPlan.rules(for: twin, rulesFile: nil)
        try withTempDir { tmp in
            for tp in [2, 4] {
                try Shard.run(checkpoint: h5, sourcePath: dir, rules: rules, tp: tp, output: tmp + "/h5-\(tp)")
                try Shard.run(checkpoint: twin, sourcePath: dir, rules: rules, tp: tp, output: tmp + "/st-\(tp)")
                for r in 0..<tp {
                    let name = "/rank-\(r)/model.safetensors"
                    #expect(same(try readBytes(tmp + "/h5-\(tp)" + name), try readBytes(tmp + "/st-\(tp)" + name)),
                            "\(variant) tp \(tp) rank \(r)")
                }
                let set = try ShardSet(directory: tmp + "/h5-\(tp)")
                let recon = Verify.reconstruction(set, source: h5)
                #expect(recon.status == .pass, "\(recon.failures)")
            }
        }
    }

    @Test("a Keras file read without its root group keeps the group in every name; with it, the names are the model's")
    func rootGroup() throws {
        let path = Fixtures.path("hdf5-nested/keras/model.h5")
        let plain = try CheckpointFile(path: path, formats: [HDF5Format()])
        #expect(plain.tensors.allSatisfy { $0.name.hasPrefix("llama_gqa.model.") || $0.name.hasPrefix("llama_gqa.lm_head.") })
        let rooted = try CheckpointFile(path: path, formats: [HDF5Format(rootGroup: "llama_gqa")])
        #expect(Set(rooted.tensors.map(\.name)) == Set(plain.tensors.map { String($0.name.dropFirst("llama_gqa.".count)) }))
        expectError({ _ = try CheckpointFile(path: path, formats: [HDF5Format(rootGroup: "other")]) },
                    .invalidHDF5File, ["no group other in the file"])
    }

    @Test("two datasets that map to one name, filters ShardKit does not decode, and a corrupt chunk are refused",
          arguments: [
            ("duplicate-name.h5", ["a/b/c", "a.b.c", "both name the tensor"]),
            ("lzf.h5", ["dataset w", "lzf filter", "never loaded"]),
            ("filter-blosc.h5", ["dataset w", "blosc filter"]),
            ("filter-skipped.h5", ["dataset w", "blosc filter"]),
            ("corrupt-chunk.h5", ["dataset w"]),
          ])
    func refusedChunked(_ name: String, _ words: [String]) {
        expectError({ _ = try open(name) }, .invalidHDF5File, [name] + words)
    }

    @Test("files h5py cannot write: unfiltered edge chunks, chunks too narrow to read in bounded memory, 2^62 chunks",
          arguments: [
            ("partial-unfiltered.h5", ["partial edge chunks unfiltered"]),
            ("narrow-chunks.h5", ["16384 chunks of 16384 bytes", "64 MiB"]),
            ("huge-extent.h5", ["more than 16777216 chunks"]),
          ])
    func refusedFromC(_ name: String, _ words: [String]) {
        expectError({ _ = try CheckpointFile(path: Fixtures.bad("hdf5-c/" + name), formats: [HDF5Format()]) },
                    .invalidHDF5File, [name, "dataset w"] + words)
    }

    @Test("a chunk corrupted after the first is refused when the copy reaches it, naming the chunk")
    func corruptLaterChunk() throws {
        try withTempDir { tmp in
            let file = try open("compressed.h5")
            let w = try #require(file.tensors.first { $0.name == "w" })
            guard case .chunked(let storage) = w.encoding else { Issue.record("not chunked"); return }
            var bytes = try readBytes(file.path)
            let last = storage.chunks[storage.chunks.count - 1]
            for i in last.offset..<(last.offset + last.byteCount) { bytes[i] ^= 0x5A }
            try writeBytes(bytes, to: tmp + "/c.h5")
            let (source, offset) = w.byteSource(in: try ReadOnlyFile(path: tmp + "/c.h5"))
            expectError({ _ = try source.read(count: w.byteCount, at: offset) }, .invalidCheckpoint,
                        ["c.h5", "chunk 3", "corrupt"])
        }
    }

    @Test("the llama-gqa-h5 checkpoint holds the safetensors fixture's tensors bit for bit and shards to the same pieces")
    func checkpoint() throws {
        let h5 = try Checkpoint(path: Fixtures.path("llama-gqa-h5"), formats: [HDF5Format()])
        let st = try Checkpoint(path: Fixtures.path("llama-gqa"))
        #expect(h5.files.map(\.format) == ["hdf5"])
        let differences = try tensorDifferences(h5, st)
        #expect(differences.isEmpty, "\(differences)")
        try withTempDir { tmp in
            let rules = try ShardPlan.rules(for: h5, rulesFile: nil)
            let manifest = try Shard.run(checkpoint: h5, sourcePath: Fixtures.path("llama-gqa-h5"), rules: rules, tp: 2, output: tmp + "/out")
            #expect(manifest.source.files == ["model.h5"])
            let set = try ShardSet(directory: tmp + "/out")
            #expect(Verify.integrity(set).status == .pass)
            let recon = Verify.reconstruction(set, source: st)
            #expect(recon.status == .pass, "\(recon.failures)")
        }
    }
}
