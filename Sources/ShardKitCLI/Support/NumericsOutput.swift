import Foundation
import ShardKit
import ShardKitReference

/// verify's numeric report, for people.
extension NumericsSummary {
    func printHuman() {
        let r = report
        print("  numerics (\(mode), \(r.architecture), \(r.tokens) "
              + "\(mode == "forward pass" ? "tokens" : "random inputs")):")
        func line(_ label: String, _ s: ComparisonStats) {
            print(String(format: "    %@ %-28@ max abs %.3e  max rel %.3e  cosine %.9f", s.passed ? "pass" : "FAIL",
                         label as NSString, s.maxAbsError, s.maxRelError, s.cosine))
        }
        line("TP vs full (final)", r.final)
        if let s = r.reference { line("full vs reference", s) }
        if let s = r.referenceTP { line("TP vs reference", s) }
        for st in r.stages ?? [] {
            let label = "stage \(st.stage) (ranks \(ShardPlan.describeRanks(st.ranks)), "
                + "layers \(st.layers[0])..<\(st.layers[1]))"
            line(label, st.worst)
        }
        let failing = r.layers.filter { !$0.stats.passed }
        for l in failing.prefix(10) { line(l.name, l.stats) }
        if let w = r.worstLayer, let s = r.layers.first(where: { $0.name == w })?.stats {
            print(String(format: "    worst: %@ (max rel %.3e) of %d comparisons", w, s.maxRelError, r.layers.count))
        }
        print(String(format: "    tolerance %.1e (reference %.1e); %.2fs",
                     r.tolerance, r.referenceTolerance ?? r.tolerance, r.seconds))
        print(String(format: "    matrix products: %.2f GFLOP; sgemm %.1f GFLOP/s on %d threads "
                     + "(%.1f GFLOP/s with widening to f32)",
                     r.gemmFlops / 1e9, r.gemmGFLOPS, r.gemmWorkers, r.productGFLOPS))
        if let square = squareSgemmGFLOPS {
            print(String(format: "    square cblas_sgemm (2048): %.1f GFLOP/s; the pass reached %.0f%% of it",
                         square, 100 * r.gemmGFLOPS / square))
        }
    }
}
