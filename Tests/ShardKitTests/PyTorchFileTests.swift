import Foundation
import Testing
import ShardKit

/// The bytes of a tensor as ShardKit locates it in its file.
private func bytes(_ file: CheckpointFile, _ name: String) throws -> [UInt8] {
    guard let t = file.tensors.first(where: { $0.name == name }) else {
        Issue.record("no tensor \(name) in \(file.path)")
        return []
    }
    return try ReadOnlyFile(path: file.path).read(count: t.byteCount, at: t.offset)
}

private func f32(_ values: [Float]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) } }
private func u16(_ values: [UInt16]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) } }

@Suite("PyTorch torch.save checkpoints (fixtures/bad/torch, *-bin fixtures)")
struct PyTorchFileTests {
    static func torchFile(_ name: String) throws -> CheckpointFile { try CheckpointFile(path: Fixtures.bad("torch/" + name)) }

    @Test("valid.bin and its unaligned, plainly-zipped twin give the documented tensors", arguments: ["valid.bin", "misaligned.bin"])
    func valid(_ name: String) throws {
        let file = try Self.torchFile(name)
        #expect(file.format == "pytorch")
        #expect(file.tensors.map(\.name) == ["a", "b", "c"])
        #expect(file.tensors.map(\.dtype) == [.f32, .bf16, .f16])
        #expect(file.tensors.map(\.shape) == [[2, 3], [4], [2, 2]])
        #expect(try bytes(file, "a") == f32([0, 1, 2, 3, 4, 5]))
        #expect(try bytes(file, "b") == u16([0x42C8, 0x42CA, 0x42CC, 0x42CE]))
        #expect(try bytes(file, "c") == u16([0x3800, 0xBE00, 0x4080, 0x6400]))
    }

    @Test("views into one storage use their storage offsets; a tied tensor is the same bytes")
    func sharedStorage() throws {
        let file = try Self.torchFile("shared-storage.bin")
        #expect(try bytes(file, "x") == f32([2, 3, 4]))
        #expect(try bytes(file, "y") == f32([5, 6, 7, 8]))
        #expect(try bytes(file, "w") == f32([20, 21, 22, 23]))
        #expect(try bytes(file, "w_tied") == f32([20, 21, 22, 23]))
        #expect(file.tensors.first { $0.name == "w" }?.offset == file.tensors.first { $0.name == "w_tied" }?.offset)
    }

    @Test("long memo references, 4-byte ints and a size-1 dimension with an odd stride")
    func manyTensors() throws {
        let file = try Self.torchFile("many-tensors.bin")
        #expect(file.tensors.count == 42)
        for i in 0..<40 { #expect(try bytes(file, String(format: "t%02d", i)) == f32([Float(i)])) }
        #expect(try bytes(file, "t39_tied") == f32([39]))
        #expect(file.tensors.first { $0.name == "u" }?.shape == [1, 3])
        #expect(try bytes(file, "u") == f32([1, 2, 3]))
    }

    @Test("each malformed or unsupported file is refused with its reason", arguments: [
        ("non-contiguous.bin", ["tensor t", "not contiguous", "(1, 3)".replacingOccurrences(of: "(", with: "[").replacingOccurrences(of: ")", with: "]").replacingOccurrences(of: ", ", with: ", ")]),
        ("legacy-format.bin", ["legacy", "pre-1.6"]),
        ("truncated.bin", ["end-of-central-directory"]),
        ("evil-global.bin", ["os.system", "does not allow"]),
        ("storage-too-small.bin", ["storage 0", "6 F32 elements", "16 bytes"]),
        ("compressed.bin", ["compressed", "method 8"]),
        ("big-endian.bin", ["byteorder", "big"]),
        ("missing-storage.bin", ["storage 2", "data/2"]),
    ])
    func refused(_ name: String, _ words: [String]) throws {
        let error = caught { _ = try Self.torchFile(name) }
        expectShardKitError(error, .invalidPyTorchFile, [name] + words)
    }

    @Test("every truncation of valid.bin is refused cleanly or still reads inside the file")
    func truncations() throws {
        let full = try readBytes(Fixtures.bad("torch/valid.bin"))
        try withTempDir { tmp in
            for length in 0..<full.count {
                let path = tmp + "/t.bin"
                try writeBytes(Array(full[..<length]), to: path)
                do {
                    let file = try CheckpointFile(path: path)
                    for t in file.tensors { #expect(t.offset + t.byteCount <= length) }
                } catch let e as ShardKitError {
                    #expect([.invalidPyTorchFile].contains(e.code), "length \(length): \(e.code) \(e.message)")
                }
            }
        }
    }

    @Test("seeded random byte changes never crash and never give a range outside the file")
    func mutations() throws {
        let original = try readBytes(Fixtures.bad("torch/many-tensors.bin"))
        var rng = SplitMix64(seed: 0x70_7A_62_69_6E)
        var refused = 0
        try withTempDir { tmp in
            for _ in 0..<400 {
                var bytes = original
                for _ in 0..<Int(rng.next() % 4 + 1) {
                    let i = Int(rng.next() % UInt64(bytes.count))
                    bytes[i] = UInt8(truncatingIfNeeded: rng.next())
                }
                let path = tmp + "/m.bin"
                try writeBytes(bytes, to: path)
                do {
                    let file = try CheckpointFile(path: path)
                    for t in file.tensors { #expect(t.offset >= 0 && t.offset + t.byteCount <= bytes.count) }
                } catch is ShardKitError {
                    refused += 1
                }
            }
        }
        #expect(refused > 0)
    }

    @Test("a pytorch_model.bin checkpoint (and a sharded one with its index) holds the safetensors fixture's tensors bit for bit",
          arguments: [("llama-gqa-bin", "llama-gqa"), ("llama-bf16-sharded-bin", "llama-bf16-sharded")])
    func sameAsSafetensors(_ bin: String, _ safetensors: String) throws {
        let a = try Checkpoint(path: Fixtures.path(bin)), b = try Checkpoint(path: Fixtures.path(safetensors))
        #expect(a.files.allSatisfy { $0.format == "pytorch" })
        #expect(a.files.count == b.files.count)
        #expect(Set(a.tensors.map(\.info.name)) == Set(b.tensors.map(\.info.name)))
        #expect(a.auxiliaryFiles.sorted() == b.auxiliaryFiles.sorted())
        for (file, info) in a.tensors {
            let other = try #require(b.tensor(named: info.name))
            #expect(info.dtype == other.info.dtype && info.shape == other.info.shape, "\(info.name)")
            let x = try ReadOnlyFile(path: a.files[file].path).read(count: info.byteCount, at: info.offset)
            let y = try ReadOnlyFile(path: b.files[other.file].path).read(count: other.info.byteCount, at: other.info.offset)
            #expect(x == y, "\(info.name) differs")
        }
    }

    @Test("sharding the .bin checkpoint writes the same pieces as sharding the safetensors one", arguments: [1, 2, 4])
    func shardsLikeSafetensors(_ tp: Int) throws {
        try withTempDir { tmp in
            let fromBin = try shardFixture("llama-gqa-bin", tp: tp, to: tmp + "/bin")
            let fromSafetensors = try shardFixture("llama-gqa", tp: tp, to: tmp + "/st")
            #expect(fromBin.tensors == fromSafetensors.tensors)
            #expect(fromBin.source.files == ["pytorch_model.bin"])
            for r in 0..<tp {
                for f in fromBin.ranks[r].files {
                    // Same tensors and bytes; the files' tensor order follows each source's order.
                    #expect(try readRawSafetensors(tmp + "/bin/" + f).tensors == readRawSafetensors(tmp + "/st/" + f).tensors, "rank \(r) \(f)")
                }
            }
            let set = try ShardSet(directory: tmp + "/bin")
            let recon = Verify.reconstruction(set, source: try loadCheckpoint("llama-gqa-bin"))
            #expect(recon.status == "pass", "\(recon.failures)")
        }
    }

    @Test("a directory prefers safetensors to pytorch_model.bin; a .bin alone is found")
    func directoryChoice() throws {
        try withTempDir { tmp in
            try copyFixture("llama-gqa", to: tmp + "/both")
            try FileManager.default.copyItem(atPath: Fixtures.path("llama-gqa-bin/pytorch_model.bin"), toPath: tmp + "/both/pytorch_model.bin")
            #expect(try Checkpoint(path: tmp + "/both").files.map(\.format) == ["safetensors"])
            #expect(try Checkpoint(path: Fixtures.path("llama-gqa-bin")).files.map { $0.path.lastPathComponent } == ["pytorch_model.bin"])
        }
    }
}

