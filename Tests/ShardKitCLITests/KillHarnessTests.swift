import Foundation
import Testing
import ShardKit

/// SIGKILL at many points of a run: `strace` (fault injection) kills `shard` / `reshard` at the N-th
/// call of a file-system system call (creating directories, opening, writing, syncing, renaming,
/// removing), so the kill lands at exact places across the whole run, final renames and the
/// manifest included. Each time the output must be either complete (and verify) or have no
/// manifest and be refused by every reader as unfinished; a rerun with --force must then succeed
/// and leave no .tmp file.
@Suite("kill harness", .serialized)
struct KillHarnessTests {
    /// The system calls at which runs are killed, and how many points of each to try at most.
    static let syscalls = ["mkdir", "openat", "pwrite64", "write", "ftruncate", "fsync", "fdatasync", "rename",
                           "unlink", "unlinkat", "rmdir"]
    static let pointsPerCall = 8

    struct Outcomes { var killedIncomplete = 0, killedComplete = 0, killedBeforeOutput = 0, notKilled = 0, points = 0 }

    /// How many times each system call of `calls` is made by the busiest thread of `command`.
    func callCounts(_ command: [String]) throws -> [String: Int] {
        try withTempDir { tmp in
            let log = tmp + "/trace"
            let r = try CLI.spawn("/usr/bin/env", ["strace", "-f", "-qq", "-o", log, "-e",
                                                   "trace=" + KillHarnessTests.syscalls.joined(separator: ",")] + command)
            #expect(r.status == 0, "traced run failed: \(r)")
            var counts: [String: [String: Int]] = [:]  // call -> thread -> count
            for line in try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n") {
                let parts = line.split(separator: " ", maxSplits: 1)
                guard parts.count == 2, let paren = parts[1].firstIndex(of: "(") else { continue }
                let call = parts[1][..<paren].trimmingCharacters(in: .whitespaces)
                counts[call, default: [:]][String(parts[0]), default: 0] += 1
            }
            return counts.mapValues { $0.values.max() ?? 0 }
        }
    }

    /// Kills `command` (which writes `out`) at spread points of every call, checking each outcome with
    /// `check(complete:)`, and reruns it cleanly each time.
    /// Every other point starts from no output; the others replace the complete output of the rerun
    /// before (so kills also land while --force removes an old shard set).
    func harness(_ command: [String], out: String, check: (_ complete: Bool, _ what: String) throws -> Void) throws -> Outcomes {
        let counts = try callCounts(command)
        var outcomes = Outcomes()
        for call in KillHarnessTests.syscalls {
            let n = counts[call] ?? 0
            guard n > 0 else { continue }
            let step = max(1, n / KillHarnessTests.pointsPerCall)
            var points = Array(stride(from: 1, through: n, by: step))
            if points.last != n { points.append(n) }
            for (i, when) in points.enumerated() {
                if i % 2 == 0 { try? FileManager.default.removeItem(atPath: out) }
                let r = try CLI.spawn("/usr/bin/env", ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=\(call)",
                                                       "-e", "inject=\(call):signal=SIGKILL:when=\(when)"] + command)
                outcomes.points += 1
                let complete = FileManager.default.fileExists(atPath: out + "/manifest.json")
                if r.status == 0 && !r.signaled { outcomes.notKilled += 1 } else if !FileManager.default.fileExists(atPath: out) {
                    outcomes.killedBeforeOutput += 1
                } else if complete {
                    outcomes.killedComplete += 1
                } else { outcomes.killedIncomplete += 1 }
                try check(complete, "killed at \(call) #\(when): \(listFiles(out))")
                // A rerun replaces whatever the kill left, and leaves no temporary file.
                let rerun = try CLI.run(Array(command.dropFirst()))
                #expect(rerun.status == 0, "rerun after a kill at \(call) #\(when): \(rerun)")
                #expect(listFiles(out).filter { $0.hasSuffix(".tmp") }.isEmpty, "after \(call) #\(when)")
                try check(true, "rerun after \(call) #\(when)")
            }
        }
        return outcomes
    }

    /// Complete: the manifest's shard set verifies against the source. Unfinished: no manifest, and
    /// every reader (the library, verify, reshard) refuses it as unfinished.
    func checkOutput(_ out: String, source: String, complete: Bool, what: String) throws {
        if complete {
            let r = try CLI.run(["verify", out, "--source", source, "--no-numerics"])
            #expect(r.status == 0, "\(what): a complete-looking output does not verify: \(r)")
            return
        }
        var library = "opened"
        do { _ = try ShardSet(directory: out) } catch { library = "\(error)" }
        // Killed before the output directory was made: nothing to find (and nothing to mistake).
        let expected = FileManager.default.fileExists(atPath: out) ? "unfinished" : "no such directory"
        #expect(library.contains(expected), "\(what): ShardSet: \(library)")
        let verify = try CLI.run(["verify", out, "--no-numerics"])
        #expect(verify.status != 0 && verify.stderr.contains(expected), "\(what): verify: \(verify)")
        try withTempDir { tmp in
            let reshard = try CLI.run(["reshard", out, "--tp", "1", "--out", tmp + "/x"])
            #expect(reshard.status != 0 && reshard.stderr.contains(expected), "\(what): reshard: \(reshard)")
        }
    }

    @Test("shard killed anywhere: complete and verified, or unfinished and refused; --force recovers")
    func killShard() throws {
        let exe = try CLI.binary()
        try withTempDir { dir in
            let source = Fixtures.path("llama-gqa"), out = dir + "/out"
            let command = [exe, "shard", source, "--tp", "2", "--out", out, "--max-file-size", "100000", "--force"]
            let outcomes = try harness(command, out: out) { complete, what in
                try checkOutput(out, source: source, complete: complete, what: what)
            }
            print("kill harness, shard: \(outcomes)")
            #expect(outcomes.killedIncomplete >= 30)
        }
    }

    @Test("reshard killed anywhere: complete and verified, or unfinished and refused; --force recovers")
    func killReshard() throws {
        let exe = try CLI.binary()
        try withTempDir { dir in
            let source = Fixtures.path("llama-gqa"), input = dir + "/tp2", out = dir + "/out"
            #expect(try CLI.run(["shard", source, "--tp", "2", "--out", input]).status == 0)
            let command = [exe, "reshard", input, "--tp", "4", "--out", out, "--force"]
            let outcomes = try harness(command, out: out) { complete, what in
                try checkOutput(out, source: source, complete: complete, what: what)
            }
            print("kill harness, reshard: \(outcomes)")
            #expect(outcomes.killedIncomplete >= 30)
        }
    }
}
