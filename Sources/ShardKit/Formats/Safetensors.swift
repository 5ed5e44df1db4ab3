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
            TensorInfo(name: $0.name, dtype: $0.dtype, shape: $0.shape, offset: dataStart + $0.begin, byteCount: $0.end - $0.begin)
        }
        // Names are unique (the parser refuses duplicate keys).
        self.index = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
    }

    struct ParsedEntry { var name: String; var dtype: DType; var shape: [Int]; var begin: Int; var end: Int }

    /// Validates a header's JSON; returns the entries sorted by offset and the data area's length.
    static func parseHeader(_ header: [UInt8], path: String) throws -> (tensors: [ParsedEntry], metadata: [String: String], end: Int) {
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidSafetensors, "\(path): \(message)") }
        guard String(validating: header, as: UTF8.self) != nil else { throw bad("header is not valid UTF-8") }
        let json: JSONValue
        do { json = try JSONValue.parse(header) } catch { throw bad("header is not valid JSON: \(error)") }
        guard let members = json.objectValue else { throw bad("header is not a JSON object") }
        var metadata: [String: String] = [:]
        var entries: [ParsedEntry] = []
        entries.reserveCapacity(members.count)
        for (name, value) in members {
            if name == "__metadata__" {
                guard let map = value.objectValue else { throw bad("__metadata__ is not an object") }
                if map.contains(where: { $0.0 == "data_offsets" }) {
                    throw bad("a tensor named __metadata__, the key safetensors reserves for the file's metadata; rename the tensor")
                }
                for (k, v) in map {
                    guard let s = v.stringValue else { throw bad("__metadata__ value for \"\(k)\" is not a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let fields = value.objectValue else { throw bad("entry for tensor \"\(name)\" is not an object") }
            for (k, _) in fields where !["dtype", "shape", "data_offsets"].contains(k) {
                throw bad("tensor \"\(name)\" has unknown field \"\(k)\"")
            }
            guard let dtypeName = value["dtype"]?.stringValue else { throw bad("tensor \"\(name)\" has no dtype") }
            guard let dtype = DType(rawValue: dtypeName) else { throw bad("tensor \"\(name)\" has unknown dtype \"\(dtypeName)\"") }
            guard let dims = value["shape"]?.arrayValue else { throw bad("tensor \"\(name)\" has no shape") }
            var shape: [Int] = []
            for d in dims {
                guard let i = d.intValue, i >= 0, case .int = d else {
                    throw bad("tensor \"\(name)\" has a shape entry that is not a non-negative integer")
                }
                shape.append(i)
            }
            guard let offsets = value["data_offsets"]?.arrayValue, offsets.count == 2,
                  case .int(let begin) = offsets[0], case .int(let end) = offsets[1] else {
                throw bad("tensor \"\(name)\" has no valid data_offsets [begin, end]")
            }
            guard begin >= 0, end >= begin else {
                throw bad("tensor \"\(name)\" has invalid data_offsets [\(begin), \(end)]")
            }
            guard let size = checkedProduct(shape, times: dtype.size) else {
                throw bad("tensor \"\(name)\" shape \(shape) overflows")
            }
            guard size == end - begin else {
                throw bad("tensor \"\(name)\" is \(dtype.rawValue) \(shape) = \(size) bytes but data_offsets cover \(end - begin)")
            }
            entries.append(ParsedEntry(name: name, dtype: dtype, shape: shape, begin: begin, end: end))
        }
        entries.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var cursor = 0
        for e in entries {
            if e.begin < cursor { throw bad("tensor \"\(e.name)\" overlaps the tensor before it (offset \(e.begin) < \(cursor))") }
            if e.begin > cursor { throw bad("gap before tensor \"\(e.name)\" (bytes \(cursor)..<\(e.begin) belong to no tensor)") }
            cursor = e.end
        }
        return (entries, metadata, cursor)
    }

    public func tensor(named name: String) -> TensorInfo? { index[name].map { tensors[$0] } }
}

