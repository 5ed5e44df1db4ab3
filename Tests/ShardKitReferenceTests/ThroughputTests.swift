import Foundation
import ShardKit
import Testing
import ShardKitReference

/// Opt-in measurement on a larger checkpoint: SHARDKIT_REFERENCE_BIG=<checkpoint dir> (and optionally
/// SHARDKIT_REFERENCE_BIG_TP, default 4). Prints the report's timings next to square sgemm.
@Test("throughput on a large checkpoint (opt-in)", .enabled(if: ProcessInfo.processInfo.environment["SHARDKIT_REFERENCE_BIG"] != nil))
func bigCheckpointThroughput() throws {
    let env = ProcessInfo.processInfo.environment
    let dir = env["SHARDKIT_REFERENCE_BIG"]!
    let tp = Int(env["SHARDKIT_REFERENCE_BIG_TP"] ?? "4") ?? 4
    let ckpt = try Checkpoint(path: dir)
    let out = temporaryPath("big-tp\(tp)")
    defer { removeDirectory(out) }
    try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: tp, output: out)
    let report = try ReferenceForward.verify(shards: try ShardSet(directory: out), full: ckpt, reference: nil, options: NumericsOptions())
    let square = ReferenceForward.sgemmThroughput(n: 1024)
    print(String(format: "[big] tp=%d passed=%d final rel %.2e worst %@ | %.1f s total, gemm %.2f GFLOP in %.2f s per thread = %.1f GFLOP/s (%.1f with widening); square sgemm n=1024 %.1f GFLOP/s (%.0f%%)",
                 tp, report.passed ? 1 : 0, report.final.maxRelError, (report.worstLayer ?? "-") as NSString, report.seconds,
                 report.gemmFlops / 1e9, report.gemmSeconds, report.gemmGFLOPS, report.productGFLOPS, square, 100 * report.gemmGFLOPS / square))
    #expect(report.passed)
}
