/// How a tensor's bytes are stored in its file. Most formats store them as they are (`raw`: the
/// tensor is `byteCount` bytes at `offset` of the file); some compress them, and then `offset` is a
/// position in the decoded bytes and the tensor is read through a decoder (`TensorInfo.byteSource`).
/// Sharding never keeps a decoded tensor: decoders work in bounded pieces, front to back.
public enum TensorEncoding: Sendable, Equatable {
    case raw
    /// A deflate stream (a ZIP entry of method 8); `offset` counts decoded bytes.
    case deflated(DeflatedRecord)
    /// A chunked dataset (HDF5): the tensor cut into a grid of chunks, each stored on its own and
    /// possibly filtered; `offset` is 0.
    case chunked(ChunkedStorage)
}

/// A raw deflate stream (RFC 1951, no zlib header) inside a file.
public struct DeflatedRecord: Sendable, Equatable {
    /// File offset and length of the compressed bytes.
    public var streamOffset: Int
    public var streamBytes: Int
    /// Length of the decoded stream; decoding more, or fewer, is an error.
    public var decodedBytes: Int
    /// CRC-32 (ZIP's, not CRC-32C) of the decoded stream, checked when a reader reaches its end.
    public var crc32: UInt32?

    /// Deflate's largest expansion: 1032 decoded bytes per compressed byte (a stream of maximal
    /// back-references), plus a little for tiny streams. A record claiming more is a bomb.
    public static func maxDecodedBytes(streamBytes: Int) -> Int {
        checkedSum([checkedProduct([streamBytes], times: 1032) ?? Int.max - 64, 64]) ?? Int.max
    }

    /// Checks the sizes: a decoded size deflate cannot reach from `streamBytes` is refused here,
    /// before any buffer is sized by it.
    public init(streamOffset: Int, streamBytes: Int, decodedBytes: Int, crc32: UInt32?, what: String) throws {
        guard streamOffset >= 0, streamBytes >= 0, decodedBytes >= 0,
              decodedBytes <= DeflatedRecord.maxDecodedBytes(streamBytes: streamBytes) else {
            throw ShardKitError(.invalidCheckpoint, "\(what): claims \(decodedBytes) bytes from \(streamBytes) "
                                + "compressed bytes, more than deflate can encode (at most 1032 to 1)")
        }
        self.streamOffset = streamOffset; self.streamBytes = streamBytes
        self.decodedBytes = decodedBytes; self.crc32 = crc32
    }
}

/// A dataset stored in chunks: the shape is cut into a grid of `chunkShape` blocks (edge chunks are
/// stored whole, past the dataset's end), each chunk stored as one byte range of the file after its
/// filters. Validated on creation: every number overflow-checked, every chunk of the grid present
/// once and inside the file, chunk sizes within `maxChunkBytes`.
public struct ChunkedStorage: Sendable, Equatable {
    /// The filters a chunk went through when written, in that order (decoding undoes them backwards).
    public enum Filter: String, Sendable, Equatable {
        /// HDF5's byte shuffle: all elements' first bytes, then all second bytes, ...
        case shuffle
        /// zlib (RFC 1950) deflate.
        case deflate
    }

    public struct Chunk: Sendable, Equatable {
        /// File offset and length of the stored (filtered) chunk.
        public var offset: Int
        public var byteCount: Int
        /// Bit i set: filter i was skipped for this chunk (HDF5's filter mask).
        public var filterMask: UInt32

        public init(offset: Int, byteCount: Int, filterMask: UInt32) {
            self.offset = offset; self.byteCount = byteCount; self.filterMask = filterMask
        }
    }

    public let shape: [Int]
    public let chunkShape: [Int]
    public let elementSize: Int
    public let filters: [Filter]
    /// One per chunk of the grid, in row-major order of chunk coordinates.
    public let chunks: [Chunk]
    /// Chunks along each dimension: ⌈shape / chunkShape⌉.
    public let grid: [Int]
    /// Decoded bytes of one chunk.
    public let chunkBytes: Int
    /// Bytes of the whole dataset.
    public let totalBytes: Int
    /// Chunks sharing a first chunk coordinate: what a front-to-back read of whole rows needs at once.
    public let bandChunks: Int

    /// Largest decoded chunk accepted (libhdf5's own limit is 4 GiB).
    public static let maxChunkBytes = 256 << 20
    /// Most chunks a dataset may have.
    public static let maxChunks = 1 << 24
    /// Most decoded bytes one band of chunks may need (the decoder's cache).
    public static let maxBandBytes = 64 << 20

    /// ⌈shape / chunk⌉ per dimension and their product, or nil when a chunk dimension is not positive
    /// or the count overflows. (Never `shape + chunk - 1`, which overflows near Int.max.)
    public static func grid(shape: [Int], chunkShape: [Int]) -> (grid: [Int], count: Int)? {
        guard shape.count == chunkShape.count, chunkShape.allSatisfy({ $0 > 0 }), shape.allSatisfy({ $0 >= 0 }) else {
            return nil
        }
        let grid = zip(shape, chunkShape).map { $0 / $1 + ($0 % $1 == 0 ? 0 : 1) }
        guard let count = checkedProduct(grid) else { return nil }
        return (grid, count)
    }

    /// Checks the layout against a file of `fileSize` bytes; `what` names the dataset in errors.
    public init(shape: [Int], chunkShape: [Int], elementSize: Int, filters: [Filter], chunks: [Chunk],
                fileSize: Int, what: String) throws {
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidCheckpoint, "\(what): \(message)") }
        guard !shape.isEmpty, chunkShape.count == shape.count, shape.count <= 64 else {
            throw bad("chunk shape \(chunkShape) does not fit shape \(shape)")
        }
        guard chunkShape.allSatisfy({ $0 > 0 }), shape.allSatisfy({ $0 >= 0 }), elementSize > 0 else {
            throw bad("chunk shape \(chunkShape) has a zero dimension")
        }
        guard let elements = checkedProduct(chunkShape), let bytes = checkedProduct([elements], times: elementSize),
              bytes <= ChunkedStorage.maxChunkBytes else {
            throw bad("chunks of \(chunkShape) × \(elementSize) bytes exceed ShardKit's limit of "
                      + "\(ChunkedStorage.maxChunkBytes >> 20) MiB per chunk; repack with smaller chunks")
        }
        guard let (grid, count) = ChunkedStorage.grid(shape: shape, chunkShape: chunkShape),
              count <= ChunkedStorage.maxChunks else {
            throw bad("more than \(ChunkedStorage.maxChunks) chunks; repack with larger chunks")
        }
        guard chunks.count == count else {
            throw bad("\(chunks.count) chunks stored, but the grid \(grid) has \(count)")
        }
        guard let elementsTotal = checkedProduct(shape),
              let total = checkedProduct([elementsTotal], times: elementSize) else {
            throw bad("shape \(shape) overflows")
        }
        let band = count == 0 ? 0 : count / grid[0]
        guard let bandBytes = checkedProduct([band], times: bytes), bandBytes <= ChunkedStorage.maxBandBytes else {
            throw bad("reading it row by row needs \(band) chunks of \(bytes) bytes decoded at once, more than "
                      + "\(ChunkedStorage.maxBandBytes >> 20) MiB; repack with chunks that span more of each row "
                      + "(e.g. `h5repack -l CHUNK=...`)")
        }
        // The pipeline HDF5 writes: shuffle (if any) before deflate (if any), each once. The decoder
        // undoes them in the reverse order.
        guard filters == [.shuffle, .deflate].filter(filters.contains), Set(filters).count == filters.count else {
            throw bad("filter pipeline \(filters.map(\.rawValue)) is not shuffle then deflate")
        }
        for (i, c) in chunks.enumerated() {
            let compressed = filters.contains(.deflate)
            // Stored bytes: exactly the chunk when nothing compresses it; a deflate stream is never
            // much larger than its input (5 bytes per 16 KiB block, plus the header).
            let limit = compressed ? bytes + bytes / 256 + 1024 : bytes
            guard c.offset >= 0, c.byteCount >= 0, c.byteCount <= limit,
                  let end = checkedSum([c.offset, c.byteCount]), end <= fileSize else {
                throw bad("chunk \(i) (\(c.byteCount) bytes at \(c.offset)) is not inside the file "
                          + "(\(fileSize) bytes) or is larger than a \(bytes)-byte chunk can be")
            }
        }
        self.shape = shape; self.chunkShape = chunkShape; self.elementSize = elementSize
        self.filters = filters; self.chunks = chunks; self.grid = grid; self.chunkBytes = bytes
        self.totalBytes = total; self.bandChunks = band
    }
}

extension TensorInfo {
    /// Where the tensor's bytes can be read: the stream, and the offset of the tensor's first byte in
    /// it. A raw tensor is read from `file` itself; an encoded one through a new decoder over `file`
    /// (a decoder holds state: use it from one thread, for one pass).
    public func byteSource(in file: ReadOnlyFile) -> (source: ByteSource, offset: Int) {
        switch encoding {
        case .raw: return (file, offset)
        case .deflated(let record): return (InflatingReader(file: file, record: record), offset)
        case .chunked(let storage): return (ChunkedReader(file: file, storage: storage), 0)
        }
    }
}
