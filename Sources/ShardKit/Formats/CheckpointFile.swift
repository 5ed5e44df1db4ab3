/// A weights-file format read outside the core library (HDF5 lives in `ShardKitHDF5`, so that
/// loaders need not link libhdf5). It lists a file's tensors as validated byte ranges of the file,
/// which the copy engine then reads in place like any other.
public protocol WeightsFileFormat: Sendable {
    /// Short name for messages and `CheckpointFile.format` ("hdf5").
    var name: String { get }
    /// File name suffixes of the format, to find the weights in a directory (".h5").
    var suffixes: [String] { get }
    /// Conventional weights file names, found in a directory before any lone file ("model.h5").
    var standardNames: [String] { get }
    /// True when the file carries the format's signature.
    func recognizes(_ file: ReadOnlyFile) -> Bool
    /// Every tensor of the file, each checked to be a byte range inside it.
    func tensors(in file: ReadOnlyFile) throws -> [TensorInfo]
}

/// One weights file of a checkpoint, validated: safetensors, a PyTorch `torch.save` zip, or a file
/// of a format given by the caller (`WeightsFileFormat`).
public struct CheckpointFile: Sendable {
    public let path: String
    /// "safetensors", "pytorch", or the `name` of the format that read it.
    public let format: String
    /// Tensors in the file's order; each a byte range of this file.
    public let tensors: [TensorInfo]

    /// Opens and validates `path`. A name that claims a format decides it (`.safetensors`; a suffix
    /// or standard name of one of `formats`, such as `.h5`; `.bin`/`.pt`/`.pth` for PyTorch), and a
    /// file that is not valid in that format is refused with that format's reason. Other names are
    /// read by their first bytes: a ZIP archive is PyTorch, a signature one of `formats` recognizes
    /// is that format, anything else safetensors.
    public init(path: String, formats: [WeightsFileFormat] = []) throws {
        let file = try ReadOnlyFile(path: path)
        self.path = path
        if path.hasSuffix(".safetensors") {
            // A name that claims a format decides: a file must not be one checkpoint to ShardKit and
            // another to the library its name points to (a safetensors header can make a file start
            // like a ZIP; a ZIP can hide in an HDF5 user block).
            format = "safetensors"
            tensors = try SafetensorsFile(file: file).tensors
        } else if let named = formats.first(where: { f in
            f.suffixes.contains(where: path.hasSuffix) || f.standardNames.contains(Path.name(path))
        }) {
            format = named.name
            tensors = try named.tensors(in: file)
        } else if CheckpointFile.pytorchSuffixes.contains(where: path.hasSuffix) || PyTorchFile.looksLikeZip(file) {
            format = "pytorch"
            tensors = try PyTorchFile(file: file).tensors
        } else if let other = formats.first(where: { $0.recognizes(file) }) {
            format = other.name
            tensors = try other.tensors(in: file)
        } else if let (suffix, reader) = CheckpointFile.readElsewhere.first(where: { path.hasSuffix($0.suffix) }) {
            throw ShardKitError(.invalidCheckpoint,
                "\(path): a \(suffix) file; reading it needs \(reader), which the shardkit command includes")
        } else {
            format = "safetensors"
            tensors = try SafetensorsFile(file: file).tensors
        }
    }

    static let pytorchSuffixes = [".bin", ".pt", ".pth"]

    /// Weights files whose name says they are in a format read by a library outside the core (no
    /// bytes of theirs are interpreted here), with the library to name.
    static let readElsewhere = [(suffix: ".h5", reader: "the HDF5 format of the ShardKitHDF5 library (HDF5Format)"),
                                (suffix: ".hdf5", reader: "the HDF5 format of the ShardKitHDF5 library (HDF5Format)")]
}

