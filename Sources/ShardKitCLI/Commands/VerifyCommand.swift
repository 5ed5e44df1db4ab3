import ArgumentParser
import Foundation
import ShardKit
import ShardKitHDF5
import ShardKitReference

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Prove a shard set right: integrity, exact reconstruction against the source, and a reference TP forward pass.")

    @Argument(help: "Shard set directory (with manifest.json).") var shards: String
    @Option(name: .long, help: "The original checkpoint, for bit-exact reconstruction and the full forward pass.") var source: String?
    @Option(name: .long, help: "reference.safetensors with input_ids and logits (or last_hidden_state).") var reference: String?
    @Option(name: .long, help: "Number of tokens of the fixed deterministic input (without --reference).") var tokens: Int = 16
    @Option(name: .long, help: "Relative tolerance for the numeric checks.") var tolerance: Double?
    @Flag(name: .long, help: "Skip the forward pass (integrity and reconstruction only).") var noNumerics = false
    @Flag(name: .long, help: "Print a machine-readable report.") var json = false
    @Flag(name: .long, help: "Also measure cblas_sgemm on square 2048x2048 matrices, to compare the pass's matrix-product rate with it.")
    var sgemmBaseline = false

    struct Report: Codable {
        var shards: String
        var tp: Int
        var checks: [Verify.Check]
        var numerics: NumericsSummary?
        var passed: Bool
    }

    func run() throws {
        let report: Report = try ShardKitCommand.guarded {
            let set: ShardSet
            do { set = try ShardSet(directory: shards) } catch let e as ShardKitError where e.code == .invalidManifest {
                throw ShardKitError(.verificationFailed, e.message)
            }
            var checks = [Verify.integrity(set, progress: Terminal.progress(label: "integrity"))]
            Terminal.clearProgress()
            var checkpoint: Checkpoint?
            if let source {
                checkpoint = try Checkpoint(path: source, formats: inputFormats)
                checks.append(Verify.reconstruction(set, source: checkpoint!, progress: Terminal.progress(label: "reconstruction")))
                Terminal.clearProgress()
            } else {
                checks.append(.init(name: "reconstruction", status: "skipped", detail: "no --source given", failures: []))
            }
            var numerics: NumericsSummary?
            if noNumerics || checks.contains(where: { $0.status == "fail" }) {
                checks.append(.init(name: "numerics", status: "skipped",
                                    detail: noNumerics ? "--no-numerics" : "skipped because a byte-level check failed", failures: []))
            } else {
                var (check, summary) = try Numerics.run(set: set, full: checkpoint, reference: reference, tokens: tokens, tolerance: tolerance)
                if sgemmBaseline { summary?.squareSgemmGFLOPS = ReferenceForward.sgemmThroughput(n: 2048) }
                checks.append(check)
                numerics = summary
            }
            return Report(shards: shards, tp: set.tp, checks: checks, numerics: numerics,
                          passed: checks.allSatisfy { $0.status != "fail" })
        }
        if json {
            try Terminal.printJSON(report)
        } else {
            print("verify \(shards) (tp \(report.tp))")
            for c in report.checks {
                print("  \(c.status.uppercased().padding(toLength: 7, withPad: " ", startingAt: 0)) \(c.name): \(c.detail)")
                for f in c.failures.prefix(20) { print("          \(f)") }
                if c.failures.count > 20 { print("          … \(c.failures.count - 20) more") }
            }
            report.numerics?.printHuman()
            print(report.passed ? "PASSED" : "FAILED")
        }
        if !report.passed { throw ExitCode(1) }
    }
}
