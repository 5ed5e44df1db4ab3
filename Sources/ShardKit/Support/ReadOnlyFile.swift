import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A file opened for positioned reads. Reads loop over short counts and retry on `EINTR`.
public final class ReadOnlyFile: ByteSource, @unchecked Sendable {
    public let path: String
    public let size: Int
    let descriptor: Int32

    /// Opens `path` with `open(O_RDONLY | O_CLOEXEC | O_NONBLOCK)` (a FIFO must not block the open),
    /// checks with `fstat` that it is a regular file, and reads its size.
    public init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw ShardKitError.io("open", path: path, errno: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw ShardKitError.io("stat", path: path, errno: e)
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            close(fd)
            throw ShardKitError(.io, "\(path): is a directory, expected a file")
        }
        if (st.st_mode & S_IFMT) != S_IFREG {
            close(fd)
            throw ShardKitError(.io, "\(path): not a regular file (a FIFO, device or socket)")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        self.path = path
        self.descriptor = fd
        self.size = Int(st.st_size)
    }

    deinit { close(descriptor) }

    /// Fills `buffer` with the bytes at `offset` (the C function is `pread`). Reading past the end of
    /// the file is an error naming the file.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ShardKitError.io("read", path: path, errno: errno)
            }
            if n == 0 {
                throw ShardKitError(.io,
                    "\(path): unexpected end of file at byte \(offset + done) (file has \(size) bytes)")
            }
            done += n
        }
    }

    /// The whole file, refused (before anything is read) when it is larger than `limit` bytes:
    /// `what` says what the file is ("config.json").
    public func readAll(limit: Int, what: String) throws -> [UInt8] {
        guard size <= limit else {
            throw ShardKitError(.invalidArgument, "\(path): \(size) bytes is too large for \(what) "
                                                  + "(at most \(limit >> 20) MiB)")
        }
        return try read(count: size, at: 0)
    }
}
