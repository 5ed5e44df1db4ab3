/// Lays out and writes a safetensors file whose tensors are streamed in afterwards: the header is
/// fixed first (so every tensor's offset is known), then each tensor's bytes are written in order.
public struct SafetensorsLayout: Sendable {
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var byteCount: Int
        /// Absolute offset in the file, known once the header is laid out.
        public var offset: Int
    }

    public private(set) var entries: [Entry] = []
    /// The file's metadata (`__metadata__`).
    public let metadata: [String: String]
    /// Bytes of the header (JSON and padding), without the 8-byte length prefix.
    public private(set) var headerLength: Int
    public var dataStart: Int { 8 + headerLength }
    public var fileSize: Int { dataStart + (entries.last.map { $0.offset + $0.byteCount - dataStart } ?? 0) }

    /// Lays out `tensors` in the given order, header padded with spaces to a multiple of 8 bytes.
    /// Only the header's length is kept: its bytes are made again when written (a rank file of a
    /// million tensors has a header of tens of megabytes, which need not stay in memory).
    public init(tensors: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String]) throws {
        var cursor = 0
        var entries: [Entry] = []
        entries.reserveCapacity(tensors.count)
        for t in tensors {
            guard let size = checkedProduct(t.shape, times: t.dtype.size) else {
                throw ShardKitError(.impossibleSplit, "tensor \(t.name): shape \(t.shape) overflows")
            }
            entries.append(Entry(name: t.name, dtype: t.dtype, shape: t.shape, byteCount: size, offset: cursor))
            cursor += size
        }
        self.metadata = metadata
        self.entries = entries
        self.headerLength = 0
        let length = header.count
        self.headerLength = length
        self.entries = entries.map { var e = $0; e.offset += 8 + length; return e }
    }

    /// The header: compact JSON (`__metadata__` first, then the tensors in order), padded with spaces
    /// to a multiple of 8 bytes.
    public var header: [UInt8] {
        var w = JSONWriter(compact: true)
        w.beginObject()
        if !metadata.isEmpty {
            w.key("__metadata__")
            w.beginObject()
            for (k, v) in metadata.sorted(by: { $0.key < $1.key }) { w.key(k); w.string(v) }
            w.endObject()
        }
        let start = entries.first.map { $0.offset } ?? 0
        for e in entries {
            w.key(e.name)
            w.beginObject()
            w.key("dtype"); w.string(e.dtype.rawValue)
            w.key("shape"); w.ints(e.shape)
            w.key("data_offsets"); w.ints([e.offset - start, e.offset - start + e.byteCount])
            w.endObject()
        }
        w.endObject()
        var bytes = w.finish()
        while (8 + bytes.count) % 8 != 0 { bytes.append(0x20) }
        return bytes
    }

    /// Writes the length prefix and header at the start of `file`.
    public func writeHeader(to file: OutputFile) throws {
        let header = self.header
        precondition(header.count == headerLength, "a header's length is fixed when it is laid out")
        var prefix = [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { for i in 0..<8 { prefix[i] = $0[i] } }
        try (prefix + header).withUnsafeBytes { try file.write($0, at: 0) }
    }
}
