/// A validated PyTorch checkpoint file in the zip format `torch.save` writes (torch ≥ 1.6, e.g.
/// `pytorch_model.bin`): a state dict of tensors, each read in place from the archive's stored
/// storage records, like a safetensors tensor from its data area.
///
/// Layout: a ZIP archive with one top folder `<archive>/` holding `data.pkl` (the pickled dict),
/// `data/<key>` (one record per storage) and `byteorder`, `version`, ... records. In the
/// pickle, a tensor is `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
/// requires_grad, hooks[, metadata])` (or `_rebuild_tensor_v3(..., dtype[, metadata])` for dtypes
/// without a legacy storage class, such as float8), and a storage is the persistent id
/// `('storage', torch.<Type>Storage, key, location, numel)`.
///
/// The pickle is never executed: `PickleReader` accepts only the globals of `allowedGlobals` (what
/// torch writes for a state dict), refusing any other where it is named, and BUILD only as torch
/// writes it (an OrderedDict's `_metadata`, dropped). Checked before a tensor is handed out: the
/// archive's entry table (`ZipArchive`), records stored or deflated (torch.save stores them; some
/// tools deflate them, and those are decoded in bounded steps, never whole) and little-endian, each
/// storage record's size against its element count, each tensor row-major contiguous and inside
/// its storage (overflow-checked). Tensors may share storage (views, tied weights).
public struct PyTorchFile: Sendable {
    public let path: String
    /// Tensors in the state dict's order.
    public let tensors: [TensorInfo]

    /// Most bytes of `data.pkl` accepted.
    static let maxPickleSize = 1 << 30

    /// Legacy storage classes, by name in the `torch` module.
    static let storageTypes: [String: DType] = [
        "FloatStorage": .f32, "DoubleStorage": .f64, "HalfStorage": .f16, "BFloat16Storage": .bf16,
        "LongStorage": .i64, "IntStorage": .i32, "ShortStorage": .i16, "CharStorage": .i8,
        "ByteStorage": .u8, "BoolStorage": .bool, "ComplexFloatStorage": .c64,
    ]
    /// `torch.<name>` dtypes (the `dtype` argument of `_rebuild_tensor_v3`), by the canonical names
    /// torch pickles them under (`torch.float` is written `torch.float32`: aliases never appear).
    static let dtypes: [String: DType] = [
        "float32": .f32, "float64": .f64, "float16": .f16, "bfloat16": .bf16, "int64": .i64,
        "int32": .i32, "int16": .i16, "int8": .i8, "uint8": .u8, "bool": .bool, "uint16": .u16,
        "uint32": .u32, "uint64": .u64, "float8_e4m3fn": .f8e4m3, "float8_e5m2": .f8e5m2,
        "float8_e8m0fnu": .f8e8m0, "complex64": .c64,
    ]
    /// The calls `reduce` interprets.
    static let calls: [PickleReader.Global] = [
        .init(module: "collections", name: "OrderedDict"),
        .init(module: "torch._utils", name: "_rebuild_tensor_v2"),
        .init(module: "torch._utils", name: "_rebuild_tensor_v3"),
        .init(module: "torch._utils", name: "_rebuild_parameter"),
        .init(module: "torch._utils", name: "_rebuild_parameter_with_state"),
    ]
    /// The storage type of a persistent id for an untyped storage (torch 2.x, `_rebuild_tensor_v3`).
    static let untypedStorage = PickleReader.Global(module: "torch.storage", name: "UntypedStorage")
    /// Every global `data.pkl` may name, which is exactly what this reader accepts and what torch
    /// 2.x writes for a state dict: the calls above, the storage types of persistent ids and the
    /// dtypes of `_rebuild_tensor_v3`. `PickleReader` refuses any other where it appears.
    static let allowedGlobals: Set<PickleReader.Global> = Set(calls + [untypedStorage]
        + storageTypes.keys.map { PickleReader.Global(module: "torch", name: $0) }
        + dtypes.keys.map { PickleReader.Global(module: "torch", name: $0) })
    /// The only attribute BUILD may set: torch pickles a `state_dict()` (an OrderedDict) with its
    /// `_metadata` (module versions) as BUILD state. It is dropped.
    static let dictAttributes: Set<String> = ["_metadata"]

    /// True when the file at `path` starts like a ZIP archive (how `torch.save` files begin).
    public static func looksLikeZip(_ file: ReadOnlyFile) -> Bool {
        guard file.size >= 4, let head = try? file.read(count: 4, at: 0) else { return false }
        return head == [0x50, 0x4B, 0x03, 0x04]
    }

    public init(path: String) throws {
        try self.init(file: ReadOnlyFile(path: path))
    }

    public init(file: ReadOnlyFile) throws {
        let path = file.path
        func bad(_ message: String) -> ShardKitError {
            ShardKitError(.invalidPyTorchFile, "\(path): \(message)")
        }
        guard PyTorchFile.looksLikeZip(file) else {
            if file.size >= 2, let head = try? file.read(count: 2, at: 0), head[0] == 0x80 {
                throw bad("a legacy (pre-1.6, non-zip) torch.save file; re-save it with a current torch.save, "
                          + "or as safetensors")
            }
            throw bad("not a PyTorch checkpoint (torch.save writes a ZIP archive, which starts with PK\\x03\\x04)")
        }
        let zip = try ZipArchive(file: file)
        let pickles = zip.entries.filter {
            $0.name.hasSuffix("/data.pkl")
                && $0.name.split(separator: "/", omittingEmptySubsequences: false).count == 2
        }
        guard pickles.count == 1, let pickle = pickles.first else {
            throw bad(pickles.isEmpty ? "no <archive>/data.pkl record: not a torch.save archive"
                                      : "several data.pkl records (\(pickles.map(\.name).joined(separator: ", ")))")
        }
        let prefix = String(pickle.name.dropLast("data.pkl".count))

        /// How a record's bytes are stored: in place, or deflated (checked against the entry's sizes).
        func encoding(_ entry: ZipArchive.Entry) throws -> TensorEncoding {
            guard !entry.encrypted else { throw bad("record \(entry.name) is encrypted") }
            switch entry.method {
            case 0:
                guard entry.compressedSize == entry.size else {
                    throw bad("record \(entry.name) is stored but its sizes differ (\(entry.compressedSize) "
                              + "and \(entry.size))")
                }
                return .raw
            case 8:
                return .deflated(try DeflatedRecord(streamOffset: entry.dataOffset, streamBytes: entry.compressedSize,
                                                    decodedBytes: entry.size, crc32: entry.crc32,
                                                    what: "\(path): record \(entry.name)"))
            default:
                throw bad("record \(entry.name) uses ZIP compression method \(entry.method); only stored (0) and "
                          + "deflate (8) records are read")
            }
        }
        /// A small record's whole bytes (the caller bounds `entry.size`).
        func contents(_ entry: ZipArchive.Entry) throws -> [UInt8] {
            if case .deflated(let record) = try encoding(entry) {
                return try InflatingReader.decodeAll(file: file, record: record)
            }
            return try file.read(count: entry.size, at: entry.dataOffset)
        }
        if let order = zip.entry(named: prefix + "byteorder") {
            guard order.size <= 16 else { throw bad("byteorder record of \(order.size) bytes") }
            let value = String(decoding: try contents(order), as: UTF8.self)
            guard value == "little" else {
                throw bad("byteorder is \"\(value)\"; only little-endian checkpoints are read")
            }
        }
        guard pickle.size <= PyTorchFile.maxPickleSize else {
            throw bad("data.pkl of \(pickle.size) bytes is too large")
        }
        let pickleBytes = try contents(pickle)

        // Storages by key; the same key must always be described the same way.
        var storages: [String: Storage] = [:]
        let interpreter = PyTorchFile.interpreter(bad: bad, persistentLoad: { pid in
            guard case .tuple(let t, _) = pid, t.count == 5, case .string("storage") = t[0],
                  case .global(let module, let typeName) = t[1], case .string(let key) = t[2],
                  case .string = t[3], case .int(let numel) = t[4], numel >= 0 else {
                throw bad("data.pkl has a persistent id that is not ('storage', type, key, location, numel): "
                          + pid.typeName)
            }
            let dtype: DType?
            if module == "torch", let d = PyTorchFile.storageTypes[typeName] {
                dtype = d
            } else if PickleReader.Global(module: module, name: typeName) == PyTorchFile.untypedStorage {
                dtype = nil
            } else {
                throw bad("storage type \(module).\(typeName) is not supported")
            }
            // torch names storages "0", "1", ...: a long key is not one (and would be hashed
            // again at every reference).
            guard key.utf8.count <= 32,
                  key.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") }) else {
                throw bad("storage key \(key.prefix(40))... is not a short name")
            }
            if let known = storages[key] {
                guard known.dtype == dtype, known.count == numel else {
                    throw bad("storage \(key) is described two different ways")
                }
                return .object(known)
            }
            guard let entry = zip.entry(named: prefix + "data/" + key) else {
                throw bad("data.pkl refers to storage \(key), but the archive has no record "
                          + "\(prefix)data/\(key)")
            }
            let encoding = try encoding(entry)
            guard let bytes = checkedProduct([numel], times: dtype?.size ?? 1), bytes == entry.size else {
                throw bad("storage \(key) should hold \(numel) \(dtype?.rawValue ?? "byte") elements, "
                          + "but its record has \(entry.size) bytes")
            }
            let s = Storage(key: key, dtype: dtype, count: numel, dataOffset: entry.dataOffset,
                            byteCount: entry.size, encoding: encoding)
            storages[key] = s
            return .object(s)
        })
        let reader = PickleReader(bytes: pickleBytes, what: "\(path): data.pkl", interpreter: interpreter)
        self.tensors = try reader.load { root in try PyTorchFile.stateDict(root, bad: bad) }
        self.path = path
    }

    /// The pickle interpreter of a state dict: exactly the allowed globals, BUILD attributes and calls;
    /// `persistentLoad` turns a storage's persistent id into its `Storage`.
    static func interpreter(bad: @escaping (String) -> ShardKitError,
                            persistentLoad: @escaping (PickleReader.Value) throws -> PickleReader.Value)
        -> PickleReader.Interpreter {
        PickleReader.Interpreter(globals: allowedGlobals, dictAttributes: dictAttributes,
                                 reduce: { callable, args in try reduce(callable, args, bad: bad) },
                                 persistentLoad: persistentLoad)
    }

    /// The tensors of a `{name: tensor}` dict, in its order.
    static func stateDict(_ root: PickleReader.Value,
                          bad: (String) -> ShardKitError) throws -> [TensorInfo] {
        guard case .dict(let dict) = root else {
            throw bad("data.pkl holds a \(root.typeName), not a state dict (a dict of tensors)")
        }
        var tensors: [TensorInfo] = []
        var seen = Set<String>()
        for (key, value) in dict.items {
            guard case .string(let name) = key else {
                throw bad("state dict key is a \(key.typeName), not a string")
            }
            guard case .object(let object) = value, let t = object as? TensorRef else {
                throw bad("state dict entry \(name) is a \(value.typeName), not a tensor (nested dicts, "
                          + "e.g. {\"model\": {...}}, are not read; save the state dict itself)")
            }
            guard seen.insert(name).inserted else { throw bad("tensor \(name) appears twice") }
            tensors.append(try t.info(name: name, bad: bad))
        }
        return tensors
    }

    /// One storage record of the archive.
    final class Storage {
        let key: String
        /// nil: an untyped storage (`count` bytes), typed by the tensor.
        let dtype: DType?
        let count: Int
        let dataOffset: Int
        let byteCount: Int
        /// `.raw`: the record's bytes are at `dataOffset`; `.deflated`: they are its decoded stream.
        let encoding: TensorEncoding
        init(key: String, dtype: DType?, count: Int, dataOffset: Int, byteCount: Int, encoding: TensorEncoding) {
            self.key = key; self.dtype = dtype; self.count = count
            self.dataOffset = dataOffset; self.byteCount = byteCount; self.encoding = encoding
        }
    }

    /// A tensor as `_rebuild_tensor_v2/v3` describe it, before validation.
    final class TensorRef {
        let storage: Storage
        let dtype: DType
        let storageOffset: Int
        let shape: [Int]
        let stride: [Int]
        init(storage: Storage, dtype: DType, storageOffset: Int, shape: [Int], stride: [Int]) {
            self.storage = storage; self.dtype = dtype; self.storageOffset = storageOffset
            self.shape = shape; self.stride = stride
        }

        /// The tensor's byte range, once it is known to be contiguous and inside its storage.
        func info(name: String, bad: (String) -> ShardKitError) throws -> TensorInfo {
            guard shape.count == stride.count else {
                throw bad("tensor \(name): \(shape.count) sizes but \(stride.count) strides")
            }
            guard shape.allSatisfy({ $0 >= 0 }) else {
                throw bad("tensor \(name): shape \(shape) has a negative size")
            }
            guard let count = checkedProduct(shape) else { throw bad("tensor \(name): shape \(shape) overflows") }
            if count > 0 {
                var expected = 1
                for d in shape.indices.reversed() {
                    guard shape[d] == 1 || stride[d] == expected else {
                        throw bad("tensor \(name) is not contiguous (shape \(shape), strides \(stride)); "
                                  + "save it after .contiguous()")
                    }
                    expected *= shape[d]
                }
            }
            guard storageOffset >= 0,
                  let first = checkedProduct([storageOffset], times: dtype.size),
                  let length = checkedProduct([count], times: dtype.size),
                  let end = checkedSum([first, length]), end <= storage.byteCount else {
                throw bad("tensor \(name) (\(count) \(dtype.rawValue) elements at element \(storageOffset)) runs "
                          + "past the end of its storage \(storage.key) (\(storage.byteCount) bytes)")
            }
            if storage.encoding != .raw {
                return TensorInfo(name: name, dtype: dtype, shape: shape, offset: first, byteCount: length,
                                  encoding: storage.encoding)
            }
            return TensorInfo(name: name, dtype: dtype, shape: shape, offset: storage.dataOffset + first,
                              byteCount: length)
        }
    }

    /// Most dimensions of a tensor (also the safetensors writer's and the HDF5 reader's limit).
    static let maxRank = 64

    static func ints(_ v: PickleReader.Value) -> [Int]? {
        guard case .tuple(let items, _) = v, items.count <= maxRank else { return nil }
        var out: [Int] = []
        for i in items { guard case .int(let n) = i else { return nil }; out.append(n) }
        return out
    }

    /// The calls a state dict makes, and nothing else.
    static func reduce(_ callable: PickleReader.Value, _ args: [PickleReader.Value],
                       bad: (String) -> ShardKitError) throws -> PickleReader.Value {
        guard case .global(let module, let name) = callable else {
            throw bad("data.pkl calls a \(callable.typeName), which is not allowed")
        }
        switch (module, name) {
        case ("collections", "OrderedDict"):
            guard args.isEmpty else { throw bad("OrderedDict called with arguments") }
            return .dict(PickleReader.PickleDict())
        case ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"):
            let v3 = name == "_rebuild_tensor_v3"
            guard args.count >= (v3 ? 7 : 6), args.count <= (v3 ? 8 : 7),
                  case .object(let o) = args[0], let storage = o as? Storage,
                  case .int(let offset) = args[1], let shape = ints(args[2]), let stride = ints(args[3]) else {
                throw bad("\(name) called with unexpected arguments (or a shape of more than \(maxRank) "
                          + "dimensions)")
            }
            var dtype: DType
            if v3 {
                guard case .global("torch", let dtypeName) = args[6], let d = dtypes[dtypeName] else {
                    throw bad("\(name): dtype \(args[6].typeName) is not supported")
                }
                dtype = d
                if let s = storage.dtype, s != d {
                    throw bad("\(name): a \(d.rawValue) tensor on a \(s.rawValue) storage")
                }
            } else {
                guard let d = storage.dtype else {
                    throw bad("\(name): a tensor on an untyped storage without a dtype")
                }
                dtype = d
            }
            return .object(TensorRef(storage: storage, dtype: dtype, storageOffset: offset, shape: shape,
                                     stride: stride))
        case ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"):
            guard let first = args.first, case .object(let o) = first, o is TensorRef else {
                throw bad("\(name) called without a tensor")
            }
            return first
        default:
            throw bad("data.pkl calls \(module).\(name), which ShardKit does not allow (only the tensors of a "
                      + "state dict are read; no pickled code is run)")
        }
    }
}
