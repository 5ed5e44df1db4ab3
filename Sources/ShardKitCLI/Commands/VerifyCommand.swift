import ArgumentParser
import Foundation
import ShardKit
import ShardKitReference

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Prove a shard set right: integrity, exact reconstruction against the source, "
            + "and a reference TP forward pass.")

    @Argument(help: "Shard set directory (with manifest.json).") var shards: String
    @Option(name: .long, help: "The original checkpoint, for bit-exact reconstruction and the full forward pass.")
    var source: String?
    @OptionGroup var inputOptions: InputOptions
    @Option(name: .long, help: "reference.safetensors with input_ids and logits (or last_hidden_state).")
    var reference: String?
    @Option(name: .long, help: "Number of tokens of the fixed deterministic input (without --reference).")
    var tokens: Int = 16
    @Option(name: .long, help: "Relative tolerance for the numeric checks.") var tolerance: Double?
    @Flag(name: .long, help: "Skip the forward pass (integrity and reconstruction only).") var noNumerics = false
    @Flag(name: .long, help: "Print a machine-readable report.") var json = false
    @Flag(name: .long, help: ArgumentHelp("Also measure cblas_sgemm on square 2048x2048 matrices, "
                                          + "to compare the pass's matrix-product rate with it."))
    var sgemmBaseline = false

    func run() throws {
        let report: VerifyReport = try ShardKitCommand.guarded {
            let set: ShardSet
            do { set = try ShardSet(directory: shards) } catch let e as ShardKitError where e.code == .invalidManifest {
                throw ShardKitError(.verificationFailed, e.message, remedy: e.remedy)
            }
            guard tokens >= 1 else { throw ShardKitError(.verificationFailed, "--tokens must be at least 1") }
            var run = VerifyRun(shards: set, source: try source.map(inputOptions.open), reference: reference)
            run.numerics = !noNumerics
            run.sgemmBaseline = sgemmBaseline
            run.options.tokenCount = tokens
            if let tolerance { run.options.tolerance = tolerance }
            let report = try run.run { label in
                Terminal.clearProgress()
                return Terminal.progress(label: label)
            }
            Terminal.clearProgress()
            return report
        }
        if json {
            try Terminal.printJSON(report)
        } else {
            print("verify \(shards) (tp \(report.tp)\(report.pp > 1 ? ", pp \(report.pp)" : "")"
                  + "\(report.ep > 1 ? ", ep \(report.ep)" : ""))")
            for c in report.checks {
                let status = c.status.rawValue.uppercased().padding(toLength: 7, withPad: " ", startingAt: 0)
                print("  \(status) \(c.name): \(c.detail)")
                for f in c.failures.prefix(20) { print("          \(f)") }
                if c.failures.count > 20 { print("          … \(c.failures.count - 20) more") }
            }
            report.numerics?.printHuman()
            print(report.passed ? "PASSED" : "FAILED")
        }
        if !report.passed { throw ExitCode(1) }
    }
}
