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
        } else if let named = formats.first(where: { f in f.suffixes.contains(where: path.hasSuffix) || f.standardNames.contains(path.lastPathComponent) }) {
            format = named.name
            tensors = try named.tensors(in: file)
        } else if CheckpointFile.pytorchSuffixes.contains(where: path.hasSuffix) || PyTorchFile.looksLikeZip(file) {
            format = "pytorch"
            tensors = try PyTorchFile(file: file).tensors
        } else if let other = formats.first(where: { $0.recognizes(file) }) {
            format = other.name
            tensors = try other.tensors(in: file)
        } else if CheckpointFile.hasHDF5Signature(file) {
            throw ShardKitError(.invalidCheckpoint, "\(path): an HDF5 file; reading HDF5 needs the ShardKitHDF5 library (HDF5Format), which the shardkit command includes")
        } else {
            format = "safetensors"
            tensors = try SafetensorsFile(file: file).tensors
        }
    }

    static let pytorchSuffixes = [".bin", ".pt", ".pth"]

    /// The 8-byte HDF5 signature, at byte 0 or (after a user block) at 512, 1024, 2048, ...
    public static func hasHDF5Signature(_ file: ReadOnlyFile) -> Bool {
        let signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]
        var offset = 0
        while offset + 8 <= file.size {
            if (try? file.read(count: 8, at: offset)) == signature { return true }
            offset = offset == 0 ? 512 : offset * 2
        }
        return false
    }
}

