import ArgumentParser
import Foundation
import ShardKit
import ShardKitHDF5

@main
struct ShardKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shardkit",
        abstract: "Cut model checkpoints into tensor-parallel shards, reshard them, and prove them right.",
        version: Shard.toolVersion,
        subcommands: [ShardCommand.self, PlanCommand.self, ReshardCommand.self, VerifyCommand.self,
                      HDF5InspectCommand.self])

    static func main() {
        // A file-size limit (ulimit -f) then fails the write with EFBIG, reported and cleaned up,
        // instead of killing the process.
        signal(SIGXFSZ, SIG_IGN)
        main(nil as [String]?)
    }

    /// Runs `body`, turning a ShardKitError into a one-line message (with the flag that would help,
    /// when the error names a remedy) and exit status 1.
    static func guarded<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as ShardKitError {
            Terminal.clearProgress()
            // One line, even when a wrapped error (e.g. a YAML parser's) spans several.
            let line = e.message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .joined(separator: " ")
            FileHandle.standardError.write(Data("error: \(line)\(advice(e.remedy))\n".utf8))
            throw ExitCode(1)
        }
    }

    /// The CLI's spelling of a remedy.
    static func advice(_ remedy: ShardKitError.Remedy?) -> String {
        switch remedy {
        case nil: return ""
        case .force: return "; pass --force to replace it"
        case .rules: return "; pass --rules with a rules file that describes the tensors (docs/rules.md)"
        case .finalize(let dir): return "; run `shardkit reshard --finalize \(dir)` once every rank is written"
        case .writeRank(let r): return "; write it with --ranks \(r)"
        }
    }
}

/// The weights formats beyond safetensors and PyTorch: HDF5, whose structure libhdf5 reads in a child
/// process (this executable's hidden `hdf5-inspect`), so that a malformed file that crashes libhdf5
/// is an error message, not a crash.
let inputFormats: [WeightsFileFormat] = {
    // This executable: on Linux /proc/self/exe itself (exec resolves it to the running binary, even
    // if the file was replaced); elsewhere the absolute path Foundation reports. Never a path
    // resolved against the current directory.
    #if os(Linux)
    let me = "/proc/self/exe"
    #else
    let me = Bundle.main.executablePath ?? "/usr/local/bin/shardkit"
    #endif
    return [HDF5Format(inspector: [me, "hdf5-inspect"])]
}()
