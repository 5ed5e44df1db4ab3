import Foundation
import ShardKit

/// `shardkit verify` as a library call: which checks run, in which order, and what a failure skips.
/// Integrity always; reconstruction when the source checkpoint is given; numerics (the reference
/// forward pass where the architecture has one, else the generic per-weight check) unless turned off
/// or a byte-level check failed. Front ends only parse options and print the `VerifyReport`.
public struct VerifyRun {
    public var shards: ShardSet
    /// The original checkpoint, for bit-exact reconstruction and the full forward pass.
    public var source: Checkpoint?
    /// reference.safetensors with input_ids and logits (or last_hidden_state).
    public var reference: String?
    public var numerics = true
    public var options = NumericsOptions()
    /// Also measure square `cblas_sgemm`, to compare the pass's matrix-product rate with it.
    public var sgemmBaseline = false

    public init(shards: ShardSet, source: Checkpoint? = nil, reference: String? = nil) {
        self.shards = shards
        self.source = source
        self.reference = reference
    }

    /// Runs the checks. `progress(check)` gives a progress handler for the byte-level check named.
    public func run(progress: (String) -> ProgressHandler? = { _ in nil }) throws -> VerifyReport {
        var checks = [Verify.integrity(shards, progress: progress("integrity"))]
        if let source {
            checks.append(Verify.reconstruction(shards, source: source, progress: progress("reconstruction")))
        } else {
            checks.append(.init(name: "reconstruction", status: .skipped, detail: "no source checkpoint given",
                                failures: []))
        }
        var summary: NumericsSummary?
        if !numerics || checks.contains(where: { $0.status == .fail }) {
            checks.append(.init(name: "numerics", status: .skipped,
                                detail: numerics ? "skipped because a byte-level check failed" : "turned off",
                                failures: []))
        } else {
            let (check, s) = try runNumerics()
            checks.append(check)
            summary = s
        }
        return VerifyReport(shards: shards.directory, tp: shards.tp, pp: shards.layout.pp, ep: shards.layout.ep,
                            checks: checks, numerics: summary,
                            passed: checks.allSatisfy { $0.status != .fail })
    }

    /// The forward pass where the architecture has one, else the generic per-weight check.
    private func runNumerics() throws -> (Verify.Check, NumericsSummary) {
        guard options.tokenCount >= 1 else {
            throw ShardKitError(.verificationFailed, "the token count must be at least 1")
        }
        let configPath = Path.join(shards.directory, "config.json")
        let modelType = source?.config?.modelType ?? (try? ModelConfig(path: configPath))?.modelType
        let report: NumericsReport
        let mode: String
        if let modelType, ReferenceForward.supportedModelTypes.contains(modelType) {
            report = try ReferenceForward.verify(shards: shards, full: source, reference: reference, options: options)
            mode = "forward pass"
        } else {
            if reference != nil {
                throw ShardKitError(.verificationFailed, "a reference needs a forward pass, "
                    + "and model type \(modelType ?? "(none)") "
                    + "has none (supported: \(ReferenceForward.supportedModelTypes.joined(separator: ", ")))")
            }
            report = try GenericLinearCheck.verify(shards: shards, full: source, options: options)
            mode = "generic linear check"
        }
        var failures = report.layers.filter { !$0.stats.passed }
            .map { "\($0.name): max rel error \($0.stats.maxRelError)" }
        if !report.final.passed {
            failures.append("final output: TP vs full max rel error \(report.final.maxRelError)")
        }
        if let r = report.reference, !r.passed {
            failures.append("full pass vs reference: max rel error \(r.maxRelError)")
        }
        if let r = report.referenceTP, !r.passed {
            failures.append("TP pass vs reference: max rel error \(r.maxRelError)")
        }
        var detail = "\(mode): TP vs full max rel \(String(format: "%.2e", report.final.maxRelError))"
        if let r = report.reference { detail += ", full vs reference \(String(format: "%.2e", r.maxRelError))" }
        if mode == "generic linear check" {
            // Say plainly what a per-weight check cannot see.
            detail += " (each split weight alone, as a linear map: it cannot see whether heads stay whole or how "
                + "attention, norms and routing combine across ranks; ShardKit refuses head-cutting splits of the "
                + "tensors its presets know at plan time)"
        }
        var summary = NumericsSummary(mode: mode, report: report)
        if sgemmBaseline { summary.squareSgemmGFLOPS = ReferenceForward.sgemmThroughput(n: 2048) }
        return (Verify.Check(name: "numerics", status: report.passed ? .pass : .fail, detail: detail,
                             failures: failures),
                summary)
    }
}

/// What `VerifyRun` found.
public struct VerifyReport: Codable, Sendable {
    public var shards: String
    public var tp: Int
    public var pp: Int
    public var ep: Int
    public var checks: [Verify.Check]
    public var numerics: NumericsSummary?
    public var passed: Bool
}

/// The numeric check's report and how it was computed.
public struct NumericsSummary: Codable, Sendable {
    /// "forward pass" or "generic linear check".
    public var mode: String
    public var report: NumericsReport
    /// cblas_sgemm on square matrices, when measured.
    public var squareSgemmGFLOPS: Double?
}
