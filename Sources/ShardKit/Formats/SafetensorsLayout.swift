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
    public let header: [UInt8]
    public var dataStart: Int { 8 + header.count }
    public var fileSize: Int { dataStart + (entries.last.map { $0.offset + $0.byteCount - dataStart } ?? 0) }

    /// Lays out `tensors` in the given order, header padded with spaces to a multiple of 8 bytes.
    public init(tensors: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String]) throws {
        var w = JSONWriter(compact: true)
        w.beginObject()
        if !metadata.isEmpty {
            w.key("__metadata__")
            w.beginObject()
            for (k, v) in metadata.sorted(by: { $0.key < $1.key }) { w.key(k); w.string(v) }
            w.endObject()
        }
        var cursor = 0
        var entries: [Entry] = []
        entries.reserveCapacity(tensors.count)
        for t in tensors {
            guard let size = checkedProduct(t.shape, times: t.dtype.size) else {
                throw ShardKitError(.impossibleSplit, "tensor \(t.name): shape \(t.shape) overflows")
            }
            w.key(t.name)
            w.beginObject()
            w.key("dtype"); w.string(t.dtype.rawValue)
            w.key("shape"); w.ints(t.shape)
            w.key("data_offsets"); w.ints([cursor, cursor + size])
            w.endObject()
            entries.append(Entry(name: t.name, dtype: t.dtype, shape: t.shape, byteCount: size, offset: cursor))
            cursor += size
        }
        w.endObject()
        var header = w.finish()
        while (8 + header.count) % 8 != 0 { header.append(0x20) }
        self.header = header
        let start = 8 + header.count
        self.entries = entries.map { var e = $0; e.offset += start; return e }
    }

    /// Writes the length prefix and header at the start of `file`.
    public func writeHeader(to file: OutputFile) throws {
        var prefix = [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { for i in 0..<8 { prefix[i] = $0[i] } }
        try (prefix + header).withUnsafeBytes { try file.write($0, at: 0) }
    }
}
