import ArgumentParser
import Foundation
import ShardKit

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Dry run: print each tensor's rule and every rank's shape and bytes, and the rank grid; "
            + "writes nothing.")

    @Argument(help: "Checkpoint directory or weights file (.safetensors, a torch.save .bin/.pt, or .h5).")
    var source: String
    @Option(name: .long, help: "Tensor-parallel degree (ranks per pipeline stage).") var tp: Int
    @OptionGroup var layoutOptions: LayoutOptions
    @OptionGroup var inputOptions: InputOptions
    @OptionGroup var ruleOptions: RuleOptions
    @Flag(name: .long, help: "Print JSON.") var json = false

    /// One tensor: the world ranks holding it, and for each of them its piece's shape, bytes and intervals.
    struct Row: Encodable {
        var name: String, dtype: String, shape: [Int], rule: SplitRule
        var ranks: [Int], rankShapes: [[Int]], rankBytes: [Int], intervals: [[[Int]]]
    }
    /// One world rank of the grid.
    struct GridRank: Encodable {
        var rank: Int, pp: Int, tp: Int
        /// Decoder layers `[start, end)` of its stage (nil when the model has none).
        var layers: [Int]?
        /// With EP > 1: the experts it computes, per MoE layer of its stage.
        var experts: [String: [Int]]?
        var bytes: Int
    }
    struct Report: Encodable {
        var tp: Int; var pp: Int; var ep: Int; var rules: String; var derived: Bool; var tensors: [Row]
        var bytesPerRank: [Int]
        var grid: [GridRank]
        /// Largest rank's bytes / mean bytes per rank.
        var imbalance: Double
        var sourceBytes: Int
    }

    /// The grid of world ranks: coordinates, layers, experts, bytes.
    static func grid(_ plan: ShardPlan) -> [GridRank] {
        let l = plan.layout
        return (0..<plan.worldSize).map { w in
            let (s, r) = l.coordinates(of: w)
            let layers = l.stageLayers.isEmpty ? nil : l.stageLayers[s]
            var experts: [String: [Int]]? = nil
            if l.ep > 1 {
                experts = [:]
                for (layer, groups) in l.experts where layers?.contains(layer) ?? true {
                    experts![String(layer)] = groups[r / l.groupSize]
                }
            }
            return GridRank(rank: w, pp: s, tp: r, layers: layers.map { [$0.lowerBound, $0.upperBound] },
                            experts: experts, bytes: plan.bytesPerRank[w])
        }
    }

    static func imbalance(_ bytes: [Int]) -> Double {
        let mean = Double(bytes.reduce(0, +)) / Double(max(bytes.count, 1))
        return mean > 0 ? Double(bytes.max() ?? 0) / mean : 1
    }

    func run() throws {
        try ShardKitCommand.guarded {
            let checkpoint = try inputOptions.open(source)
            let rules = try ruleOptions.load(for: checkpoint)
            let request = try layoutOptions.request(tp: tp)
            let plan = try ShardPlan(checkpoint: checkpoint, rules: rules, request: request)
            let layout = plan.layout
            if json {
                let rows = plan.tensors.map { t in
                    Row(name: t.name, dtype: t.dtype.rawValue, shape: t.shape, rule: t.rule, ranks: t.holders,
                        rankShapes: t.holders.map { t.pieceShape(rank: $0) },
                        rankBytes: t.holders.map { t.pieceBytes(rank: $0) },
                        intervals: t.holders.map {
                            t.layout(rank: $0)!.segments.map { [$0.lowerBound, $0.upperBound] }
                        })
                }
                try Terminal.printJSON(Report(tp: tp, pp: layout.pp, ep: layout.ep, rules: rules.name,
                                              derived: rules.derived, tensors: rows,
                                              bytesPerRank: plan.bytesPerRank, grid: PlanCommand.grid(plan),
                                              imbalance: PlanCommand.imbalance(plan.bytesPerRank),
                                              sourceBytes: checkpoint.totalBytes))
                return
            }
            let tpOnly = layout.isTensorParallelOnly
            print("plan for \(source) at tp \(tp)\(tpOnly ? "" : ", pp \(layout.pp), ep \(layout.ep)") (\(rules.name))")
            if rules.derived {
                print("the rules are derived (no preset for this model type): from transformers' tensor-parallel "
                      + "plan plus ShardKit's head rules (docs/rules.md); verify runs the generic per-weight check")
            }
            // One aligned row per tensor; "rank 0" columns, with "…" where other ranks differ. The
            // cells are made twice (widths, then the rows) rather than kept: a plan can have a
            // million rows. Written in blocks.
            // With stages or EP, a "ranks" column says who holds each tensor, and the piece columns
            // show its first holder's piece.
            let header = ["tensor", "dtype", "shape", "rule"] + (tpOnly ? [] : ["ranks"])
                + (tpOnly ? ["rank 0 shape", "rank 0 bytes"] : ["piece shape", "piece bytes"])
            func cells(_ t: ShardPlan.Tensor) -> [String] {
                let differs = t.layouts.contains { $0.length != t.layouts[0].length }
                let first = t.holders[0]
                return [ShardKitError.printable(t.name), t.dtype.rawValue, "\(t.shape)", t.rule.summary]
                    + (tpOnly ? [] : [ShardPlan.describeRanks(t.holders)])
                    + ["\(t.pieceShape(rank: first))\(differs ? "…" : "")", Terminal.bytes(t.pieceBytes(rank: first))]
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
            for g in PlanCommand.grid(plan) {
                var line = "  rank \(g.rank)"
                if !tpOnly { line += " (pp \(g.pp), tp \(g.tp))" }
                line += ": \(Terminal.bytes(g.bytes))"
                if !tpOnly, let l = g.layers { line += ", layers \(l[0])..<\(l[1])" }
                if let experts = g.experts {
                    let groups = Set(experts.values.map { $0 })
                    line += groups.count == 1 ? ", experts \(experts.values.first!)"
                        : ", experts by layer "
                            + "\(experts.keys.sorted { Int($0)! < Int($1)! }.map { "\($0): \(experts[$0]!)" })"
                }
                print(line)
            }
            print("  source: \(Terminal.bytes(checkpoint.totalBytes)), "
                  + "all ranks: \(Terminal.bytes(plan.bytesPerRank.reduce(0, +)))"
                  + String(format: ", imbalance %.3f (largest rank / mean)", PlanCommand.imbalance(plan.bytesPerRank)))
        }
    }
}

