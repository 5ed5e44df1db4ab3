import ArgumentParser
import Foundation
import ShardKit

struct ShardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shard", abstract: "Cut a full checkpoint into per-rank shard files plus manifest.json.")

    @Argument(help: ArgumentHelp("Checkpoint directory (model.safetensors, pytorch_model.bin, their HF index, "
                                 + "or model.h5) or one weights file (.safetensors, a torch.save .bin/.pt, or .h5); "
                                 + "see docs/formats.md."))
    var source: String
    @Option(name: .long, help: "Tensor-parallel degree (ranks per pipeline stage).") var tp: Int
    @Option(name: .long, help: "Output directory.") var out: String
    @OptionGroup var layoutOptions: LayoutOptions
    @OptionGroup var inputOptions: InputOptions
    @OptionGroup var ruleOptions: RuleOptions
    @OptionGroup var writeOptions: WriteOptions
    @Flag(name: .long, help: "Print a machine-readable summary.") var json = false

    func run() throws {
        try ShardKitCommand.guarded {
            let checkpoint = try inputOptions.open(source)
            let rules = try ruleOptions.load(for: checkpoint)
            let options = try writeOptions.writerOptions()
            let t0 = Terminal.now()
            let manifest = try Shard.run(checkpoint: checkpoint, sourcePath: source, rules: rules,
                                         layout: try layoutOptions.request(tp: tp), output: out,
                                         options: options, progress: Terminal.progress(label: "shard"))
            Terminal.clearProgress()
            try WriteSummary(output: out, manifest: manifest, written: options.ranks, seconds: Terminal.now() - t0)
                .print(json: json)
        }
    }
}

