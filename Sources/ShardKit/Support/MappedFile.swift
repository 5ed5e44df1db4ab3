#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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

