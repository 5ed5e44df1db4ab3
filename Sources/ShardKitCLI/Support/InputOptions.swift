import ArgumentParser
import Foundation
import ShardKit
import ShardKitHDF5

/// How a source checkpoint is found and read: `hf-cache:ORG/NAME[@REV]` for the Hugging Face cache,
/// and the HDF5 naming option.
struct InputOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("HDF5 only: read the datasets under this top-level group (e.g. a Keras "
                                            + "model's name), named without it.", valueName: "group"))
    var hdf5Root: String?

    /// Opens `source` (a path, or `hf-cache:ORG/NAME[@REV]`) with every input format; what was skipped
    /// is a warning line.
    func open(_ source: String) throws -> Checkpoint {
        let path = try HFCache.resolve(source) ?? source
        let formats = inputFormats.map { format -> WeightsFileFormat in
            guard var hdf5 = format as? HDF5Format else { return format }
            hdf5.rootGroup = hdf5Root
            return hdf5
        }
        let checkpoint = try Checkpoint(path: path, formats: formats)
        for w in checkpoint.warnings { FileHandle.standardError.write(Data("warning: \(w)\n".utf8)) }
        return checkpoint
    }
}
