import ArgumentParser
import Foundation
import ShardKit
import ShardKitHDF5

/// `shardkit hdf5-inspect FILE` (hidden): prints an HDF5 file's tensors as JSON, for `inputFormats`.
/// Runs under resource limits, as it parses an untrusted file with libhdf5.
struct HDF5InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hdf5-inspect", abstract: "List an HDF5 file's datasets as JSON (used by shard/plan/verify).",
        shouldDisplay: false)
    @Option(name: .long, help: "Read only the datasets under this group.") var root: String?
    @Argument var file: String

    func run() throws {
        var memory = rlimit(rlim_cur: 8 << 30, rlim_max: 8 << 30)
        setrlimit(Int32(RLIMIT_AS.rawValue), &memory)
        var cpu = rlimit(rlim_cur: 600, rlim_max: 600)
        setrlimit(Int32(RLIMIT_CPU.rawValue), &cpu)
        print(HDF5Format.inspectionReport(path: file, rootGroup: root))
    }
}

