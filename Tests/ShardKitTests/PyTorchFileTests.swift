import Foundation
import Testing
import ShardKit

/// The bytes of a tensor as ShardKit locates it in its file (decoded, for a deflated record).
private func bytes(_ file: CheckpointFile, _ name: String) throws -> [UInt8] {
    guard let t = file.tensors.first(where: { $0.name == name }) else {
        Issue.record("no tensor \(name) in \(file.path)")
        return []
    }
    let (source, offset) = t.byteSource(in: try ReadOnlyFile(path: file.path))
    return try source.read(count: t.byteCount, at: offset)
}

/// Little-endian bytes of values (as a storage record holds them).
func f32(_ values: [Float]) -> [UInt8] {
    values.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
}
func u16(_ values: [UInt16]) -> [UInt8] { values.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) } }

@Suite("PyTorch torch.save checkpoints (fixtures/bad/torch, *-bin fixtures)")
struct PyTorchFileTests {
    static func torchFile(_ name: String) throws -> CheckpointFile {
        try CheckpointFile(path: Fixtures.bad("torch/" + name))
    }

    @Test("valid.bin, its unaligned plainly-zipped twin and its deflated twin give the documented tensors",
          arguments: ["valid.bin", "misaligned.bin", "compressed.bin"])
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
        ("non-contiguous.bin", ["tensor t", "not contiguous", "[1, 3]"]),
        ("legacy-format.bin", ["legacy", "pre-1.6"]),
        ("truncated.bin", ["end-of-central-directory"]),
        ("evil-global.bin", ["os.system", "does not allow"]),
        ("storage-too-small.bin", ["storage 0", "6 F32 elements", "16 bytes"]),
        ("big-endian.bin", ["byteorder", "big"]),
        ("missing-storage.bin", ["storage 2", "data/2"]),
    ])
    func refused(_ name: String, _ words: [String]) throws {
        let error = caught { _ = try Self.torchFile(name) }
        expectShardKitError(error, .invalidPyTorchFile, [name] + words)
    }

    @Test("archives with deflated records (all, or some) hold the stored archive's tensors and shard into its bytes",
          arguments: ["llama-gqa-bin-deflated", "llama-gqa-bin-deflated-mixed"])
    func deflatedArchives(_ fixture: String) throws {
        let deflated = try loadCheckpoint(fixture)
        let encodings = deflated.tensors.map(\.info.encoding)
        #expect(encodings.contains { if case .deflated = $0 { return true }; return false })
        #expect(try tensorDifferences(deflated, loadCheckpoint("llama-gqa-bin")).isEmpty)
        try withTempDir { dir in
            try shardFixture(fixture, tp: 2, to: dir + "/a")
            try shardFixture("llama-gqa-bin", tp: 2, to: dir + "/b")
            for r in 0..<2 {
                let name = "/rank-\(r)/model.safetensors"
                #expect(same(try readBytes(dir + "/a" + name), try readBytes(dir + "/b" + name)))
            }
        }
    }

    @Test("a corrupt deflate stream, and one that decodes to more than the archive says, are refused when read",
          arguments: [("deflate-corrupt.bin", ["corrupt"]), ("deflate-oversize.bin", ["more than"])])
    func badDeflate(_ name: String, _ words: [String]) throws {
        let file = try Self.torchFile(name)
        var failures: [(any Error)?] = []
        for t in file.tensors { failures.append(caught { _ = try bytes(file, t.name) }) }
        let error = failures.compactMap { $0 }.first
        expectShardKitError(error, .invalidCheckpoint, [name, "compressed record"] + words)
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

    @Test("a pytorch_model.bin checkpoint (and a sharded one with its index) has the safetensors tensors bitwise",
          arguments: [("llama-gqa-bin", "llama-gqa"), ("llama-bf16-sharded-bin", "llama-bf16-sharded")])
    func sameAsSafetensors(_ bin: String, _ safetensors: String) throws {
        let a = try Checkpoint(path: Fixtures.path(bin)), b = try Checkpoint(path: Fixtures.path(safetensors))
        #expect(a.files.allSatisfy { $0.format == "pytorch" })
        #expect(a.files.count == b.files.count)
        #expect(a.auxiliaryFiles.sorted() == b.auxiliaryFiles.sorted())
        let differences = try tensorDifferences(a, b)
        #expect(differences.isEmpty, "\(differences)")
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
                    #expect(try readRawSafetensors(tmp + "/bin/" + f).tensors
                            == readRawSafetensors(tmp + "/st/" + f).tensors, "rank \(r) \(f)")
                }
            }
            let set = try ShardSet(directory: tmp + "/bin")
            let recon = Verify.reconstruction(set, source: try loadCheckpoint("llama-gqa-bin"))
            #expect(recon.status == .pass, "\(recon.failures)")
        }
    }

    @Test("a directory prefers safetensors to pytorch_model.bin; a .bin alone is found")
    func directoryChoice() throws {
        try withTempDir { tmp in
            try copyFixture("llama-gqa", to: tmp + "/both")
            try FileManager.default.copyItem(atPath: Fixtures.path("llama-gqa-bin/pytorch_model.bin"),
                                             toPath: tmp + "/both/pytorch_model.bin")
            #expect(try Checkpoint(path: tmp + "/both").files.map(\.format) == ["safetensors"])
            #expect(try Checkpoint(path: Fixtures.path("llama-gqa-bin")).files.map { $0.path.lastPathComponent }
                    == ["pytorch_model.bin"])
        }
    }
}


// MARK: - Hand-built archives: hostile pickles and ZIP structures

/// A minimal torch.save-style archive: stored entries `archive/data.pkl` and `archive/<name>` for
/// each record, a central directory and an end record.
func torchArchive(pickle: [UInt8], records: [(String, [UInt8])] = []) -> [UInt8] {
    func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
    func le32(_ v: Int) -> [UInt8] { le16(v & 0xFFFF) + le16(v >> 16 & 0xFFFF) }
    var out: [UInt8] = [], central: [UInt8] = []
    for (name, data) in [("archive/data.pkl", pickle)] + records.map({ ("archive/" + $0.0, $0.1) }) {
        let n = Array(name.utf8), offset = out.count
        out += le32(0x0403_4B50) + le16(20) + le16(0) + le16(0) + le16(0) + le16(0) + le32(0)
            + le32(data.count) + le32(data.count) + le16(n.count) + le16(0) + n + data
        central += le32(0x0201_4B50) + le16(20) + le16(20) + le16(0) + le16(0) + le16(0) + le16(0) + le32(0)
            + le32(data.count) + le32(data.count) + le16(n.count) + le16(0) + le16(0) + le16(0) + le16(0)
            + le32(0) + le32(offset) + n
    }
    let count = 1 + records.count, directoryOffset = out.count
    return out + central + le32(0x0605_4B50) + le16(0) + le16(0) + le16(count) + le16(count)
        + le32(central.count) + le32(directoryOffset) + le16(0)
}

/// Pickle opcodes, spelled out.
enum P {
    static let proto2: [UInt8] = [0x80, 2], emptyDict: [UInt8] = [0x7D], emptyList: [UInt8] = [0x5D]
    static let mark: [UInt8] = [0x28], none: [UInt8] = [0x4E], newFalse: [UInt8] = [0x89], tuple: [UInt8] = [0x74]
    static let tuple1: [UInt8] = [0x85], tuple2: [UInt8] = [0x86], reduce: [UInt8] = [0x52]
    static let binpersid: [UInt8] = [0x51], setitem: [UInt8] = [0x73], setitems: [UInt8] = [0x75]
    static let append: [UInt8] = [0x61], memoize: [UInt8] = [0x94], stop: [UInt8] = [0x2E]
    static func str(_ s: String) -> [UInt8] {
        let b = Array(s.utf8)
        return [0x58] + withUnsafeBytes(of: UInt32(b.count).littleEndian, Array.init) + b
    }
    static func int(_ v: Int32) -> [UInt8] { [0x4A] + withUnsafeBytes(of: v.littleEndian, Array.init) }
    static func global(_ module: String, _ name: String) -> [UInt8] { [0x63] + Array("\(module)\n\(name)\n".utf8) }
    static func binput(_ k: UInt8) -> [UInt8] { [0x71, k] }
    static func binget(_ k: UInt8) -> [UInt8] { [0x68, k] }
    /// `{name: _rebuild_tensor_v2(FloatStorage '0' of `numel`, 0, shape, stride, False, {})}`
    static func floatTensor(_ name: String, shape: [Int32], stride: [Int32], numel: Int32) -> [UInt8] {
        proto2 + emptyDict + str(name) + global("torch._utils", "_rebuild_tensor_v2") + mark
            + mark + str("storage") + global("torch", "FloatStorage") + str("0") + str("cpu") + int(numel) + tuple
            + binpersid + int(0) + mark + shape.flatMap(int) + tuple + mark + stride.flatMap(int) + tuple + newFalse
            + emptyDict + tuple + reduce + setitem + stop
    }
}

@Suite("PyTorch reader against hand-built hostile archives")
struct HostilePyTorchTests {
    func open(_ bytes: [UInt8]) throws -> CheckpointFile {
        try withTempDir { tmp in
            try writeBytes(bytes, to: tmp + "/x.bin")
            return try CheckpointFile(path: tmp + "/x.bin")
        }
    }

    func refused(_ bytes: [UInt8], _ words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        expectShardKitError(caught { _ = try open(bytes) }, .invalidPyTorchFile, words, sourceLocation: sourceLocation)
    }

    @Test("the builder's well-formed archive reads back (so the refusals below are about what they change)")
    func builderIsValid() throws {
        let data = f32([0, 1, 2, 3, 4, 5])
        let file = try open(torchArchive(pickle: P.floatTensor("t", shape: [2, 3], stride: [3, 1], numel: 6),
                                         records: [("data/0", data)]))
        #expect(file.tensors.map(\.name) == ["t"] && file.tensors[0].shape == [2, 3]
                && file.tensors[0].byteCount == 24)
    }

    @Test("negative sizes are refused as such")
    func negativeShape() {
        refused(torchArchive(pickle: P.floatTensor("t", shape: [-2, -3], stride: [3, 1], numel: 6),
                             records: [("data/0", f32([0, 1, 2, 3, 4, 5]))]),
                ["tensor t", "negative size"])
    }

    @Test("containers nested 60,000 deep are refused, not freed recursively (which overflowed the stack)")
    func deepNesting() {
        let pickle = P.proto2 + P.emptyDict + P.str("a") + P.none + [UInt8](repeating: P.tuple1[0], count: 60_000)
            + P.setitem + P.stop
        refused(torchArchive(pickle: pickle), ["nested more than 64 deep"])
    }

    @Test("a flood of MARKs or memo entries is refused at the cap, with bounded memory")
    func floods() {
        refused(torchArchive(pickle: P.proto2 + [UInt8](repeating: P.mark[0], count: 1_000_001) + P.stop),
                ["open MARKs"])
        refused(torchArchive(pickle: P.proto2 + P.none + [UInt8](repeating: P.memoize[0], count: 2_000_001) + P.stop),
                ["memo entries"])
    }

    @Test("a list appended to itself (a reference cycle) is refused")
    func selfReference() {
        let pickle = P.proto2 + P.emptyDict + P.str("a") + P.emptyList + P.binput(0) + P.binget(0) + P.append
            + P.setitem + P.stop
        refused(torchArchive(pickle: pickle), ["a list inserted into itself"])
    }

    @Test("nesting built top-down (insert empty dicts, fill them later through the memo) is refused")
    func topDownNesting() {
        // d0 = OrderedDict(); then 30,000 times: d_next = OrderedDict(); d_prev["k"] = d_next.
        let orderedDict = P.global("collections", "OrderedDict") + [0x29] + P.reduce
        var pickle = P.proto2 + orderedDict + P.binput(0)
        for _ in 0..<30_000 { pickle += P.str("k") + orderedDict + P.binput(1) + P.setitem + [0x30] + P.binget(1) }
        pickle += [0x30] + P.binget(0) + P.stop
        refused(torchArchive(pickle: pickle), ["changed after being placed inside another value"])
    }

    @Test("shapes of more than 64 dimensions and long storage keys are refused")
    func limits() {
        let ones = [Int32](repeating: 1, count: 65)
        refused(torchArchive(pickle: P.floatTensor("t", shape: ones, stride: ones, numel: 1),
                             records: [("data/0", f32([1]))]), ["more than 64 dimensions"])
        let longKey = String(repeating: "9", count: 33)
        let pickle = P.proto2 + P.emptyDict + P.str("t") + P.global("torch._utils", "_rebuild_tensor_v2") + P.mark
            + P.mark + P.str("storage") + P.global("torch", "FloatStorage") + P.str(longKey) + P.str("cpu") + P.int(1)
            + P.tuple + P.binpersid + P.int(0) + P.mark + P.int(1) + P.tuple + P.mark + P.int(1) + P.tuple + P.newFalse
            + P.emptyDict + P.tuple + P.reduce + P.setitem + P.stop
        refused(torchArchive(pickle: pickle, records: [("data/" + longKey, f32([1]))]),
                ["storage key", "not a short name"])
    }

    @Test("names from the file cannot break the message into lines or send terminal escapes")
    func controlCharactersEscaped() throws {
        let pickle = P.proto2 + P.emptyDict + P.str("x\n\u{1B}[31mred") + P.none + P.setitem + P.stop
        let error = caught { _ = try open(torchArchive(pickle: pickle)) } as? ShardKitError
        let message = try #require(error?.message)
        #expect(message.contains(#"x\x0A\x1B[31mred"#), "\(message)")
        #expect(!message.contains("\n") && !message.contains("\u{1B}"))
    }

    @Test("a tiny ZIP claiming ten million entries is refused before anything is sized by the claim")
    func entryCountBomb() {
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian, Array.init) }
        let body: [UInt8] = [0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0, count: 26)
        let record = le(UInt32(0x0606_4B50)) + le(UInt64(44)) + le(UInt16(45)) + le(UInt16(45)) + le(UInt32(0))
            + le(UInt32(0))
            + le(UInt64(10_000_000)) + le(UInt64(10_000_000)) + le(UInt64(0)) + le(UInt64(0))
        let locator = le(UInt32(0x0706_4B50)) + le(UInt32(0)) + le(UInt64(body.count)) + le(UInt32(1))
        let end = le(UInt32(0x0605_4B50)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(0xFFFF)) + le(UInt16(0xFFFF))
            + le(UInt32(0xFFFF_FFFF)) + le(UInt32(0xFFFF_FFFF)) + le(UInt16(0))
        refused(body + record + locator + end, ["10000000 entries cannot fit"])
    }

    @Test("a tensor named __metadata__ (which safetensors reserves) is refused before anything is written")
    func reservedName() {
        let bytes = torchArchive(pickle: P.floatTensor("__metadata__", shape: [1], stride: [1], numel: 1),
                                 records: [("data/0", f32([1]))])
        expectShardKitError(caught {
            try withTempDir { tmp in
                try writeBytes(bytes, to: tmp + "/pytorch_model.bin")
                _ = try Checkpoint(path: tmp)
            }
        }, .invalidCheckpoint, ["__metadata__", "reserves"])
    }

    @Test("a FIFO is refused at once instead of blocking the open")
    func fifo() throws {
        try withTempDir { tmp in
            #expect(mkfifo(tmp + "/model.safetensors", 0o600) == 0)
            expectShardKitError(caught { _ = try Checkpoint(path: tmp) }, .io, ["not a regular file"])
        }
    }

    @Test("a .safetensors name is read as safetensors even when the bytes start like a ZIP")
    func nameDecides() throws {
        try withTempDir { tmp in
            try FileManager.default.copyItem(atPath: Fixtures.bad("torch/valid.bin"),
                                             toPath: tmp + "/model.safetensors")
            expectShardKitError(caught { _ = try CheckpointFile(path: tmp + "/model.safetensors") },
                                .invalidSafetensors, ["model.safetensors"])
        }
    }
}
