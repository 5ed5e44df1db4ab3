import Foundation
import ShardKit
import ShardKitReference

/// The numeric half of verify: the reference forward pass (full weights vs G ranks with simulated
/// collectives) for architectures ShardKit knows, else the per-weight generic check.
struct NumericsSummary: Codable {
    var mode: String
    var report: NumericsReport
    /// cblas_sgemm on square matrices, when measured (`--sgemm-baseline`).
    var squareSgemmGFLOPS: Double?

    func printHuman() {
        let r = report
        print("  numerics (\(mode), \(r.architecture), \(r.tokens) \(mode == "forward pass" ? "tokens" : "random inputs")):")
        func line(_ label: String, _ s: ComparisonStats) {
            print(String(format: "    %@ %-28@ max abs %.3e  max rel %.3e  cosine %.9f", s.passed ? "pass" : "FAIL",
                         label as NSString, s.maxAbsError, s.maxRelError, s.cosine))
        }
        line("TP vs full (final)", r.final)
        if let s = r.reference { line("full vs reference", s) }
        if let s = r.referenceTP { line("TP vs reference", s) }
        let failing = r.layers.filter { !$0.stats.passed }
        for l in failing.prefix(10) { line(l.name, l.stats) }
        if let w = r.worstLayer, let s = r.layers.first(where: { $0.name == w })?.stats {
            print(String(format: "    worst: %@ (max rel %.3e) of %d comparisons", w, s.maxRelError, r.layers.count))
        }
        print(String(format: "    tolerance %.1e (reference %.1e); %.2fs", r.tolerance, r.referenceTolerance ?? r.tolerance, r.seconds))
        print(String(format: "    matrix products: %.2f GFLOP; sgemm %.1f GFLOP/s on %d threads (%.1f GFLOP/s with widening to f32)",
                     r.gemmFlops / 1e9, r.gemmGFLOPS, r.gemmWorkers, r.productGFLOPS))
        if let square = squareSgemmGFLOPS {
            print(String(format: "    square cblas_sgemm (2048): %.1f GFLOP/s; the pass reached %.0f%% of it", square, 100 * r.gemmGFLOPS / square))
        }
    }
}

enum Numerics {
    static func run(set: ShardSet, full: Checkpoint?, reference: String?, tokens: Int, tolerance: Double?) throws -> (Verify.Check, NumericsSummary?) {
        guard tokens >= 1 else { throw ShardKitError(.verificationFailed, "--tokens must be at least 1") }
        var options = NumericsOptions()
        if let tolerance { options.tolerance = tolerance }
        let modelType = full?.config?.modelType ?? (try? ModelConfig(path: (set.directory as NSString).appendingPathComponent("config.json")))?.modelType
        let report: NumericsReport
        let mode: String
        if let modelType, ReferenceForward.supportedModelTypes.contains(modelType) {
            options.tokenCount = tokens
            report = try ReferenceForward.verify(shards: set, full: full, reference: reference, options: options)
            mode = "forward pass"
        } else {
            if reference != nil {
                throw ShardKitError(.verificationFailed, "--reference needs a forward pass, and model type \(modelType ?? "(none)") has none (supported: \(ReferenceForward.supportedModelTypes.joined(separator: ", ")))")
            }
            report = try GenericLinearCheck.verify(shards: set, full: full, options: options)
            mode = "generic linear check"
        }
        var failures = report.layers.filter { !$0.stats.passed }.map { "\($0.name): max rel error \($0.stats.maxRelError)" }
        if !report.final.passed { failures.append("final output: TP vs full max rel error \(report.final.maxRelError)") }
        if let r = report.reference, !r.passed { failures.append("full pass vs reference: max rel error \(r.maxRelError)") }
        if let r = report.referenceTP, !r.passed { failures.append("TP pass vs reference: max rel error \(r.maxRelError)") }
        let detail = String(format: "%@: TP vs full max rel %.2e%@", mode, report.final.maxRelError,
                            report.reference.map { String(format: ", full vs reference %.2e", $0.maxRelError) } ?? "")
        return (Verify.Check(name: "numerics", status: report.passed ? "pass" : "fail", detail: detail, failures: failures),
                NumericsSummary(mode: mode, report: report))
    }
}
