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
    @OptionGroup var inputOptions: InputOptions
    @OptionGroup var ruleOptions: RuleOptions
    @Flag(name: .long, help: "Print JSON.") var json = false

    struct Row: Encodable {
        var name: String, dtype: String, shape: [Int], rule: SplitRule
        var rankShapes: [[Int]], rankBytes: [Int], intervals: [[[Int]]]
    }
    struct Report: Encodable {
        var tp: Int; var rules: String; var derived: Bool; var tensors: [Row]; var bytesPerRank: [Int]
        var sourceBytes: Int
    }

    func run() throws {
        try ShardKitCommand.guarded {
            let checkpoint = try inputOptions.open(source)
            let rules = try ruleOptions.load(for: checkpoint)
            let plan = try ShardPlan(checkpoint: checkpoint, rules: rules, tp: tp)
            if json {
                let rows = plan.tensors.map { t in
                    Row(name: t.name, dtype: t.dtype.rawValue, shape: t.shape, rule: t.rule,
                        rankShapes: (0..<tp).map { t.pieceShape(rank: $0) },
                        rankBytes: (0..<tp).map { t.pieceBytes(rank: $0) },
                        intervals: t.layouts.map { $0.segments.map { [$0.lowerBound, $0.upperBound] } })
                }
                try Terminal.printJSON(Report(tp: tp, rules: rules.name, derived: rules.derived, tensors: rows,
                                              bytesPerRank: plan.bytesPerRank, sourceBytes: checkpoint.totalBytes))
                return
            }
            print("plan for \(source) at tp \(tp) (\(rules.name))")
            if rules.derived {
                print("the rules are derived (no preset for this model type): from transformers' tensor-parallel "
                      + "plan plus ShardKit's head rules (docs/rules.md); verify runs the generic per-weight check")
            }
            // One aligned row per tensor; "rank 0" columns, with "…" where other ranks differ. The
            // cells are made twice (widths, then the rows) rather than kept: a plan can have a
            // million rows. Written in blocks.
            let header = ["tensor", "dtype", "shape", "rule", "rank 0 shape", "rank 0 bytes"]
            func cells(_ t: ShardPlan.Tensor) -> [String] {
                let differs = (1..<tp).contains { t.layouts[$0].length != t.layouts[0].length }
                return [ShardKitError.printable(t.name), t.dtype.rawValue, "\(t.shape)", t.rule.summary,
                        "\(t.pieceShape(rank: 0))\(differs ? "…" : "")", Terminal.bytes(t.pieceBytes(rank: 0))]
            }
            var widths = header.map(\.count)
            for t in plan.tensors { for (c, cell) in cells(t).enumerated() { widths[c] = max(widths[c], cell.count) } }
            var block = ""
            func emit(_ line: [String]) {
                var row = ""
                for (cell, width) in zip(line, widths) {
                    row += cell
                    row += String(repeating: " ", count: width - cell.count + 2)
                }
                while row.last == " " { row.removeLast() }
                block += row + "\n"
                if block.utf8.count >= 1 << 16 { print(block, terminator: ""); block = "" }
            }
            emit(header)
            for t in plan.tensors { emit(cells(t)) }
            print(block, terminator: "")
            print("totals:")
            for (i, b) in plan.bytesPerRank.enumerated() { print("  rank \(i): \(Terminal.bytes(b))") }
            print("  source: \(Terminal.bytes(checkpoint.totalBytes)), "
                  + "all ranks: \(Terminal.bytes(plan.bytesPerRank.reduce(0, +)))")
        }
    }
}

