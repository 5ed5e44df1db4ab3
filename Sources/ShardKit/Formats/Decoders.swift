import CZlib

/// One zlib inflate stream over a byte range of a file, decoded in bounded steps. `raw`: a bare
/// deflate stream (ZIP); otherwise a zlib stream with its header and Adler-32 (HDF5's deflate filter).
final class Inflater {
    private let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    private let input: UnsafeMutableRawBufferPointer
    let file: ReadOnlyFile
    let range: Range<Int>
    let raw: Bool
    /// Next file offset to read compressed bytes from.
    private var next: Int
    private(set) var finished = false
    private var open = false

    static let inputBytes = 256 << 10

    init(file: ReadOnlyFile, range: Range<Int>, raw: Bool) throws {
        self.file = file; self.range = range; self.raw = raw; next = range.lowerBound
        input = .allocate(byteCount: min(Inflater.inputBytes, max(range.count, 1)), alignment: 16)
        stream.initialize(to: z_stream())
        // (On failure `deinit` still runs and frees the buffers; `open` stays false.)
        guard shardkit_inflate_init(stream, raw ? -15 : 15) == Z_OK else {
            throw ShardKitError(.io, "\(file.path): zlib cannot start (out of memory?)")
        }
        open = true
    }

    deinit {
        if open { inflateEnd(stream) }
        stream.deinitialize(count: 1); stream.deallocate(); input.deallocate()
    }

    /// Decodes into `buffer` until it is full or the stream ends; returns the bytes written.
    func inflate(into buffer: UnsafeMutableRawBufferPointer, what: String) throws -> Int {
        var done = 0
        // zlib counts in 32 bits: at most 1 GiB per call.
        while done < buffer.count && !finished {
            let n = try inflate(into: UnsafeMutableRawBufferPointer(
                rebasing: buffer[done..<min(buffer.count, done + (1 << 30))]), step: what)
            if n == 0 { break }
            done += n
        }
        return done
    }

    private func inflate(into buffer: UnsafeMutableRawBufferPointer, step what: String) throws -> Int {
        guard buffer.count > 0, !finished else { return 0 }
        stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(buffer.count)
        while stream.pointee.avail_out > 0 {
            if stream.pointee.avail_in == 0 {
                let n = min(input.count, range.upperBound - next)
                guard n > 0 else {
                    throw ShardKitError(.invalidCheckpoint, "\(what): the compressed data ends before its stream does")
                }
                try file.read(into: UnsafeMutableRawBufferPointer(rebasing: input[0..<n]), at: next)
                next += n
                stream.pointee.next_in = input.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_in = uInt(n)
            }
            let status = CZlib.inflate(stream, Z_NO_FLUSH)
            if status == Z_STREAM_END {
                finished = true
                guard trailingBytes == 0 else {
                    throw ShardKitError(.invalidCheckpoint, "\(what): \(trailingBytes) bytes follow the end of the "
                                                            + "compressed stream")
                }
                break
            }
            guard status == Z_OK || status == Z_BUF_ERROR else {
                let detail = stream.pointee.msg.map { String(cString: $0) } ?? "zlib status \(status)"
                throw ShardKitError(.invalidCheckpoint, "\(what): compressed data is corrupt (\(detail))")
            }
        }
        return buffer.count - Int(stream.pointee.avail_out)
    }

    /// Once the expected bytes are out: true when the stream ends there (one more byte decodes to none).
    func endsHere(what: String) throws -> Bool {
        if finished { return true }
        var probe: UInt8 = 0
        let extra = try withUnsafeMutableBytes(of: &probe) { try inflate(into: $0, what: what) }
        return extra == 0 && finished
    }

    /// Compressed bytes left unread after the stream's end (none is allowed).
    var trailingBytes: Int { Int(stream.pointee.avail_in) + (range.upperBound - next) }
}

/// The decoded bytes of a `DeflatedRecord` (a compressed ZIP entry), read front to back in bounded
/// steps. A read behind the current position starts the stream again; a read ahead decodes and drops
/// what lies between. The decoded length and (on reaching the end) the CRC-32 are checked.
final class InflatingReader: ByteSource, @unchecked Sendable {
    let file: ReadOnlyFile
    let record: DeflatedRecord
    private var inflater: Inflater?
    /// Decoded bytes produced so far.
    private var position = 0
    private var crc: uLong = 0
    private lazy var scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
    private var scratchAllocated = false

    var path: String { file.path }
    private var what: String { "\(file.path): compressed record at byte \(record.streamOffset)" }

    init(file: ReadOnlyFile, record: DeflatedRecord) { self.file = file; self.record = record }
    deinit { if scratchAllocated { scratch.deallocate() } }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        guard offset >= 0, let end = checkedSum([offset, buffer.count]), end <= record.decodedBytes else {
            throw ShardKitError(.io, "\(what): read of \(buffer.count) bytes at \(offset) is past its "
                                     + "\(record.decodedBytes) decoded bytes")
        }
        if inflater == nil || offset < position {
            inflater = try Inflater(file: file, range: record.streamOffset..<(record.streamOffset + record.streamBytes),
                                    raw: true)
            position = 0; crc = 0
        }
        while position < offset {
            scratchAllocated = true
            let n = min(scratch.count, offset - position)
            try produce(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<n]))
        }
        try produce(into: buffer)
    }

    /// Fills `buffer` exactly with the next decoded bytes.
    private func produce(into buffer: UnsafeMutableRawBufferPointer) throws {
        guard let inflater else { return }
        let n = try inflater.inflate(into: buffer, what: what)
        if n > 0 { crc = crc32(crc, buffer.baseAddress!.assumingMemoryBound(to: Bytef.self), uInt(n)) }
        position += n
        if inflater.finished || position == record.decodedBytes { try checkEnd(inflater) }
        guard n == buffer.count else {
            throw ShardKitError(.invalidCheckpoint, "\(what): decodes to \(position) bytes, but the archive "
                                                    + "says \(record.decodedBytes)")
        }
    }

    /// At the end of the stream: nothing more to decode, the length and checksum the archive states.
    private func checkEnd(_ inflater: Inflater) throws {
        // All bytes are out; the stream must end here, not decode more.
        guard try inflater.endsHere(what: what) else {
            throw ShardKitError(.invalidCheckpoint, "\(what): decodes to more than the \(record.decodedBytes) "
                                                    + "bytes the archive says")
        }
        guard position == record.decodedBytes else {
            throw ShardKitError(.invalidCheckpoint, "\(what): decodes to \(position) bytes, but the archive "
                                                    + "says \(record.decodedBytes)")
        }
        if let expected = record.crc32, UInt32(crc) != expected {
            throw ShardKitError(.checksumMismatch, "\(what): decoded bytes have CRC-32 "
                + "\(String(UInt32(crc), radix: 16)), the archive says \(String(expected, radix: 16))")
        }
    }

    /// The whole decoded record (for small records such as `data.pkl`; the caller bounds the size).
    /// The buffer grows as bytes decode, so a record that only claims a large size costs nothing.
    static func decodeAll(file: ReadOnlyFile, record: DeflatedRecord) throws -> [UInt8] {
        let reader = InflatingReader(file: file, record: record)
        var bytes: [UInt8] = []
        var at = 0
        while at < record.decodedBytes {
            let n = min(1 << 20, record.decodedBytes - at)
            bytes += try reader.read(count: n, at: at)
            at += n
        }
        return bytes
    }
}

/// The bytes of a `ChunkedStorage` dataset in row-major order, decoded chunk by chunk. The decoded
/// chunks of one band (those sharing the first chunk coordinate: what a front-to-back read of whole
/// rows needs) are kept; `ChunkedStorage` bounds a band to `maxBandBytes`.
final class ChunkedReader: ByteSource, @unchecked Sendable {
    let file: ReadOnlyFile
    let storage: ChunkedStorage
    /// Decoded chunks of the current band (chunks sharing the first chunk coordinate), by grid index.
    private var cache: [Int: UnsafeMutableRawBufferPointer] = [:]
    private var band = -1
    /// Buffers of earlier bands, for reuse.
    private var spare: [UnsafeMutableRawBufferPointer] = []
    private var stored: UnsafeMutableRawBufferPointer?

    var path: String { file.path }

    /// The cache holds at most one band (`ChunkedStorage` bounds a band's bytes).
    init(file: ReadOnlyFile, storage: ChunkedStorage) {
        self.file = file; self.storage = storage
    }

    deinit {
        for c in cache.values { c.deallocate() }
        for c in spare { c.deallocate() }
        stored?.deallocate()
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        let s = storage, es = s.elementSize, rank = s.shape.count
        guard offset >= 0, let end = checkedSum([offset, buffer.count]), end <= s.totalBytes else {
            throw ShardKitError(.io, "\(file.path): read of \(buffer.count) bytes at \(offset) is past the "
                                     + "dataset's \(s.totalBytes) bytes")
        }
        var p = offset, out = 0
        var coords = [Int](repeating: 0, count: rank)
        while p < end {
            // The element at p, its chunk and its place in the chunk.
            var e = p / es
            for d in stride(from: rank - 1, through: 0, by: -1) { coords[d] = e % s.shape[d]; e /= s.shape[d] }
            var chunkIndex = 0, within = 0
            for d in 0..<rank {
                chunkIndex = chunkIndex * s.grid[d] + coords[d] / s.chunkShape[d]
                within = within * s.chunkShape[d] + coords[d] % s.chunkShape[d]
            }
            let last = rank - 1
            let chunkRowEnd = min(s.shape[last], (coords[last] / s.chunkShape[last] + 1) * s.chunkShape[last])
            let byteInElement = p % es
            let run = min((chunkRowEnd - coords[last]) * es - byteInElement, end - p)
            let chunk = try decoded(chunkIndex)
            (buffer.baseAddress! + out).copyMemory(from: chunk.baseAddress! + within * es + byteInElement,
                                                   byteCount: run)
            p += run; out += run
        }
    }

    /// Chunk `index` decoded, from the cache or the file. A chunk of another band empties the cache
    /// first: a front-to-back read never returns to an earlier band (a read that does decodes again).
    private func decoded(_ index: Int) throws -> UnsafeMutableRawBufferPointer {
        if let hit = cache[index] { return hit }
        let chunkBand = index / max(storage.bandChunks, 1)
        if chunkBand != band {
            spare += cache.values
            cache.removeAll(keepingCapacity: true)
            band = chunkBand
        }
        let bytes = spare.popLast() ?? .allocate(byteCount: storage.chunkBytes, alignment: 64)
        do { try decode(index, into: bytes) } catch { spare.append(bytes); throw error }
        cache[index] = bytes
        return bytes
    }

    /// Reads chunk `index` and undoes its filters, last first.
    func decode(_ index: Int, into out: UnsafeMutableRawBufferPointer) throws {
        let c = storage.chunks[index]
        let what = "\(file.path): chunk \(index) (\(c.byteCount) bytes at \(c.offset))"
        let active = storage.filters.enumerated().filter { c.filterMask & (1 << UInt32($0.offset)) == 0 }.map(\.element)
        let shuffled = active.contains(.shuffle)
        // Where the unshuffled bytes land: `out` directly, or a staging area to unshuffle from.
        let target: UnsafeMutableRawBufferPointer
        if shuffled {
            if stored == nil || stored!.count < storage.chunkBytes {
                stored?.deallocate(); stored = .allocate(byteCount: storage.chunkBytes, alignment: 64)
            }
            target = UnsafeMutableRawBufferPointer(rebasing: stored![0..<storage.chunkBytes])
        } else {
            target = out
        }
        if active.contains(.deflate) {
            let inflater = try Inflater(file: file, range: c.offset..<(c.offset + c.byteCount), raw: false)
            let n = try inflater.inflate(into: target, what: what)
            guard n == storage.chunkBytes, try inflater.endsHere(what: what) else {
                let decoded = n == storage.chunkBytes ? "more than \(n)" : "\(n)"
                throw ShardKitError(.invalidCheckpoint,
                                    "\(what): decompresses to \(decoded) bytes, not the chunk's \(storage.chunkBytes)")
            }
        } else {
            guard c.byteCount == storage.chunkBytes else {
                throw ShardKitError(.invalidCheckpoint,
                                    "\(what): an unfiltered chunk must hold \(storage.chunkBytes) bytes")
            }
            try file.read(into: target, at: c.offset)
        }
        if shuffled { ChunkedReader.unshuffle(target, into: out, elementSize: storage.elementSize) }
    }

    /// HDF5's shuffle filter undone: byte b of element i is at `b · n + i` of the stored bytes.
    static func unshuffle(_ from: UnsafeMutableRawBufferPointer, into to: UnsafeMutableRawBufferPointer,
                          elementSize es: Int) {
        let n = from.count / es
        let src = from.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let dst = to.baseAddress!.assumingMemoryBound(to: UInt8.self)
        for b in 0..<es {
            let plane = src + b * n
            for i in 0..<n { dst[i * es + b] = plane[i] }
        }
        // Bytes past the last whole element are stored as they are.
        let tail = from.count - n * es
        if tail > 0 { (to.baseAddress! + n * es).copyMemory(from: from.baseAddress! + n * es, byteCount: tail) }
    }
}

/// A byte stream made of ranges of other streams: `locate(p)` says where logical byte `p` is (a
/// source and its offset there) and how many bytes from there on are contiguous in that source.
/// Meta's consolidated files are read as whole HF tensors this way (pieces side by side, q/k rows
/// reordered), a range at a time, nothing gathered.
final class RemappedReader: ByteSource, @unchecked Sendable {
    let path: String
    let length: Int
    let locate: (Int) -> (source: ByteSource, offset: Int, run: Int)

    init(path: String, length: Int, locate: @escaping (Int) -> (source: ByteSource, offset: Int, run: Int)) {
        self.path = path; self.length = length; self.locate = locate
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        guard offset >= 0, let end = checkedSum([offset, buffer.count]), end <= length else {
            throw ShardKitError(.io, "\(path): read of \(buffer.count) bytes at \(offset) is past the tensor's "
                                     + "\(length) bytes")
        }
        var p = offset, out = 0
        while p < end {
            let (source, at, run) = locate(p)
            let n = min(run, end - p)
            precondition(n > 0, "RemappedReader: empty run")
            try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[out..<(out + n)]), at: at)
            p += n; out += n
        }
    }
}
