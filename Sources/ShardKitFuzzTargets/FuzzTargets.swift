// Fuzz targets: one function per parser of untrusted bytes. Each feeds the bytes to the parser and
// swallows what it throws (a thrown error is the correct answer to bad input); only crashes,
// sanitizer reports, hangs and unbounded memory are findings. Used by the libFuzzer binary
// (`shardkit-fuzz`, see Fuzz/README.md) and by the corpus replay test.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
// ZipArchive, PickleReader and HDF5Inspection are internal: reached through @testable imports,
// which need modules compiled with -enable-testing (every debug build, and the fuzz build).
#if DEBUG || SHARDKIT_FUZZ_TESTABLE
@testable import ShardKit
@testable import ShardKitHDF5
#else
import ShardKit
#endif

public enum FuzzTargets {
    /// Target names, in the order scripts/fuzz.sh runs them.
    public static let names = ["safetensors", "json", "zip", "pickle", "pytorch", "manifest", "rules", "hdf5-report",
                               "decoders"]

    /// False when the internal parsers are not reachable (a release build without -enable-testing):
    /// then zip, pickle, hdf5-report and decoders do nothing.
    #if DEBUG || SHARDKIT_FUZZ_TESTABLE
    public static let internalsReachable = true
    #else
    public static let internalsReachable = false
    #endif

    /// The target function named `name`, or nil.
    public static func target(_ name: String) -> ((UnsafeRawBufferPointer) -> Void)? {
        switch name {
        case "safetensors": return safetensors
        case "json": return json
        case "zip": return zip
        case "pickle": return pickle
        case "pytorch": return pytorch
        case "manifest": return manifest
        case "rules": return rules
        case "hdf5-report": return hdf5Report
        case "decoders": return decoders
        default: return nil
        }
    }

    // MARK: - Targets

    /// `SafetensorsFile(file:)`: the 8-byte length, the header JSON, the offsets against the file size.
    public static func safetensors(_ data: UnsafeRawBufferPointer) {
        withFile(data) { file in _ = try SafetensorsFile(file: file) }
    }

    /// The strict JSON parser twice: `JSONValue.parse` (tree) and `JSONReader` skipping the document
    /// (pull). They share one tokenizer and must agree on what is valid JSON: a disagreement traps.
    public static func json(_ data: UnsafeRawBufferPointer) {
        var tree: JSONValue?
        do { tree = try JSONValue.parse(data) } catch {}
        var pulled = true
        do {
            var r = JSONReader(bytes: data)
            try r.document { r in try r.skip() }
        } catch { pulled = false }
        if (tree != nil) != pulled {
            fatalError("JSONValue.parse \(tree != nil ? "accepts" : "refuses") a document that JSONReader.skip "
                       + "\(pulled ? "accepts" : "refuses")")
        }
        // Typed reads of the pull reader on whatever the document is.
        do {
            var r = JSONReader(bytes: data)
            try r.document { r in
                try r.object(uniqueKeys: false) { r, _ in
                    if try r.null() { return }
                    if try r.intIfInteger() != nil { return }
                    _ = try r.optionalInts()
                }
            }
        } catch {}
    }

    /// `ZipArchive(file:)`: end record, ZIP64 records, central directory, local headers.
    public static func zip(_ data: UnsafeRawBufferPointer) {
        #if DEBUG || SHARDKIT_FUZZ_TESTABLE
        withFile(data) { file in
            let archive = try ZipArchive(file: file)
            for e in archive.entries { _ = archive.entry(named: e.name) }
        }
        #endif
    }

    /// `PickleReader` with PyTorchFile's interpreter (its globals, BUILD attributes and REDUCE calls),
    /// then `PyTorchFile.stateDict`; persistent ids become storages without an archive behind them.
    public static func pickle(_ data: UnsafeRawBufferPointer) {
        #if DEBUG || SHARDKIT_FUZZ_TESTABLE
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidPyTorchFile, "fuzz: \(message)") }
        var storages: [String: PyTorchFile.Storage] = [:]
        let interpreter = PyTorchFile.interpreter(bad: bad, persistentLoad: { pid in
            guard case .tuple(let t, _) = pid, t.count == 5, case .string("storage") = t[0],
                  case .global(let module, let typeName) = t[1], case .string(let key) = t[2],
                  case .int(let numel) = t[4], numel >= 0 else { throw bad("persistent id") }
            let dtype: DType? = module == "torch" ? PyTorchFile.storageTypes[typeName] : nil
            if let known = storages[key] { return .object(known) }
            guard let bytes = checkedProduct([numel], times: dtype?.size ?? 1) else { throw bad("size") }
            let s = PyTorchFile.Storage(key: key, dtype: dtype, count: numel, dataOffset: 0, byteCount: bytes,
                                          encoding: .raw)
            storages[key] = s
            return .object(s)
        })
        let reader = PickleReader(bytes: Array(data), what: "fuzz: data.pkl", interpreter: interpreter)
        do { _ = try reader.load { root in try PyTorchFile.stateDict(root, bad: bad) } } catch {}
        #endif
    }

    /// `PyTorchFile(file:)`: the whole torch.save reader (ZIP, byteorder, data.pkl, storages, tensors).
    public static func pytorch(_ data: UnsafeRawBufferPointer) {
        withFile(data) { file in _ = try PyTorchFile(file: file) }
    }

    /// `Manifest(json:path:)` (manifest.json and the part files of `--ranks` runs), then
    /// `validate(path:)`, which applies every piece's rule again.
    public static func manifest(_ data: UnsafeRawBufferPointer) {
        do {
            let m = try Manifest(json: Array(data), path: "fuzz/shardkit.json")
            try m.validate(path: "fuzz/shardkit.json")
        } catch {}
    }

    /// A JSON rules file: `RulesFile.ruleSet` (with and without a config.json), then every entry's
    /// rule resolved against a few shapes and laid out for TP 1 to 8, and the rule set assigned to
    /// llama-gqa's tensors. (YAML rules files are parsed by Yams in the CLI, not by ShardKit.)
    public static func rules(_ data: UnsafeRawBufferPointer) {
        guard let json = try? JSONValue.parse(data) else { return }
        _ = try? RulesFile.ruleSet(from: json, origin: "fuzz.json", config: nil)
        guard let set = try? RulesFile.ruleSet(from: json, origin: "fuzz.json", config: llamaConfig) else { return }
        for entry in set.entries {
            for shape in shapes {
                guard let rule = try? entry.rule.resolve(shape: shape, tensor: "t") else { continue }
                let size = rule.dim.flatMap { $0 < shape.count ? shape[$0] : nil } ?? 0
                for tp in [1, 2, 3, 4, 8] {
                    for rank in 0..<tp { _ = try? rule.layout(rank: rank, of: tp, size: size, tensor: "t") }
                }
            }
        }
        _ = try? set.assign(llamaTensors)
    }

    /// `HDF5Inspection.parse`: the JSON report of the HDF5 child process, checked against a file of
    /// 1 MiB.
    public static func hdf5Report(_ data: UnsafeRawBufferPointer) {
        #if DEBUG || SHARDKIT_FUZZ_TESTABLE
        guard let file = reportFile else { return }
        _ = try? HDF5Inspection.parse(Data(data), file: file)
        #endif
    }

    /// The decoders of encoded tensors (Formats/Decoders.swift), over the bytes as a file. Byte 0
    /// chooses: even, `InflatingReader` (a raw deflate stream from byte 8; decoded length from bytes
    /// 1-3, at most 1 MiB; bit 1: the CRC-32 in bytes 4-7 is checked), read whole, then 1 byte in the
    /// middle (a restart); odd, `ChunkedStorage` + `ChunkedReader`: a small dataset (rank 1-3, dims
    /// 0-16, chunks 1-8, element size 1/2/4/8) from bytes 1-8, filters from byte 9 (bit 0 shuffle,
    /// bit 1 deflate, bit 2 deflate listed first), then 3 bytes per chunk (u16 length, filter mask),
    /// then the stored chunks back to back; read whole, then backwards one element at a time.
    public static func decoders(_ data: UnsafeRawBufferPointer) {
        #if DEBUG || SHARDKIT_FUZZ_TESTABLE
        guard data.count >= 10 else { return }
        func u16(_ i: Int) -> Int { Int(data[i]) | Int(data[i + 1]) << 8 }
        let mode = data[0]
        if mode & 1 == 0 {
            let decoded = u16(1) | Int(data[3] & 0x0F) << 16
            let crc: UInt32? = mode & 2 == 0 ? nil
                : UInt32(u16(4)) | UInt32(u16(6)) << 16
            withFile(data) { file in
                guard let record = try? DeflatedRecord(streamOffset: 8, streamBytes: data.count - 8,
                                                       decodedBytes: decoded, crc32: crc, what: "fuzz") else { return }
                let reader = InflatingReader(file: file, record: record)
                _ = try? reader.read(count: decoded, at: 0)
                if decoded > 2 { _ = try reader.read(count: 1, at: decoded / 2) }
            }
            return
        }
        let rank = 1 + Int(data[1] % 3)
        let shape = (0..<rank).map { Int(data[2 + $0] % 17) }
        let chunkShape = (0..<rank).map { 1 + Int(data[5 + $0] % 8) }
        let elementSize = [1, 2, 4, 8][Int(data[8] % 4)]
        var filters: [ChunkedStorage.Filter] = []
        if data[9] & 1 != 0 { filters.append(.shuffle) }
        if data[9] & 2 != 0 { filters.insert(.deflate, at: data[9] & 4 != 0 ? 0 : filters.count) }
        let count = Swift.zip(shape, chunkShape).map { ($0 + $1 - 1) / $1 }.reduce(1, *)
        let table = 10, payload = table + 3 * count
        guard payload <= data.count else { return }
        var chunks: [ChunkedStorage.Chunk] = []
        var offset = payload
        for i in 0..<count {
            let length = u16(table + 3 * i)
            chunks.append(.init(offset: offset, byteCount: length, filterMask: UInt32(data[table + 3 * i + 2] & 3)))
            offset += length
        }
        withFile(data) { file in
            let storage = try ChunkedStorage(shape: shape, chunkShape: chunkShape, elementSize: elementSize,
                                             filters: filters, chunks: chunks, fileSize: file.size, what: "fuzz")
            let reader = ChunkedReader(file: file, storage: storage)
            let total = shape.reduce(1, *) * elementSize
            _ = try? reader.read(count: total, at: 0)
            var at = total - elementSize
            while at >= 0 { _ = try reader.read(count: elementSize, at: at); at -= elementSize * 7 }
        }
        #endif
    }

    // MARK: - Support

    static let llamaConfig = ModelConfig(json: try! JSONValue.parse(Array("""
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 8,
         "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 256, "num_hidden_layers": 2}
        """.utf8)))

    static let shapes: [[Int]] = [[64], [256, 64], [64, 96], [96, 64], [16, 64], [64, 64], [48, 32, 8], [7], []]

    static let llamaTensors: [(name: String, shape: [Int])] = [
        ("lm_head.weight", [256, 64]), ("model.embed_tokens.weight", [256, 64]),
        ("model.layers.0.input_layernorm.weight", [64]), ("model.layers.0.mlp.down_proj.weight", [64, 96]),
        ("model.layers.0.mlp.gate_proj.weight", [96, 64]), ("model.layers.0.mlp.up_proj.weight", [96, 64]),
        ("model.layers.0.post_attention_layernorm.weight", [64]),
        ("model.layers.0.self_attn.k_proj.weight", [16, 64]), ("model.layers.0.self_attn.o_proj.weight", [64, 64]),
        ("model.layers.0.self_attn.q_proj.weight", [64, 64]), ("model.layers.0.self_attn.v_proj.weight", [16, 64]),
        ("model.norm.weight", [64]),
    ]

    /// A 1 MiB file for the HDF5 report's ranges.
    static let reportFile: ReadOnlyFile? = {
        var zeros = [UInt8](repeating: 0, count: 1 << 20)
        return zeros.withUnsafeMutableBytes { b in openAsFile(UnsafeRawBufferPointer(b)) }
    }()

    /// Runs `body` on a `ReadOnlyFile` holding `data`; errors are swallowed.
    static func withFile(_ data: UnsafeRawBufferPointer, _ body: (ReadOnlyFile) throws -> Void) {
        guard let file = openAsFile(data) else { return }
        do { try body(file) } catch {}
    }

    typealias MemfdCreate = @convention(c) (UnsafePointer<CChar>, UInt32) -> Int32
    /// glibc's memfd_create (not in the Glibc module), looked up once.
    static let memfdCreate: MemfdCreate? = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memfd_create") else { return nil }
        return unsafeBitCast(sym, to: MemfdCreate.self)
    }()
    nonisolated(unsafe) static var counter = 0
    static let counterLock = NSLock()

    /// `data` as a file no other process sees: a memfd opened through /proc/self/fd (nothing to clean
    /// up, even after a crash), or else a file in /dev/shm or the temporary directory, unlinked once
    /// it is open.
    static func openAsFile(_ data: UnsafeRawBufferPointer) -> ReadOnlyFile? {
        func fill(_ fd: Int32) -> Bool {
            var done = 0
            while done < data.count {
                let n = write(fd, data.baseAddress! + done, data.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return true
        }
        if let memfdCreate {
            let fd = memfdCreate("shardkit-fuzz", 1 /* MFD_CLOEXEC */)
            if fd >= 0 {
                defer { close(fd) }
                guard fill(fd) else { return nil }
                return try? ReadOnlyFile(path: "/proc/self/fd/\(fd)")
            }
        }
        counterLock.lock(); counter += 1; let n = counter; counterLock.unlock()
        let dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()
        let path = "\(dir)/shardkit-fuzz-\(getpid())-\(n)"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        defer { unlink(path) }
        let ok = fill(fd)
        close(fd)
        return ok ? try? ReadOnlyFile(path: path) : nil
    }
}
