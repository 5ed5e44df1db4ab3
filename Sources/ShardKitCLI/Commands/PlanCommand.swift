import ArgumentParser
import Foundation
import ShardKit

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Dry run: print each tensor's rule and every rank's shape and bytes; writes nothing.")

    @Argument(help: "Checkpoint directory or weights file (.safetensors, a torch.save .bin/.pt, or .h5).")
    var source: String
    @Option(name: .long, help: "Tensor-parallel degree.") var tp: Int
    @OptionGroup var ruleOptions: RuleOptions
    @Flag(name: .long, help: "Print JSON.") var json = false

    struct Row: Encodable {
        var name: String, dtype: String, shape: [Int], rule: SplitRule
        var rankShapes: [[Int]], rankBytes: [Int], intervals: [[[Int]]]
    }
    struct Report: Encodable {
        var tp: Int; var rules: String; var tensors: [Row]; var bytesPerRank: [Int]; var sourceBytes: Int
    }

    func run() throws {
        try ShardKitCommand.guarded {
            let checkpoint = try openCheckpoint(source)
            let rules = try ruleOptions.load(for: checkpoint)
            let plan = try ShardPlan(checkpoint: checkpoint, rules: rules, tp: tp)
            let rows = plan.tensors.map { t in
                Row(name: t.name, dtype: t.dtype.rawValue, shape: t.shape, rule: t.rule,
                    rankShapes: (0..<tp).map { t.pieceShape(rank: $0) },
                    rankBytes: (0..<tp).map { t.pieceBytes(rank: $0) },
                    intervals: t.layouts.map { $0.segments.map { [$0.lowerBound, $0.upperBound] } })
            }
            let report = Report(tp: tp, rules: rules.name, tensors: rows, bytesPerRank: plan.bytesPerRank,
                                sourceBytes: checkpoint.totalBytes)
            if json { try Terminal.printJSON(report); return }
            print("plan for \(source) at tp \(tp) (\(rules.name))")
            // One aligned row per tensor; "rank 0" columns, with "…" where other ranks differ.
            let table = [["tensor", "dtype", "shape", "rule", "rank 0 shape", "rank 0 bytes"]] + rows.map { r in
                [ShardKitError.printable(r.name), r.dtype, "\(r.shape)", r.rule.summary,
                 "\(r.rankShapes[0])\(Set(r.rankShapes).count > 1 ? "…" : "")", Terminal.bytes(r.rankBytes[0])]
            }
            let widths = (0..<6).map { c in table.map { $0[c].count }.max() ?? 0 }
            for line in table {
                print(zip(line, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
            print("totals:")
            for (i, b) in plan.bytesPerRank.enumerated() { print("  rank \(i): \(Terminal.bytes(b))") }
            print("  source: \(Terminal.bytes(checkpoint.totalBytes)), "
                  + "all ranks: \(Terminal.bytes(plan.bytesPerRank.reduce(0, +)))")
        }
    }
}

