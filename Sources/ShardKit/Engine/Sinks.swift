extension PieceSink {
    /// Zeros (vocab padding) appended as ordinary bytes, a bounded chunk at a time.
    public func appendZeros(_ count: Int) throws {
        var left = count
        while left > 0 {
            let n = min(left, CRC32C.zeros.count)
            try CRC32C.zeros.withUnsafeBytes { try append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            left -= n
        }
    }
}

/// Appends a piece's bytes to an `OutputFile` from a given offset through a bounded buffer, computing
/// the piece's CRC-32 as the bytes pass.
public final class FileSink: PieceSink {
    let file: OutputFile
    private(set) var position: Int
    let end: Int
    public private(set) var crc = CRC32C()
    private var buffer: UnsafeMutableRawBufferPointer
    private var filled = 0
    private var flushedTo: Int

    /// A sink for `[offset, offset + count)` of `file`.
    public init(file: OutputFile, offset: Int, count: Int, bufferSize: Int = 4 << 20) {
        self.file = file
        position = offset
        flushedTo = offset
        end = offset + count
        buffer = .allocate(byteCount: max(4096, min(bufferSize, count)), alignment: 64)
    }

    deinit { buffer.deallocate() }

    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        guard position + bytes.count <= end else {
            throw ShardKitError(.io,
                                "\(file.temporaryPath): piece overflows its \(end - flushedTo) bytes (internal error)")
        }
        crc.update(bytes)
        position += bytes.count
        if filled == 0 && bytes.count >= min(buffer.count, 64 << 10) {
            try file.write(bytes, at: flushedTo)
            flushedTo += bytes.count
            return
        }
        var rest = bytes
        while !rest.isEmpty {
            let n = min(rest.count, buffer.count - filled)
            (buffer.baseAddress! + filled).copyMemory(from: rest.baseAddress!, byteCount: n)
            filled += n
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            if filled == buffer.count { try flush() }
        }
    }


    /// Writes what is buffered; call once the piece is complete.
    public func flush() throws {
        if filled > 0 {
            try file.write(UnsafeRawBufferPointer(rebasing: buffer[0..<filled]), at: flushedTo)
            flushedTo += filled
            filled = 0
        }
    }

    public var isComplete: Bool { position == end }
}

/// Collects a piece in memory (loaders reading one tensor, tests).
public final class MemorySink: PieceSink {
    public private(set) var bytes: [UInt8] = []
    public private(set) var crc = CRC32C()
    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }
    public func append(_ b: UnsafeRawBufferPointer) throws { crc.update(b); bytes.append(contentsOf: b) }
    public func appendZeros(_ count: Int) throws {
        crc.updateZeros(count)
        bytes.append(contentsOf: repeatElement(0, count: count))
    }
}

/// Fills a caller's buffer (the loader API's "read my slice into this memory").
public final class BufferSink: PieceSink {
    let buffer: UnsafeMutableRawBufferPointer
    public private(set) var position = 0
    public init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }
    static let tooSmall = ShardKitError(.invalidArgument, "destination buffer too small")
    public func append(_ b: UnsafeRawBufferPointer) throws {
        guard position + b.count <= buffer.count else { throw BufferSink.tooSmall }
        (buffer.baseAddress! + position).copyMemory(from: b.baseAddress!, byteCount: b.count)
        position += b.count
    }
    public func appendZeros(_ count: Int) throws {
        guard position + count <= buffer.count else { throw BufferSink.tooSmall }
        (buffer.baseAddress! + position).initializeMemory(as: UInt8.self, repeating: 0, count: count)
        position += count
    }
}

/// Compares the bytes it receives with a reference stream read from a file, recording the first
/// differing byte (verification against a source checkpoint).
public final class ComparingSink: PieceSink {
    /// The buffer the reference bytes are read into, shared by the sinks of one check.
    public final class Scratch {
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        public init() {}
        deinit { bytes.deallocate() }
    }

    let file: ReadOnlyFile
    var position: Int
    let start: Int
    let scratch: Scratch
    public private(set) var firstMismatch: Int?

    public init(file: ReadOnlyFile, offset: Int, scratch: Scratch = Scratch()) {
        self.file = file
        position = offset
        start = offset
        self.scratch = scratch
    }

    public func append(_ b: UnsafeRawBufferPointer) throws {
        var rest = b
        while !rest.isEmpty {
            let n = min(rest.count, scratch.bytes.count)
            let dst = UnsafeMutableRawBufferPointer(rebasing: scratch.bytes[0..<n])
            try file.read(into: dst, at: position)
            if firstMismatch == nil && memcmp(dst.baseAddress!, rest.baseAddress!, n) != 0 {
                for i in 0..<n where dst[i] != rest[i] { firstMismatch = position - start + i; break }
            }
            position += n
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
