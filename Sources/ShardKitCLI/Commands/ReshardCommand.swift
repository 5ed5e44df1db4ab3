import ArgumentParser
import Foundation
import ShardKit

struct ReshardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reshard",
        abstract: "Convert a shard set to another layout (TP, pipeline stages, EP) by copying overlaps.",
        discussion: "The input may also be Meta's original Llama checkpoint (params.json + consolidated.NN.pth): "
            + "it is read as a shard set in Meta's layout and written with Hugging Face names and q/k row order.")

    @Argument(help: ArgumentHelp("Input shard set directory, or Meta's params.json + consolidated.*.pth directory "
                                 + "(with --finalize, the directory to finalize).")) var input: String
    @Option(name: .long, help: "New tensor-parallel degree (with one stage, 1 writes an ordinary HF checkpoint).")
    var tp: Int?
    @Option(name: .long, help: "Output directory.") var out: String?
    @OptionGroup var layoutOptions: LayoutOptions
    @OptionGroup var vocab: VocabOptions
    @Flag(name: .long, help: ArgumentHelp("Keep the input's MLP intermediate padding (recomputed for the new "
          + "degree); by default it is dropped."))
    var padIntermediate = false
    @OptionGroup var writeOptions: WriteOptions
    @Flag(name: .long, help: "Write manifest.json for a directory whose ranks were written in parts.")
    var finalize = false
    @Flag(name: .long, help: "Print a machine-readable summary.") var json = false

    func run() throws {
        try ShardKitCommand.guarded {
            if finalize {
                let m = try Reshard.finalize(directory: input)
                if json {
                    try Terminal.printJSON(["finalized": input, "tp": String(m.tp), "pp": String(m.layout.pp),
                                            "ep": String(m.layout.ep)])
                } else {
                    print("finalized \(input): tp \(m.tp)\(m.layout.pp > 1 ? ", pp \(m.layout.pp)" : "")"
                          + "\(m.layout.ep > 1 ? ", ep \(m.layout.ep)" : ""), \(m.order.count) tensors")
                }
                return
            }
            guard let tp, let out else { throw ValidationError("reshard needs --tp and --out (or --finalize)") }
            let options = try writeOptions.writerOptions()
            let t0 = Terminal.now()
            let manifest: Manifest
            let request = try layoutOptions.request(tp: tp)
            if MetaCheckpoint.recognizes(input) {
                guard request.pp == 1 && request.ep == 1 else {
                    throw ValidationError("a Meta checkpoint is converted at --pp 1 --ep 1; reshard the result")
                }
                manifest = try Reshard.run(meta: try MetaCheckpoint(directory: input), tp: tp, output: out,
                                           vocabMultiple: try vocab.multiple(), options: options,
                                           progress: Terminal.progress(label: "reshard"))
            } else {
                manifest = try Reshard.run(input: try ShardSet(directory: input), layout: request, output: out,
                                           vocabMultiple: try vocab.multiple(), padIntermediate: padIntermediate,
                                           options: options,
                                           progress: Terminal.progress(label: "reshard"))
            }
            Terminal.clearProgress()
            try WriteSummary(output: out, manifest: manifest, written: options.ranks, seconds: Terminal.now() - t0)
                .print(json: json)
        }
    }
}

