import Foundation
import Testing
import ShardKit
@_exported import ShardKitTestSupport

/// Every tensor of a checkpoint (directory or file), read with ShardKit's validated reader.
func checkpointTensors(_ path: String) throws -> [String: (shape: [Int], bytes: [UInt8])] {
    let ckpt = try Checkpoint(path: path)
    let sources = try CheckpointSources(ckpt)
    var out: [String: (shape: [Int], bytes: [UInt8])] = [:]
    for (_, info) in ckpt.tensors { out[info.name] = (info.shape, try sources.bytes(of: info.name)) }
    return out
}

struct CLIResult: CustomStringConvertible {
    var status: Int32
    /// True when the process died of a signal (a crash, SIGXFSZ, ...), not an exit.
    var signaled: Bool
    var stdout: String
    var stderr: String
    var stderrLines: [String] { stderr.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }
    var description: String { "status \(status)\(signaled ? " (signal)" : ""), stderr: \(stderr), stdout: \(stdout.prefix(2000))" }
}

enum CLI {
    /// The `shardkit` executable built next to the test bundle (SwiftPM puts both in the same
    /// directory), else in the package's .build/debug.
    static let executable: String? = {
        var candidates: [String] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(URL(fileURLWithPath: exe).deletingLastPathComponent().path + "/shardkit")
        }
        if let b = Bundle.main.executableURL {
            candidates.append(b.deletingLastPathComponent().path + "/shardkit")
        }
        candidates.append(Fixtures.repoRoot + "/.build/debug/shardkit")
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    static func binary(sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        guard let e = executable else {
            Issue.record("shardkit executable not found next to the test bundle or in .build/debug; run `swift build` first",
                         sourceLocation: sourceLocation)
            throw CancellationError()
        }
        return e
    }

    /// Runs `shardkit args...` as a subprocess.
    static func run(_ args: [String], cwd: String? = nil) throws -> CLIResult {
        try spawn(try binary(), args, cwd: cwd)
    }

    /// Runs a bash script (`$SHARDKIT` is the executable).
    static func bash(_ script: String) throws -> CLIResult {
        try spawn("/bin/bash", ["-c", script], env: ["SHARDKIT": try binary()])
    }

    /// Spawns `exe` with `posix_spawn`, the way a shell would: an empty signal mask and default
    /// dispositions for SIGXFSZ and SIGPIPE (the test runner blocks most signals, and a blocked
    /// SIGXFSZ would hide the CLI dying of it), stdin from /dev/null, stdout/stderr to files.
    static func spawn(_ exe: String, _ args: [String], cwd: String? = nil, env: [String: String] = [:]) throws -> CLIResult {
        if let cwd {
            // posix_spawn_file_actions_addchdir_np is not visible from Swift's Glibc module.
            return try spawn("/bin/sh", ["-c", "cd \"$1\" && shift && exec \"$@\"", "sh", cwd, exe] + args, env: env)
        }
        return try withTempDir { tmp in
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, tmp + "/out", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            posix_spawn_file_actions_addopen(&actions, 2, tmp + "/err", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            var attr = posix_spawnattr_t()
            posix_spawnattr_init(&attr)
            defer { posix_spawnattr_destroy(&attr) }
            var mask = sigset_t()
            sigemptyset(&mask)
            posix_spawnattr_setsigmask(&attr, &mask)
            var defaults = sigset_t()
            sigemptyset(&defaults)
            sigaddset(&defaults, SIGXFSZ)
            sigaddset(&defaults, SIGPIPE)
            posix_spawnattr_setsigdefault(&attr, &defaults)
            posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

            var environment = ProcessInfo.processInfo.environment
            for (k, v) in env { environment[k] = v }
            let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + args).map { strdup($0) } + [nil]
            let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
            defer { for p in argv + envp { free(p) } }
            var pid = pid_t()
            let rc = posix_spawn(&pid, exe, &actions, &attr, argv, envp)
            guard rc == 0 else { throw ShardKitError(.io, "posix_spawn \(exe): \(String(cString: strerror(rc)))") }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 {
                guard errno == EINTR else { throw ShardKitError(.io, "waitpid: \(String(cString: strerror(errno)))") }
            }
            let signal = status & 0x7F
            let signaled = signal != 0 && signal != 0x7F
            return CLIResult(status: signaled ? signal : (status >> 8) & 0xFF, signaled: signaled,
                             stdout: try String(contentsOfFile: tmp + "/out", encoding: .utf8),
                             stderr: try String(contentsOfFile: tmp + "/err", encoding: .utf8))
        }
    }
}

/// A failed command: exit status 1 (not a signal), one line on stderr starting with `error:` and
/// containing every one of `words`.
func expectCLIError(_ r: CLIResult, _ words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(!r.signaled, "\(r)", sourceLocation: sourceLocation)
    #expect(r.status == 1, "\(r)", sourceLocation: sourceLocation)
    #expect(r.stderrLines.count == 1, "stderr should be one line: \(r.stderr)", sourceLocation: sourceLocation)
    #expect(r.stderr.hasPrefix("error: "), "\(r.stderr)", sourceLocation: sourceLocation)
    for w in words {
        #expect(r.stderr.contains(w), "stderr \"\(r.stderr)\" should contain \"\(w)\"", sourceLocation: sourceLocation)
    }
}

/// A minimal safetensors writer for building odd checkpoints (through ShardKit's layout + OutputFile).
func writeSafetensors(_ tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])], to path: String) throws {
    let layout = try SafetensorsLayout(tensors: tensors.map { ($0.name, $0.dtype, $0.shape) }, metadata: ["format": "pt"])
    let f = try OutputFile(path: path)
    try layout.writeHeader(to: f)
    for (e, t) in zip(layout.entries, tensors) { try t.bytes.withUnsafeBytes { try f.write($0, at: e.offset) } }
    try f.commit()
}
