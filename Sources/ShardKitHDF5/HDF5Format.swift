import CHDF5
import ShardKit
import Synchronization

/// HDF5 weights files (`.h5`, `.hdf5`), read through the system libhdf5 for their structure and in
/// place for their bytes: every dataset is a tensor named by its path in the file (`/a/b` → `a/b`;
/// root-level datasets named like `model.embed_tokens.weight` keep that name), and its data is a
/// byte range of the file that the copy engine reads with `pread`, like a safetensors tensor.
///
/// So only datasets whose data is one contiguous, unfiltered range of the file are read: chunked
/// (and so compressed), compact and external datasets are refused with the way out (`h5repack -l
/// CONTI`), as are never-written datasets, big-endian or non-IEEE types, and types other than
/// floats, integers and h5py's boolean enum. 16-bit floats are f16 or, by their bit layout (8
/// exponent and 7 mantissa bits), bf16. Each dataset's first values are also read through libhdf5
/// and compared with the bytes at the computed offset, so a wrong offset cannot go unnoticed.
///
/// libhdf5 is not hardened against hostile files: some malformed files crash it or corrupt its
/// memory. With `inspector` set, libhdf5 runs in a child process (`inspector` + the file's path must
/// run `HDF5Format.inspectionReport(path:)` and print it; the shardkit command has a hidden
/// `hdf5-inspect` subcommand for this), under a time limit; its answer is validated again here. A
/// crash is then a clear error instead of a dead or corrupted process.
///
/// Pass `HDF5Format()` (or `HDF5Format(inspector:)`) in `formats:` to `Checkpoint(path:formats:)`.
public struct HDF5Format: WeightsFileFormat {
    /// The command that inspects a file out of process (the file's path is appended); nil: in process.
    public let inspector: [String]?
    /// Longest an inspection may take before the child is killed.
    public var inspectionTimeout: Double = 300

    public init(inspector: [String]? = nil) { self.inspector = inspector }
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
        if let inspector { return try HDF5Inspection.run(inspector, file: file, timeout: inspectionTimeout) }
        return try HDF5Format.inProcess(file)
    }

    static func inProcess(_ file: ReadOnlyFile) throws -> [TensorInfo] {
        // libhdf5 calls are serialized (Debian's build is thread-safe only behind one global lock).
        try HDF5Format.lock.withLock { _ in try HDF5Reader(file: file).tensors() }
    }

    private static let lock = Mutex(())

    /// What an inspection child prints: the file's tensors, or the error, as one JSON object.
    public static func inspectionReport(path: String) -> String {
        HDF5Inspection.report(path: path)
    }
}

/// One pass over an open HDF5 file. Call only under `HDF5Format.lock`.
private struct HDF5Reader {
    let file: ReadOnlyFile
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
        let fid = H5Fopen(path, shardkit_h5f_acc_rdonly(), shardkit_h5p_default())
        guard fid >= 0 else { throw bad("libhdf5 cannot open it: \(HDF5Reader.lastError())") }
        defer { H5Fclose(fid) }

        var names: [String] = []
        let visited = withUnsafeMutablePointer(to: &names) { box in
            H5Ovisit2(fid, H5_INDEX_NAME, H5_ITER_INC, { _, name, info, data in
                if let name, let info, info.pointee.type == H5O_TYPE_DATASET {
                    data!.assumingMemoryBound(to: [String].self).pointee.append(String(cString: name))
                }
                return 0
            }, box, UInt32(H5O_INFO_BASIC))
        }
        guard visited >= 0 else { throw bad("cannot list its objects: \(HDF5Reader.lastError())") }
        return try names.map { try dataset($0, in: fid) }
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
        let repack = "ShardKit reads datasets in place; rewrite the file with contiguous datasets, "
            + "e.g. `h5repack -l CONTI IN OUT`"
        switch layout {
        case H5D_CONTIGUOUS: break
        case H5D_CHUNKED:
            throw badSet("is chunked\(H5Pget_nfilters(dcpl) > 0 ? " and compressed/filtered" : ""); \(repack)")
        case H5D_COMPACT: throw badSet("has compact layout (stored in its object header); \(repack)")
        case H5D_VIRTUAL: throw badSet("is a virtual dataset (its data is in other datasets or files); \(repack)")
        default: throw badSet("has layout \(layout.rawValue) (virtual?), not contiguous; \(repack)")
        }
        guard H5Pget_nfilters(dcpl) == 0 else { throw badSet("has filters; \(repack)") }
        guard H5Pget_external_count(dcpl) == 0 else { throw badSet("stores its data in external files; \(repack)") }
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
        try checkFirstValues(did, type: type, shape: shape, dtype: dtype, offset: offset, dataset: name)
        return TensorInfo(name: name, dtype: dtype, shape: shape, offset: offset, byteCount: byteCount)
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

    /// Reads up to 64 of the dataset's first elements through libhdf5 and compares them with the bytes
    /// at `offset`, proving the offset (user blocks, address arithmetic) right.
    func checkFirstValues(_ did: hid_t, type: hid_t, shape: [Int], dtype: DType, offset: Int,
                          dataset name: String) throws {
        func badSet(_ message: String) -> ShardKitError { bad("dataset \(name): \(message)") }
        let last = shape.last ?? 1
        let n = min(last, 64)
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
        let inPlace = try file.read(count: n * dtype.size, at: offset)
        guard inPlace == viaLibrary else {
            throw badSet("the bytes at its data offset \(offset) are not its values (unexpected file layout)")
        }
    }
}
