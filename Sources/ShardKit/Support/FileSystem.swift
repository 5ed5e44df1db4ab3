#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Path strings: the one place that joins, splits and resolves them (no Foundation bridging).
package enum Path {
    /// `a/b` (no doubled slash; an empty `a` gives `b`).
    package static func join(_ a: String, _ b: String) -> String {
        if a.isEmpty { return b }
        return a.hasSuffix("/") ? a + b : a + "/" + b
    }

    /// The path without its last component ("" for a bare name, "/" for a top-level entry).
    package static func parent(_ path: String) -> String {
        let p = trimmed(path)
        guard let slash = p.lastIndex(of: "/") else { return "" }
        if slash == p.startIndex { return "/" }
        return String(p[..<slash])
    }

    /// The last component.
    package static func name(_ path: String) -> String {
        let p = trimmed(path)
        guard let slash = p.lastIndex(of: "/") else { return p }
        return String(p[p.index(after: slash)...])
    }

    private static func trimmed(_ path: String) -> String {
        var p = path
        while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
        return p
    }

    /// The canonical absolute path of an existing `path`, symlinks resolved (the C function is
    /// `realpath`); nil when it does not exist.
    package static func resolved(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// The canonical path `path` would have: its longest existing ancestor resolved, the rest
    /// appended (`..` and `.` in the rest are resolved textually).
    package static func resolvedForCreation(_ path: String) -> String {
        if let r = resolved(path) { return r }
        var rest: [String] = []
        var p = path.isEmpty ? "." : path
        while resolved(p) == nil {
            let n = name(p)
            rest.insert(n, at: 0)
            let up = parent(p)
            p = up.isEmpty ? "." : up
            if p == "/" { break }
        }
        var base = resolved(p) ?? "/"
        for c in rest where !c.isEmpty && c != "." {
            base = c == ".." ? (parent(base).isEmpty ? "/" : parent(base)) : join(base, c)
        }
        return base
    }

    /// True when `inner` is `outer` or lies inside it (both canonical).
    package static func contains(_ outer: String, _ inner: String) -> Bool {
        inner == outer || inner.hasPrefix(outer.hasSuffix("/") ? outer : outer + "/")
    }
}

/// File-system helpers used by the operations (thin wrappers over the C calls they name). Nothing
/// here follows a symbolic link where it changes the file system: links are removed, never entered.
enum FileSystem {
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// True for a directory, or a symbolic link to one (`stat`).
    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// True when `path` exists as an entry, even a dangling link (`lstat`).
    static func entryExists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// `mkdir -p`.
    static func makeDirectories(_ path: String) throws {
        if isDirectory(path) { return }
        let parent = Path.parent(path)
        if !parent.isEmpty && parent != path { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw ShardKitError.io("mkdir", path: path, errno: errno)
        }
    }

    /// Creates the directory `path`, whose parent exists; an existing entry of that name is an error
    /// (`mkdir`, which never follows a link).
    static func makeDirectory(_ path: String) throws {
        guard mkdir(path, 0o755) == 0 else { throw ShardKitError.io("mkdir", path: path, errno: errno) }
    }

    /// Entries of a directory, sorted, without `.` and `..`.
    static func list(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw ShardKitError.io("opendir", path: path, errno: errno) }
        return names(dir)
    }

    private static func names(_ dir: OpaquePointer) -> [String] {
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

    /// `rm -rf` that never follows a symbolic link: a link is unlinked, and a directory is entered
    /// only through a descriptor opened with `O_NOFOLLOW` (`openat`, `fstatat(AT_SYMLINK_NOFOLLOW)`,
    /// `unlinkat`), so nothing outside `path` is ever removed. Best effort: errors are ignored.
    static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) != S_IFDIR { unlink(path); return }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if fd >= 0 { removeContents(of: fd) }
        rmdir(path)
    }

    /// Removes every entry of the open directory `fd` (and closes it).
    private static func removeContents(of fd: Int32) {
        let copy = dup(fd)
        guard copy >= 0, let dir = fdopendir(copy) else {
            if copy >= 0 { close(copy) }
            close(fd)
            return
        }
        for name in names(dir) {
            var st = stat()
            guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                if child >= 0 { removeContents(of: child) }
                unlinkat(fd, name, AT_REMOVEDIR)
            } else {
                unlinkat(fd, name, 0)
            }
        }
        close(fd)
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
        try writeSmallFile(bytes, to: destination, durable: durable)
    }

    /// Writes `bytes` as the whole of a new file, through a temporary file renamed into place.
    static func writeSmallFile(_ bytes: [UInt8], to path: String, durable: Bool = true) throws {
        let f = try OutputFile(path: path, durable: durable)
        try bytes.withUnsafeBytes { try f.write($0, at: 0) }
        try f.commit()
    }
}
