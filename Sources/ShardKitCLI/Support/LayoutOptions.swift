import ArgumentParser
import Foundation
import ShardKit

/// Pipeline stages and expert parallelism, beside `--tp` (docs/parallelism.md).
struct LayoutOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Pipeline stages: stage s holds a contiguous range of decoder layers "
        + "(default 1). World rank = stage × TP + TP rank.", valueName: "P"))
    var pp: Int = 1
    @Option(name: .long, help: ArgumentHelp("Decoder layers per stage, e.g. 10,11,11 (must add up to the layer "
        + "count). Default: vLLM's partition (even, the remainder on the stages before the last).",
        valueName: "N,N,…"))
    var ppLayers: String?
    @Option(name: .long, help: ArgumentHelp("Expert-parallel groups (must divide TP): the experts of every MoE layer "
        + "are spread over E groups of TP/E ranks, each expert split over its group (default 1).", valueName: "E"))
    var ep: Int = 1
    @Option(name: .long, help: ArgumentHelp("JSON or YAML file placing experts on EP groups: [[0,3],[1,2]] for every "
        + "layer, or {\"default\": …, \"layers\": {\"5\": …}}. Default: contiguous blocks.", valueName: "FILE"))
    var expertPlacement: String?

    /// The layout asked for, with `tp` TP ranks per stage.
    func request(tp: Int) throws -> LayoutRequest {
        var sizes: [Int]? = nil
        if let ppLayers {
            sizes = try ppLayers.split(separator: ",", omittingEmptySubsequences: false).map {
                guard let n = Int($0.trimmingCharacters(in: .whitespaces)) else {
                    throw ValidationError("--pp-layers takes layer counts like 10,11,11, not \"\(ppLayers)\"")
                }
                return n
            }
        }
        var placement: ExpertPlacement? = nil
        if let expertPlacement {
            placement = try ExpertPlacement(json: try RulesLoader.load(path: expertPlacement), origin: expertPlacement)
        }
        return LayoutRequest(tp: tp, pp: pp, stageSizes: sizes, ep: ep, placement: placement)
    }
}
