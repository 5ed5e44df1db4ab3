import CHDF5
import ShardKit
import Synchronization

/// HDF5 weights files (`.h5`, `.hdf5`), read through the system libhdf5 for their structure and by
/// ShardKit for their bytes.
///
/// Names: a dataset's path in the file with every `/` read as `.`, so a model saved the natural h5py
/// way (`model/layers/0/self_attn/q_proj/weight`) has its Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`), and root-level datasets already named with dots keep
/// their names. Two datasets that map to one name are refused. With `rootGroup` set (a Keras model
/// keeps everything under a group named after the model), only datasets under that group are read,
/// named without it.
///
/// Bytes: a contiguous dataset is one byte range of the file, read with `pread` like a safetensors
/// tensor. A chunked dataset is read chunk by chunk (`ChunkedStorage`): libhdf5 reports where each
/// chunk is stored, and ShardKit decodes the chunks itself (zlib for deflate/gzip, and the shuffle
/// filter), a few at a time. Any other filter (szip, lzf, blosc, fletcher32, plugins) is refused by
/// name, and libhdf5 never loads filter plugins. Refused too: compact, virtual and external datasets,
/// never-written data or chunks, big-endian or non-IEEE types, types other than floats, integers and
/// h5py's boolean enum. 16-bit floats are f16 or, by their bit layout (8 exponent and 7 mantissa
/// bits), bf16. Each dataset's first values are also read through libhdf5 and compared with what
/// ShardKit reads, so a wrong offset or a wrong decoding cannot go unnoticed.
///
/// libhdf5 is not hardened against hostile files: some malformed files crash it or corrupt its
/// memory. With `inspector` set, libhdf5 runs in a child process (`inspector` + `["--root", GROUP]`
/// when `rootGroup` is set + `["--", path]` must run `HDF5Format.inspectionReport(path:rootGroup:)`
/// and print it; the shardkit command has a hidden `hdf5-inspect` subcommand for this), under a time
/// limit; its answer is validated again here. A
/// crash is then a clear error instead of a dead or corrupted process.
///
/// Pass `HDF5Format()` (or `HDF5Format(inspector:)`) in `formats:` to `Checkpoint(path:formats:)`.
public struct HDF5Format: WeightsFileFormat {
    /// The command that inspects a file out of process (the file's path is appended); nil: in process.
    public let inspector: [String]?
    /// Longest an inspection may take before the child is killed.
    public var inspectionTimeout: Double = 300
    /// A top-level group whose datasets are the tensors, named without it (nil: every dataset).
    public var rootGroup: String?

    public init(inspector: [String]? = nil, rootGroup: String? = nil) {
        self.inspector = inspector; self.rootGroup = rootGroup
    }
    public var name: String { "hdf5" }
    public var suffixes: [String] { [".h5", ".hdf5"] }
    /// Keras' and Hugging Face's (TensorFlow) names.
    public var standardNames: [String] { ["model.h5", "tf_model.h5", "model.weights.h5"] }

    public func recognizes(_ file: ReadOnlyFile) -> Bool { HDF5Format.hasSignature(file) }

    /// The 8-byte HDF5 signature, at byte 0 or (after a user block) at 512, 1024, 2048, ...
    public static func hasSignature(_ file: ReadOnlyFile) -> Bool {
        let signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]
        var offset = 0
        while offset + 8 <= file.size {
            if (try? file.read(count: 8, at: offset)) == signature { return true }
            offset = offset == 0 ? 512 : offset * 2
        }
        return false
    }


    public func tensors(in file: ReadOnlyFile) throws -> [TensorInfo] {
        let datasets: [TensorInfo]
        if let inspector {
            let arguments = inspector + (rootGroup.map { ["--root", $0] } ?? []) + ["--"]
            datasets = try HDF5Inspection.run(arguments, file: file, timeout: inspectionTimeout)
        } else {
            datasets = try HDF5Format.inProcess(file, rootGroup: rootGroup)
        }
        return try HDF5Format.named(datasets, file: file.path)
    }

    /// The datasets of the file (or of its group `rootGroup`), named by their paths (in the group).
    static func inProcess(_ file: ReadOnlyFile, rootGroup: String? = nil) throws -> [TensorInfo] {
        // libhdf5 calls are serialized (Debian's build is thread-safe only behind one global lock).
        try HDF5Format.lock.withLock { _ in try HDF5Reader(file: file, rootGroup: rootGroup).tensors() }
    }

    /// Tensors named from dataset paths (`a/b/c` → `a.b.c`); two datasets that map to one name are
    /// refused.
    static func named(_ datasets: [TensorInfo], file: String) throws -> [TensorInfo] {
        var byName: [String: String] = [:]
        return try datasets.map { t in
            var t = t
            let path = t.name
            t.name = path.split(separator: "/", omittingEmptySubsequences: false).joined(separator: ".")
            if let other = byName.updateValue(path, forKey: t.name) {
                throw ShardKitError(.invalidHDF5File, "\(file): datasets \(other) and \(path) both name the tensor "
                                                      + "\(t.name)")
            }
            return t
        }
    }

    private static let lock = Mutex(())

    /// What an inspection child prints: the file's (or its group's) datasets, or the error, as one
    /// JSON object.
    public static func inspectionReport(path: String, rootGroup: String? = nil) -> String {
        HDF5Inspection.report(path: path, rootGroup: rootGroup)
    }
}

/// One pass over an open HDF5 file. Call only under `HDF5Format.lock`.
private struct HDF5Reader {
    let file: ReadOnlyFile
    /// The group whose datasets are read (nil: the whole file).
    let rootGroup: String?
    var path: String { file.path }

    func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidHDF5File, "\(path): \(message)") }

    /// The innermost message of libhdf5's error stack (it is not printed: automatic printing is off).
    static func lastError() -> String {
        var messages: [String] = []
        _ = withUnsafeMutablePointer(to: &messages) { box in
            H5Ewalk2(shardkit_h5e_default(), H5E_WALK_DOWNWARD, { _, error, data in
                if let error, let desc = error.pointee.desc {
                    data!.assumingMemoryBound(to: [String].self).pointee.append(String(cString: desc))
                }
                return 0
            }, box)
        }
        return messages.last ?? "unknown HDF5 error"
    }

    func tensors() throws -> [TensorInfo] {
        H5open()
        H5Eset_auto2(shardkit_h5e_default(), nil, nil)
        // Filter plugins are shared libraries named by the file: never load one.
        H5PLset_loading_state(0)
        let fid = H5Fopen(path, shardkit_h5f_acc_rdonly(), shardkit_h5p_default())
        guard fid >= 0 else { throw bad("libhdf5 cannot open it: \(HDF5Reader.lastError())") }
        defer { H5Fclose(fid) }

        // The visit starts at the root group, or only at `rootGroup` (names are then relative to it).
        var start = fid
        if let rootGroup {
            guard !rootGroup.isEmpty, H5Lexists(fid, rootGroup, shardkit_h5p_default()) > 0,
                  H5Oexists_by_name(fid, rootGroup, shardkit_h5p_default()) > 0 else {
                throw bad("no group \(rootGroup) in the file")
            }
            start = H5Gopen2(fid, rootGroup, shardkit_h5p_default())
            guard start >= 0 else { throw bad("\(rootGroup) is not a group: \(HDF5Reader.lastError())") }
        }
        defer { if start != fid { H5Gclose(start) } }

        var names: [String] = []
        let visited = withUnsafeMutablePointer(to: &names) { box in
            H5Ovisit2(start, H5_INDEX_NAME, H5_ITER_INC, { _, name, info, data in
                if let name, let info, info.pointee.type == H5O_TYPE_DATASET {
                    data!.assumingMemoryBound(to: [String].self).pointee.append(String(cString: name))
                }
                return 0
            }, box, UInt32(H5O_INFO_BASIC))
        }
        guard visited >= 0 else { throw bad("cannot list its objects: \(HDF5Reader.lastError())") }
        return try names.map { try dataset($0, in: start) }
    }

    func dataset(_ name: String, in fid: hid_t) throws -> TensorInfo {
        func badSet(_ message: String) -> ShardKitError { bad("dataset \(name): \(message)") }
        let did = H5Dopen2(fid, name, shardkit_h5p_default())
        guard did >= 0 else { throw badSet("cannot be opened: \(HDF5Reader.lastError())") }
        defer { H5Dclose(did) }

        // Storage first: one contiguous range of the file. (Asking a virtual dataset for its dataspace
        // makes libhdf5 open the source files it names, any path at all: refuse it before that.)
        let dcpl = H5Dget_create_plist(did)
        guard dcpl >= 0 else { throw badSet("no creation properties: \(HDF5Reader.lastError())") }
        defer { H5Pclose(dcpl) }
        let layout = H5Pget_layout(dcpl)
        let repack = "rewrite the file with contiguous or gzip-chunked datasets, e.g. `h5repack -l CONTI IN OUT`"
        switch layout {
        case H5D_CONTIGUOUS:
            guard H5Pget_nfilters(dcpl) == 0 else { throw badSet("has filters; \(repack)") }
        case H5D_CHUNKED: break
        case H5D_COMPACT: throw badSet("has compact layout (stored in its object header); \(repack)")
        case H5D_VIRTUAL: throw badSet("is a virtual dataset (its data is in other datasets or files); \(repack)")
        default: throw badSet("has layout \(layout.rawValue) (virtual?), not contiguous; \(repack)")
        }
        guard H5Pget_external_count(dcpl) == 0 else { throw badSet("stores its data in external files; \(repack)") }
        if layout == H5D_CHUNKED {
            // Partial edge chunks stored unfiltered, with a filter mask that says they were filtered.
            var options: UInt32 = 0
            guard H5Pget_chunk_opts(dcpl, &options) >= 0 else { throw badSet("cannot read its chunk options") }
            guard options & UInt32(H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS) == 0 else {
                throw badSet("stores its partial edge chunks unfiltered (H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS); "
                             + repack)
            }
        }
        // Shape.
        let space = H5Dget_space(did)
        guard space >= 0 else { throw badSet("no dataspace: \(HDF5Reader.lastError())") }
        defer { H5Sclose(space) }
        let shape: [Int]
        switch H5Sget_simple_extent_type(space) {
        case H5S_SCALAR: shape = []
        case H5S_SIMPLE:
            let rank = Int(H5Sget_simple_extent_ndims(space))
            guard rank >= 0, rank <= 64 else { throw badSet("rank \(rank) is not supported") }
            var dims = [hsize_t](repeating: 0, count: rank)
            guard H5Sget_simple_extent_dims(space, &dims, nil) == rank else {
                throw badSet("cannot read its dimensions")
            }
            shape = try dims.map { d in
                guard let v = Int(exactly: d) else { throw badSet("dimension \(d) is too large") }
                return v
            }
        default: throw badSet("has a null dataspace (no elements, no shape)")
        }

        // Element type.
        let type = H5Dget_type(did)
        guard type >= 0 else { throw badSet("no datatype: \(HDF5Reader.lastError())") }
        defer { H5Tclose(type) }
        let dtype = try self.dtype(of: type, dataset: name)

        guard let count = checkedProduct(shape), let byteCount = checkedProduct([count], times: dtype.size) else {
            throw badSet("shape \(shape) overflows")
        }

        if byteCount == 0 {
            return TensorInfo(name: name, dtype: dtype, shape: shape, offset: 0, byteCount: 0)
        }
        if layout == H5D_CHUNKED {
            let filters = try self.filters(dcpl, dataset: name, elementSize: dtype.size, repack: repack)
            let storage = try chunks(did, dcpl: dcpl, shape: shape, dtype: dtype, filters: filters, dataset: name)
            let info = TensorInfo(name: name, dtype: dtype, shape: shape, offset: 0, byteCount: byteCount,
                                  encoding: .chunked(storage))
            try checkFirstValues(did, type: type, info: info)
            return info
        }
        let address = H5Dget_offset(did)
        guard address != shardkit_haddr_undef() else {
            throw badSet("has no data in the file (never written); write it, or drop it from the file")
        }
        let stored = H5Dget_storage_size(did)
        guard stored == UInt64(byteCount) else {
            throw badSet("stores \(stored) bytes, but \(shape) × \(dtype.rawValue) needs \(byteCount)")
        }
        guard let offset = Int(exactly: address), let end = checkedSum([offset, byteCount]), end <= file.size else {
            throw badSet("data (\(byteCount) bytes at \(address)) runs past the end of the file "
                         + "(\(file.size) bytes); the file is truncated")
        }
        let info = TensorInfo(name: name, dtype: dtype, shape: shape, offset: offset, byteCount: byteCount)
        try checkFirstValues(did, type: type, info: info)
        return info
    }

    /// HDF5's filter ids, for messages.
    static let filterNames: [Int32: String] = [
        3: "fletcher32 (checksum)", 4: "szip", 5: "nbit", 6: "scaleoffset", 307: "bzip2", 32000: "lzf",
        32001: "blosc", 32004: "lz4", 32008: "bitshuffle", 32013: "zfp", 32015: "zstd", 32026: "blosc2",
    ]

    /// A chunked dataset's filter pipeline, if ShardKit decodes every filter of it (deflate, shuffle).
    func filters(_ dcpl: hid_t, dataset name: String, elementSize: Int,
                 repack: String) throws -> [ChunkedStorage.Filter] {
        let count = H5Pget_nfilters(dcpl)
        guard count >= 0, count <= 32 else { throw bad("dataset \(name): cannot read its filters") }
        return try (0..<UInt32(count)).map { i in
            var flags: UInt32 = 0, values = [UInt32](repeating: 0, count: 8), nValues = 8, config: UInt32 = 0
            var nameBuffer = [CChar](repeating: 0, count: 64)
            let id = H5Pget_filter2(dcpl, i, &flags, &nValues, &values, 64, &nameBuffer, &config)
            switch id {
            case 1: return .deflate
            case 2:
                // libhdf5 records the element size it shuffled with; ShardKit unshuffles with the dtype's.
                guard nValues >= 1, Int(values[0]) == elementSize else {
                    let recorded = nValues >= 1 ? Int(values[0]) : 0
                    throw bad("dataset \(name): its shuffle filter's element size (\(recorded)) "
                              + "is not its type's (\(elementSize))")
                }
                return .shuffle
            default:
                let what = HDF5Reader.filterNames[id].map { "the \($0) filter" } ?? "filter \(id) (a plugin)"
                throw bad("dataset \(name) is compressed with \(what); ShardKit decodes only gzip/deflate and "
                          + "shuffle (filter plugins are never loaded); \(repack)")
            }
        }
    }

    /// Where each chunk of a chunked dataset is stored, in row-major grid order, as libhdf5 reports it.
    func chunks(_ did: hid_t, dcpl: hid_t, shape: [Int], dtype: DType, filters: [ChunkedStorage.Filter],
                dataset name: String) throws -> ChunkedStorage {
        func badSet(_ message: String) -> ShardKitError { bad("dataset \(name): \(message)") }
        var chunkDims = [hsize_t](repeating: 0, count: max(shape.count, 1))
        guard !shape.isEmpty, H5Pget_chunk(dcpl, Int32(shape.count), &chunkDims) == Int32(shape.count) else {
            throw badSet("cannot read its chunk shape")
        }
        let chunkShape = try chunkDims.map { d in
            guard let v = Int(exactly: d), v > 0 else { throw badSet("chunk dimension \(d) is out of range") }
            return v
        }
        guard let (grid, count) = ChunkedStorage.grid(shape: shape, chunkShape: chunkShape),
              count <= ChunkedStorage.maxChunks else {
            throw badSet("more than \(ChunkedStorage.maxChunks) chunks; repack with larger chunks")
        }
        var chunks: [ChunkedStorage.Chunk] = []
        chunks.reserveCapacity(count)
        var coords = [Int](repeating: 0, count: shape.count)
        for _ in 0..<count {
            var start = zip(coords, chunkShape).map { hsize_t($0 * $1) }
            var mask: UInt32 = 0, address: haddr_t = 0, size: hsize_t = 0
            guard H5Dget_chunk_info_by_coord(did, &start, &mask, &address, &size) >= 0 else {
                throw badSet("cannot locate its chunk at \(start): \(HDF5Reader.lastError())")
            }
            guard address != shardkit_haddr_undef() else {
                throw badSet("its chunk at \(start) was never written (it would be the fill value); write "
                             + "every chunk, or repack the file")
            }
            guard let offset = Int(exactly: address), let bytes = Int(exactly: size) else {
                throw badSet("chunk at \(start) has an out-of-range address or size")
            }
            chunks.append(ChunkedStorage.Chunk(offset: offset, byteCount: bytes, filterMask: mask))
            // Next grid coordinate, row-major.
            var d = shape.count - 1
            while d >= 0 { coords[d] += 1; if coords[d] < grid[d] { break }; coords[d] = 0; d -= 1 }
        }
        do {
            return try ChunkedStorage(shape: shape, chunkShape: chunkShape, elementSize: dtype.size, filters: filters,
                                      chunks: chunks, fileSize: file.size, what: "\(path): dataset \(name)")
        } catch let e as ShardKitError {
            throw ShardKitError(.invalidHDF5File, e.message)
        }
    }

    /// The dtype of an HDF5 type, or an error saying why it cannot be read in place.
    func dtype(of type: hid_t, dataset name: String) throws -> DType {
        func badType(_ message: String) -> ShardKitError { bad("dataset \(name): \(message)") }
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_FLOAT:
            guard H5Tget_order(type) == H5T_ORDER_LE else {
                throw badType("big-endian floats are not read (ShardKit moves bytes as they are)")
            }
            var spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0
            guard H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) >= 0 else {
                throw badType("cannot read its float layout")
            }
            guard H5Tget_norm(type) == H5T_NORM_IMPLIED else {
                throw badType("a float without an implied leading mantissa bit is not IEEE "
                              + "(its bytes would mean other values)")
            }
            let layout = (size, spos, epos, esize, mpos, msize,
                          Int(H5Tget_ebias(type)), Int(H5Tget_precision(type)), Int(H5Tget_offset(type)))
            switch layout {
            case (2, 15, 10, 5, 0, 10, 15, 16, 0): return .f16
            case (2, 15, 7, 8, 0, 7, 127, 16, 0): return .bf16
            case (4, 31, 23, 8, 0, 23, 127, 32, 0): return .f32
            case (8, 63, 52, 11, 0, 52, 1023, 64, 0): return .f64
            default:
                throw badType("a \(size)-byte float with \(esize) exponent and \(msize) mantissa bits "
                              + "is not an IEEE f16/bf16/f32/f64 layout")
            }
        case H5T_INTEGER:
            guard size == 1 || H5Tget_order(type) == H5T_ORDER_LE else {
                throw badType("big-endian integers are not read (ShardKit moves bytes as they are)")
            }
            guard Int(H5Tget_precision(type)) == 8 * size, H5Tget_offset(type) == 0 else {
                throw badType("integers with padding bits are not supported")
            }
            let signed = H5Tget_sign(type) == H5T_SGN_2
            switch (size, signed) {
            case (1, true): return .i8
            case (1, false): return .u8
            case (2, true): return .i16
            case (2, false): return .u16
            case (4, true): return .i32
            case (4, false): return .u32
            case (8, true): return .i64
            case (8, false): return .u64
            default: throw badType("\(size)-byte integers are not supported")
            }
        case H5T_ENUM:
            // h5py stores numpy bools as an enum of int8 {FALSE = 0, TRUE = 1}.
            let notBool = badType("enum types other than h5py's booleans are not supported")
            // Size and base type first: member values are copied out at the base type's size.
            guard size == 1, H5Tget_nmembers(type) == 2 else { throw notBool }
            let base = H5Tget_super(type)
            guard base >= 0 else { throw notBool }
            defer { H5Tclose(base) }
            guard H5Tget_class(base) == H5T_INTEGER, H5Tget_size(base) == 1 else { throw notBool }
            let members = [enumValue(type, member: 0), enumValue(type, member: 1)]
            guard members[0]?.0 == "FALSE", members[0]?.1 == 0,
                  members[1]?.0 == "TRUE", members[1]?.1 == 1 else { throw notBool }
            return .bool
        case H5T_STRING: throw badType("strings are not tensors")
        case H5T_COMPOUND: throw badType("compound (struct) types are not supported")
        default: throw badType("type class \(H5Tget_class(type).rawValue) is not supported")
        }
    }

    /// A member of a 1-byte enum (the caller checked the size: libhdf5 copies the value at that size).
    func enumValue(_ type: hid_t, member: UInt32) -> (String, Int8)? {
        guard let cName = H5Tget_member_name(type, member) else { return nil }
        defer { H5free_memory(cName) }
        var value = [Int8](repeating: 0, count: max(1, H5Tget_size(type)))
        guard H5Tget_member_value(type, member, &value) >= 0 else { return nil }
        return (String(cString: cName), value[0])
    }

    /// Reads up to 64 of the dataset's first elements through libhdf5 and compares them with what
    /// ShardKit reads for them (in place, or decoded from the chunks), proving the offset (user blocks,
    /// address arithmetic) and the decoding right.
    func checkFirstValues(_ did: hid_t, type: hid_t, info: TensorInfo) throws {
        func badSet(_ message: String) -> ShardKitError { bad("dataset \(info.name): \(message)") }
        let shape = info.shape, dtype = info.dtype
        let last = shape.last ?? 1
        let n = min(last, 64)
        guard n > 0 else { return }
        var start = [hsize_t](repeating: 0, count: shape.count)
        var count = shape.map { _ in hsize_t(1) }
        if !shape.isEmpty { count[count.count - 1] = hsize_t(n) }
        var memoryDims = [hsize_t(n)]
        let fileSpace = H5Dget_space(did)
        let memorySpace = H5Screate_simple(1, &memoryDims, nil)
        defer { H5Sclose(fileSpace); H5Sclose(memorySpace) }
        if !shape.isEmpty {
            guard H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, &start, nil, &count, nil) >= 0 else {
                throw badSet("cannot select its first values: \(HDF5Reader.lastError())")
            }
        }
        var viaLibrary = [UInt8](repeating: 0, count: n * dtype.size)
        let status = viaLibrary.withUnsafeMutableBytes {
            H5Dread(did, type, memorySpace, fileSpace, shardkit_h5p_default(), $0.baseAddress)
        }
        guard status >= 0 else { throw badSet("libhdf5 cannot read it: \(HDF5Reader.lastError())") }
        let (source, offset) = info.byteSource(in: file)
        let ours = try source.read(count: n * dtype.size, at: offset)
        guard ours == viaLibrary else {
            throw badSet(info.isRaw
                ? "the bytes at its data offset \(offset) are not its values (unexpected file layout)"
                : "its decoded first chunk differs from what libhdf5 reads")
        }
    }
}
