#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An advisory lock on a file (`flock`), taken without waiting. The file holds the owner's pid, for
/// the message a second run gets.
final class FileLock {
    let path: String
    private var descriptor: Int32
    private(set) var exclusive: Bool

    /// Locks `path` (created if missing; never through a symbolic link). A lock held by another
    /// process is `outputExists` naming its pid. The file is re-checked after locking: a file that
    /// its last holder removed meanwhile is replaced and locked again.
    init(path: String, exclusive: Bool, what: String) throws {
        self.path = path
        self.exclusive = exclusive
        while true {
            let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw ShardKitError.io("open lock file", path: path, errno: errno) }
            if flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0 {
                let e = errno
                let holder = FileLock.pid(in: fd)
                close(fd)
                guard e == EWOULDBLOCK else { throw ShardKitError.io("flock", path: path, errno: e) }
                throw ShardKitError(.outputExists,
                    "\(what): in use by another ShardKit run\(holder.map { " (pid \($0))" } ?? "")")
            }
            // The holder before us may have unlinked the file between our open and our lock.
            var a = stat(), b = stat()
            if fstat(fd, &a) == 0 && lstat(path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev {
                descriptor = fd
                break
            }
            close(fd)
        }
        let pid = Array("\(getpid())\n".utf8)
        if exclusive { _ = ftruncate(descriptor, 0) }
        _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
    }

    /// When another process holds a lock on `path`: the error a run gets (nil when it is free or
    /// missing). Used where a directory is looked at before its lock is taken: what another run is
    /// doing to it meanwhile must read as "in use", not as whatever half-state it is in.
    static func heldError(path: String, what: String) -> ShardKitError? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard flock(fd, LOCK_SH | LOCK_NB) != 0, errno == EWOULDBLOCK else { return nil }
        return ShardKitError(.outputExists,
            "\(what): in use by another ShardKit run\(pid(in: fd).map { " (pid \($0))" } ?? "")")
    }

    private static func pid(in fd: Int32) -> Int? {
        var buffer = [UInt8](repeating: 0, count: 16)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n").first.flatMap { Int($0) }
    }

    /// Releases the lock; removes the file when no other process holds it (taken exclusively first,
    /// so that nobody can be left holding a lock on a file no longer there).
    func release() {
        guard descriptor >= 0 else { return }
        if exclusive || flock(descriptor, LOCK_EX | LOCK_NB) == 0 { unlink(path) }
        close(descriptor)
        descriptor = -1
    }

    deinit { release() }
}

/// The output directory of one run, from its checks to its end: it is never the input, never inside
/// it and never contains it; it is locked against other runs; it is emptied only when it holds
/// ShardKit's own output and replacing was asked for; and a failing run removes exactly what it
/// created.
///
/// Locks (`flock`, files inside the directory): a whole run holds `.shardkit.lock` exclusively; a
/// run that writes some ranks (`Options.ranks`) holds it shared, so that several such runs write
/// side by side, plus `.shardkit-rank-R.lock` exclusively for each rank it writes.
final class OutputDirectory {
    static let lockName = ".shardkit.lock"
    static func rankLockName(_ r: Int) -> String { ".shardkit-rank-\(r).lock" }

    let path: String
    /// Paths this run created, in creation order.
    private(set) var created: [String] = []
    private let createdDirectory: Bool
    private var locks: [FileLock] = []

    /// Checks and prepares `path` for a run that reads `inputs` (files and directories). With
    /// `ranks` (a run writing only those ranks) an unfinished directory of parts is kept; otherwise
    /// an existing non-empty directory is replaced only with `force` and only if ShardKit wrote it.
    init(path: String, inputs: [String], force: Bool, ranks: [Int]?) throws {
        self.path = path
        try OutputDirectory.checkDisjoint(output: path, inputs: inputs)
        if FileSystem.entryExists(path) && !FileSystem.isDirectory(path) {
            throw ShardKitError(.outputExists, "\(path): exists and is not a directory")
        }
        // Checked before anything is created, and again under the lock. A directory another run holds
        // is in use, whatever it looks like meanwhile.
        let lockPath = Path.join(path, OutputDirectory.lockName)
        var needsReplacing = false
        for attempt in 0..<2 {
            do {
                needsReplacing = try OutputDirectory.check(path, force: force, partial: ranks != nil)
                break
            } catch {
                if let held = FileLock.heldError(path: lockPath, what: path) { throw held }
                // A run that held it may have finished between the look and the probe: look again.
                if attempt == 1 { throw error }
            }
        }
        createdDirectory = !FileSystem.entryExists(path)
        try FileSystem.makeDirectories(path)
        do {
            let whole = ranks == nil || needsReplacing
            locks.append(try FileLock(path: lockPath, exclusive: whole, what: path))
            guard try OutputDirectory.check(path, force: force, partial: ranks != nil) == needsReplacing else {
                throw ShardKitError(.outputExists, "\(path): changed by another run while this one started")
            }
            for r in ranks ?? [] {
                locks.append(try FileLock(path: Path.join(path, OutputDirectory.rankLockName(r)), exclusive: true,
                                          what: "\(path) rank \(r)"))
            }
            if needsReplacing {
                // The manifest goes first: a run killed while removing leaves an unfinished directory,
                // never a manifest that vouches for files already gone.
                // Rank directories go last: until then the directory still shows it is ShardKit's.
                let all = try OutputDirectory.entries(path)
                let names = all.filter { $0 == Manifest.fileName }
                    + all.filter { $0 != Manifest.fileName && !$0.hasPrefix("rank-") }
                    + all.filter { $0.hasPrefix("rank-") }
                for name in names {
                    FileSystem.removeTree(Path.join(path, name))
                    if name == Manifest.fileName { try FileSystem.syncDirectory(path) }
                }
            }
        } catch {
            release()
            if createdDirectory { rmdir(path) }
            throw error
        }
    }

    /// Entries other than the lock files.
    static func entries(_ path: String) throws -> [String] {
        try FileSystem.list(path).filter { !($0.hasPrefix(".shardkit") && $0.hasSuffix(".lock")) }
    }

    /// Whether the existing contents must be removed first; throws when they may not be.
    private static func check(_ path: String, force: Bool, partial: Bool) throws -> Bool {
        guard FileSystem.isDirectory(path) else { return false }
        let entries = try entries(path)
        if entries.isEmpty { return false }
        let finished = entries.contains(Manifest.fileName)
        // ShardKit's traces: rank directories, temporary files, the lock file only ShardKit creates.
        let ours = finished || entries.contains { $0.hasPrefix("rank-") || $0.hasSuffix(".tmp") }
            || FileSystem.entryExists(Path.join(path, OutputDirectory.lockName))
        // A partial run adds ranks to a directory of parts; it must not write into a finished shard
        // set (whose manifest would then vouch for rewritten files) nor into someone else's directory.
        if partial && !finished {
            guard ours else {
                throw ShardKitError(.outputExists,
                    "\(path): not a ShardKit output directory (no manifest.json or rank-*); refusing to write into it")
            }
            return false
        }
        guard force else { throw ShardKitError(.outputExists, "\(path): already exists", remedy: .force) }
        guard ours else {
            throw ShardKitError(.outputExists,
                "\(path): not a ShardKit output directory (no manifest.json or rank-*); refusing to replace it")
        }
        return true
    }

    /// The output may not be an input, contain one, or lie inside an input directory (real paths,
    /// symbolic links resolved): replacing or writing it would destroy what is being read.
    static func checkDisjoint(output: String, inputs: [String]) throws {
        let out = Path.resolvedForCreation(output)
        for input in inputs {
            guard let real = Path.resolved(input) else { continue }
            if real == out {
                throw ShardKitError(.outputExists, "\(output): is the input \(input); write the output elsewhere")
            }
            if Path.contains(out, real) {
                throw ShardKitError(.outputExists, "\(output): contains the input \(input); write the output elsewhere")
            }
            if FileSystem.isDirectory(real) && Path.contains(real, out) {
                throw ShardKitError(.outputExists,
                    "\(output): lies inside the input directory \(input); write the output elsewhere")
            }
        }
    }

    /// Records `path` as created by this run (removed again if the run fails).
    func track(_ path: String) { created.append(path) }

    /// Creates the rank directory `name` anew: whatever entry had that name (an earlier run's
    /// directory, a symbolic link) is removed, never followed.
    func makeFreshDirectory(_ name: String) throws -> String {
        let dir = Path.join(path, name)
        FileSystem.removeTree(dir)
        try FileSystem.makeDirectory(dir)
        track(dir)
        return dir
    }

    /// The run failed: removes what it created, then the directory itself if this run made it and
    /// nothing else is left in it, and releases the locks.
    func abandon() {
        for p in created.reversed() { FileSystem.removeTree(p) }
        release()
        if createdDirectory { rmdir(path) }
    }

    /// Releases the locks (their files are removed when no other run holds them).
    func release() {
        for l in locks.reversed() { l.release() }
        locks = []
    }
}
