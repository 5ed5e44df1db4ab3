import Foundation

// Helpers shared by the test targets: fixture paths, temporary directories, file helpers.

/// Paths into the repository's `fixtures/` directory, found from this file's location.
public enum Fixtures {
    public static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }  // TestSupport.swift, ShardKitTestSupport, Tests
        return url.path
    }()
    public static let root = repoRoot + "/fixtures"
    public static func path(_ name: String) -> String { root + "/" + name }
    public static func bad(_ name: String) -> String { root + "/bad/" + name }
}

/// Runs `body` with a fresh empty directory that is removed afterwards (whatever happens).
public func withTempDir<T>(_ body: (String) throws -> T) throws -> T {
    var template = Array((NSTemporaryDirectory() + "shardkit-test-XXXXXX").utf8CString)
    let dir: String = template.withUnsafeMutableBufferPointer { buf in
        guard let p = mkdtemp(buf.baseAddress!) else { return "" }
        return String(cString: p)
    }
    precondition(!dir.isEmpty, "mkdtemp failed")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    return try body(dir)
}

public func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

public func readBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

public func writeBytes(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Equality that does not make #expect print megabytes of operands on failure.
public func same<T: Equatable>(_ a: T, _ b: T) -> Bool { a == b }

/// Every regular file under `dir`, as paths relative to it, sorted.
public func listFiles(_ dir: String) -> [String] {
    guard let e = FileManager.default.enumerator(atPath: dir) else { return [] }
    var files: [String] = []
    while let rel = e.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir + "/" + rel, isDirectory: &isDir), !isDir.boolValue {
            files.append(rel)
        }
    }
    return files.sorted()
}

/// Copies a fixture directory (its files, not subdirectories) to `to`.
public func copyFixture(_ name: String, to: String, skipping: Set<String> = []) throws {
    try FileManager.default.createDirectory(atPath: to, withIntermediateDirectories: true)
    for f in try FileManager.default.contentsOfDirectory(atPath: Fixtures.path(name)) where !skipping.contains(f) {
        try FileManager.default.copyItem(atPath: Fixtures.path(name) + "/" + f, toPath: to + "/" + f)
    }
}
