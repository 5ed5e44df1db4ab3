/// A validated safetensors file: every tensor's dtype, shape and byte range have been checked before
/// any of them is handed out.
///
/// The format is an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data area.
/// Validation follows huggingface/safetensors: N at most 100 MB and inside the file; the header a
/// JSON object whose values are `{dtype, shape, data_offsets}` (or the string map `__metadata__`);
/// no duplicate names; `shape × dtype size` equal to the byte range (overflow checked); the ranges,
/// sorted, tile the data area from 0 with no gap or overlap and end exactly at the end of the file.
public struct SafetensorsFile: Sendable {
    public static let maxHeaderSize = 100_000_000

    public let path: String
    /// Tensors in data order (ascending offset).
    public let tensors: [TensorInfo]
    public let metadata: [String: String]
    /// Byte offset where the data area begins (8 + N).
    public let dataStart: Int
    public let fileSize: Int
    private let index: [String: Int]

    /// Opens and validates the file at `path`.
    public init(path: String) throws {
        try self.init(file: ReadOnlyFile(path: path))
    }

    public init(file: ReadOnlyFile) throws {
        let path = file.path
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidSafetensors, "\(path): \(message)") }
        guard file.size >= 8 else { throw bad("file is \(file.size) bytes, too short for a safetensors header") }
        let lengthBytes = try file.read(count: 8, at: 0)
        let n = lengthBytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard n <= UInt64(SafetensorsFile.maxHeaderSize) else {
            throw bad("header length \(n) exceeds the \(SafetensorsFile.maxHeaderSize)-byte limit")
        }
        let headerLength = Int(n)
        guard headerLength + 8 <= file.size else {
            throw bad("header length \(headerLength) runs past the end of the file (\(file.size) bytes)")
        }
        let header = try file.read(count: headerLength, at: 8)
        let parsed = try SafetensorsFile.parseHeader(header, path: path)
        let dataStart = 8 + headerLength
        let dataLength = file.size - dataStart
        guard parsed.end == dataLength else {
            if parsed.end > dataLength {
                throw bad("truncated: tensors need \(parsed.end) data bytes but the file has \(dataLength)")
            }
            throw bad("data area has \(dataLength - parsed.end) bytes past the last tensor")
        }
        self.path = path
        self.metadata = parsed.metadata
        self.dataStart = dataStart
        self.fileSize = file.size
        self.tensors = parsed.tensors.map {
            TensorInfo(name: $0.name, dtype: $0.dtype, shape: $0.shape, offset: dataStart + $0.begin,
                       byteCount: $0.end - $0.begin)
        }
        // Names are unique (the parser refuses duplicate keys).
        self.index = parsed.index
    }

    struct ParsedEntry { var name: String; var dtype: DType; var shape: [Int]; var begin: Int; var end: Int }

    /// Validates a header's JSON; returns the entries sorted by offset and the data area's length.
    /// Read with the strict pull reader straight into entries: no JSON tree, so a header of a
    /// million tensors costs what its entries do.
    static func parseHeader(_ header: [UInt8], path: String) throws
        -> (tensors: [ParsedEntry], index: [String: Int], metadata: [String: String], end: Int) {
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidSafetensors, "\(path): \(message)") }
        guard String(validating: header, as: UTF8.self) != nil else { throw bad("header is not valid UTF-8") }
        var metadata: [String: String] = [:]
        var entries: [ParsedEntry] = []
        var shapes = Interner()
        var index: [String: Int] = [:]
        var sawMetadata = false
        do {
            try header.withUnsafeBytes { raw in
                var r = JSONReader(bytes: raw)
                try r.document { r in
                    guard r.peekIsObject else { throw bad("header is not a JSON object") }
                    // Duplicate names are caught by the index, which is built anyway.
                    try r.object(uniqueKeys: false) { r, name in
                        if name == "__metadata__" {
                            guard !sawMetadata else { throw r.duplicateKey(name) }
                            sawMetadata = true
                            metadata = try readMetadata(&r, bad)
                        } else {
                            guard index.updateValue(entries.count, forKey: name) == nil else {
                                throw r.duplicateKey(name)
                            }
                            entries.append(try readEntry(&r, name: name, &shapes, bad))
                        }
                    }
                }
            }
        } catch let e as JSONParseError {
            throw ShardKitError(.invalidSafetensors, "\(path): header is not valid JSON: \(e)", underlying: e)
        }
        // Writers lay tensors out in header order, so this is usually sorted already.
        let ordered = zip(entries, entries.dropFirst()).allSatisfy { ($0.begin, $0.end) <= ($1.begin, $1.end) }
        if !ordered {
            entries.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
            for (i, e) in entries.enumerated() { index[e.name] = i }
        }
        var cursor = 0
        for e in entries {
            if e.begin < cursor {
                throw bad("tensor \"\(e.name)\" overlaps the tensor before it (offset \(e.begin) < \(cursor))")
            }
            if e.begin > cursor {
                throw bad("gap before tensor \"\(e.name)\" (bytes \(cursor)..<\(e.begin) belong to no tensor)")
            }
            cursor = e.end
        }
        return (entries, index, metadata, cursor)
    }

    /// `__metadata__`: a map of strings.
    private static func readMetadata(_ r: inout JSONReader,
                                     _ bad: (String) -> ShardKitError) throws -> [String: String] {
        guard r.peekIsObject else { throw bad("__metadata__ is not an object") }
        var map: [String: String] = [:]
        try r.object { r, k in
            guard r.peekIsString else {
                // A tensor entry under the reserved key: say so rather than complain about its fields.
                if ["dtype", "shape", "data_offsets"].contains(k) {
                    throw bad("a tensor named __metadata__, the key safetensors reserves for the file's metadata; "
                              + "rename the tensor")
                }
                throw bad("__metadata__ value for \"\(k)\" is not a string")
            }
            map[k] = try r.string()
        }
        if map["data_offsets"] != nil {
            throw bad("a tensor named __metadata__, the key safetensors reserves for the file's metadata; "
                      + "rename the tensor")
        }
        return map
    }

    /// One tensor's `{dtype, shape, data_offsets}`, checked.
    private static func readEntry(_ r: inout JSONReader, name: String, _ shapes: inout Interner,
                                  _ bad: (String) -> ShardKitError) throws -> ParsedEntry {
        guard r.peekIsObject else { throw bad("entry for tensor \"\(name)\" is not an object") }
        var dtypeName: String?, shape: [Int]?, offsets: [Int]?
        var shapeValid = true, offsetsValid = true
        try r.object { r, k in
            switch k {
            case "dtype":
                if r.peekIsString { dtypeName = try r.string() } else { try r.skip() }
            case "shape": (shape, shapeValid) = try r.optionalInts()
            case "data_offsets": (offsets, offsetsValid) = try r.optionalInts()
            default: throw bad("tensor \"\(name)\" has unknown field \"\(k)\"")
            }
        }
        guard let dtypeName else { throw bad("tensor \"\(name)\" has no dtype") }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw bad("tensor \"\(name)\" has unknown dtype \"\(dtypeName)\"")
        }
        guard let shape else { throw bad("tensor \"\(name)\" has no shape") }
        guard shapeValid, shape.allSatisfy({ $0 >= 0 }) else {
            throw bad("tensor \"\(name)\" has a shape entry that is not a non-negative integer")
        }
        guard offsetsValid, let offsets, offsets.count == 2 else {
            throw bad("tensor \"\(name)\" has no valid data_offsets [begin, end]")
        }
        let (begin, end) = (offsets[0], offsets[1])
        guard begin >= 0, end >= begin else {
            throw bad("tensor \"\(name)\" has invalid data_offsets [\(begin), \(end)]")
        }
        guard let size = checkedProduct(shape, times: dtype.size) else {
            throw bad("tensor \"\(name)\" shape \(shape) overflows")
        }
        guard size == end - begin else {
            throw bad("tensor \"\(name)\" is \(dtype.rawValue) \(shape) = \(size) bytes "
                      + "but data_offsets cover \(end - begin)")
        }
        return ParsedEntry(name: name, dtype: dtype, shape: shapes.ints(shape), begin: begin, end: end)
    }

    public func tensor(named name: String) -> TensorInfo? { index[name].map { tensors[$0] } }
}

