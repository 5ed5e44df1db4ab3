import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import CShardKitSupport

/// A file written under a temporary name and renamed into place only by `commit()`: a crash or an
/// error never leaves a file under its final name that looks complete.
public final class OutputFile: @unchecked Sendable {
    public let finalPath: String
    public let temporaryPath: String
    let descriptor: Int32
    private(set) var committed = false
    /// Writeback is started every `writebackChunk` bytes written, so that dirty pages go to disk
    /// while the copy goes on instead of all at once in the final fsync.
    static let writebackChunk = 2 << 20
    private var unflushedBytes = 0
    private var lowestUnflushed = Int.max
    private var highestWritten = 0
    private let lock = NSLock()

    /// False skips the writeback hints and the `fsync` of `commit()` (the rename still happens last).
    public let durable: Bool

    /// Creates `finalPath + ".tmp"` anew: a leftover entry of that name (a crashed run's file, or a
    /// symbolic link planted there) is unlinked first, and the file is created with
    /// `open(O_CREAT | O_EXCL | O_NOFOLLOW | O_WRONLY)`, so that no byte is ever written through a link.
    public init(path: String, durable: Bool = true) throws {
        self.durable = durable
        finalPath = path
        temporaryPath = path + ".tmp"
        if unlink(temporaryPath) != 0 && errno != ENOENT {
            throw ShardKitError.io("unlink", path: temporaryPath, errno: errno)
        }
        let fd = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ShardKitError.io("create", path: temporaryPath, errno: errno) }
        descriptor = fd
    }

    deinit {
        close(descriptor)
        if !committed { unlink(temporaryPath) }
    }

    /// Writes all of `bytes` at `offset` (the C function is `pwrite`), looping over short writes.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ShardKitError.io("write", path: temporaryPath, errno: errno)
            }
            done += n
        }
        noteWritten(offset, bytes.count)
    }

    private func noteWritten(_ offset: Int, _ count: Int) {
        guard durable else { return }
        lock.lock()
        unflushedBytes += count
        lowestUnflushed = min(lowestUnflushed, offset)
        highestWritten = max(highestWritten, offset + count)
        var range: (Int, Int)?
        if unflushedBytes >= OutputFile.writebackChunk {
            range = (lowestUnflushed, highestWritten - lowestUnflushed)
            unflushedBytes = 0
            lowestUnflushed = Int.max
        }
        lock.unlock()
        // Best effort: a failure here surfaces again, and is reported, at fsync.
        if let (from, length) = range { _ = shardkit_start_writeback(descriptor, Int64(from), Int64(length)) }
    }

    /// Writes zero bytes over `[offset, offset + count)`.
    func writeZeros(count: Int, at offset: Int) throws {
        var left = count, position = offset
        let chunk = [UInt8](repeating: 0, count: min(count, 1 << 20))
        try chunk.withUnsafeBytes { zeros in
            while left > 0 {
                let n = min(left, zeros.count)
                try write(UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: position)
                left -= n
                position += n
            }
        }
    }

    /// `fsync`s the data (when durable) and renames the temporary file to its final name.
    public func commit() throws {
        if durable {
            guard fsync(descriptor) == 0 else { throw ShardKitError.io("fsync", path: temporaryPath, errno: errno) }
        }
        guard rename(temporaryPath, finalPath) == 0 else {
            throw ShardKitError.io("rename", path: temporaryPath, errno: errno)
        }
        committed = true
    }
}

