import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A file opened for positioned reads. Reads loop over short counts and retry on `EINTR`.
public final class ReadOnlyFile: @unchecked Sendable {
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
                throw ShardKitError(.invalidSafetensors,
                    "\(path): unexpected end of file at byte \(offset + done) (file has \(size) bytes)")
            }
            done += n
        }
    }

    /// Reads `count` bytes at `offset` into a new array.
    public func read(count: Int, at offset: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return bytes
    }
}

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

    /// Creates `finalPath + ".tmp"` (truncating any leftover) with `open(O_CREAT | O_TRUNC | O_WRONLY)`.
    public init(path: String, durable: Bool = true) throws {
        self.durable = durable
        finalPath = path
        temporaryPath = path + ".tmp"
        let fd = open(temporaryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
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

/// A whole file mapped read-only (`mmap(PROT_READ, MAP_PRIVATE)`), unmapped when released. Views
/// handed out by the loader API borrow it; touched pages count in the process's RSS.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer

    public init(path: String) throws {
        let file = try ReadOnlyFile(path: path)
        self.path = path
        if file.size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let p = mmap(nil, file.size, PROT_READ, MAP_PRIVATE, file.descriptor, 0)
        guard let p, p != MAP_FAILED else { throw ShardKitError.io("mmap", path: path, errno: errno) }
        bytes = UnsafeRawBufferPointer(start: p, count: file.size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }
}

/// File-system helpers used by the operations (thin wrappers over the C calls they name).
enum FileSystem {
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// `mkdir -p`.
    static func makeDirectories(_ path: String) throws {
        if isDirectory(path) { return }
        let parent = path.deletingLastPathComponent
        if !parent.isEmpty && parent != path { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw ShardKitError.io("mkdir", path: path, errno: errno)
        }
    }

    /// Entries of a directory, sorted, without `.` and `..`.
    static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw ShardKitError.io("opendir", path: path, errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// `rm -rf`.
    static func removeTree(_ path: String) {
        if isDirectory(path) {
            for name in (try? list(path)) ?? [] { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    /// `fsync` of a directory, so that renames inside it are durable.
    static func syncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw ShardKitError.io("open", path: path, errno: errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw ShardKitError.io("fsync", path: path, errno: errno) }
    }

    /// Copies a small file whole (config.json, tokenizer files) through an `OutputFile`.
    static func copySmallFile(from source: String, to destination: String, durable: Bool = true) throws {
        let input = try ReadOnlyFile(path: source)
        let bytes = try input.read(count: input.size, at: 0)
        let out = try OutputFile(path: destination, durable: durable)
        try bytes.withUnsafeBytes { try out.write($0, at: 0) }
        try out.commit()
    }

    static func join(_ a: String, _ b: String) -> String {
        if a.isEmpty { return b }
        return a.hasSuffix("/") ? a + b : a + "/" + b
    }
}

/// Path string helpers without Foundation's NSString bridging.
struct NSStringPath {
    let path: String
    init(_ path: String) { self.path = path }
    var deletingLastComponent: String {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        guard let slash = p.lastIndex(of: "/") else { return "" }
        if slash == p.startIndex { return "/" }
        return String(p[..<slash])
    }
    var lastComponent: String {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        guard let slash = p.lastIndex(of: "/") else { return p }
        return String(p[p.index(after: slash)...])
    }
}

extension String {
    var deletingLastPathComponent: String { NSStringPath(self).deletingLastComponent }
    var lastPathComponent: String { NSStringPath(self).lastComponent }
}
