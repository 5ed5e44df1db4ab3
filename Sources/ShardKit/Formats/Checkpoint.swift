/// A full (unsharded) checkpoint, read as one set of tensors: safetensors (one file, or a Hugging Face
/// multi-file checkpoint `model.safetensors.index.json` + `model-0000N-of-0000M.safetensors`) or
/// PyTorch (`pytorch_model.bin`, or `pytorch_model.bin.index.json` + `pytorch_model-0000N-of-0000M.bin`).
public struct Checkpoint: Sendable {
    /// The directory (or the single file's directory).
    public let directory: String
    /// The validated weights files, in index order.
    public let files: [CheckpointFile]
    /// Every tensor, in file order then the file's order, with the index of its file in `files`.
    public let tensors: [(file: Int, info: TensorInfo)]
    /// config.json, if present.
    public let config: ModelConfig?
    /// Non-weight files worth carrying along to an output directory (config, tokenizer, generation config).
    public let auxiliaryFiles: [String]
    /// What was skipped while opening (a dangling optional file), for the caller to show.
    public let warnings: [String]
    private let index: [String: Int]

    public static let indexName = HFIndex.safetensorsName
    public static let pytorchIndexName = HFIndex.pytorchName

    /// Opens `path`: a directory, or a single weights file. In a directory, the first of these is the
    /// checkpoint: `model.safetensors.index.json`, `model.safetensors`, `pytorch_model.bin.index.json`,
    /// `pytorch_model.bin`, a standard name of one of `formats` (`model.h5`), a lone `.safetensors`
    /// file, a lone file with a suffix of one of `formats`
    /// (safetensors first when a repository has both, as Hugging Face repositories often do: they
    /// hold the same weights). `formats`: weights formats beyond safetensors and PyTorch (HDF5).
    public init(path: String, formats: [WeightsFileFormat] = []) throws {
        var directory = path
        var fileNames: [String] = []
        var indexPath: String? = nil
        if FileSystem.isDirectory(path) {
            let entries = try FileSystem.list(path)
            let safetensors = entries.filter { $0.hasSuffix(".safetensors") }
            if entries.contains(Checkpoint.indexName) {
                indexPath = Path.join(path, Checkpoint.indexName)
            } else if entries.contains("model.safetensors") {
                fileNames = ["model.safetensors"]
            } else if entries.contains(Checkpoint.pytorchIndexName) {
                indexPath = Path.join(path, Checkpoint.pytorchIndexName)
            } else if entries.contains("pytorch_model.bin") {
                fileNames = ["pytorch_model.bin"]
            } else if let standard = formats.flatMap(\.standardNames).first(where: entries.contains) {
                fileNames = [standard]
            } else if safetensors.count == 1 {
                fileNames = safetensors
            } else if safetensors.isEmpty, let other = try Checkpoint.loneFile(entries, formats: formats, in: path) {
                fileNames = [other]
            } else if safetensors.count > 1 {
                // A lone .safetensors file is the checkpoint; several are ambiguous (adapters,
                // reference outputs, ...).
                throw ShardKitError(.invalidCheckpoint,
                    "\(path): several .safetensors files (\(safetensors.joined(separator: ", "))) "
                    + "and no \(Checkpoint.indexName); give the file's path")
            } else {
                let others = formats.isEmpty ? "" : " or " + formats.flatMap(\.suffixes).joined(separator: "/")
                throw ShardKitError(.invalidCheckpoint,
                    "\(path): no weights: none of \(Checkpoint.indexName), model.safetensors, "
                    + "\(Checkpoint.pytorchIndexName), pytorch_model.bin, "
                    + "or a lone .safetensors\(others) file")
            }
            if let indexPath { fileNames = try HFIndex.fileNames(indexPath) }
            (auxiliaryFiles, warnings) = try Checkpoint.carriedFiles(entries.filter(Checkpoint.isAuxiliary), in: path)
        } else {
            guard FileSystem.exists(path) else { throw ShardKitError(.io, "\(path): no such file or directory") }
            directory = Path.parent(path)
            fileNames = [Path.name(path)]
            auxiliaryFiles = []
            warnings = []
        }
        self.directory = directory
        var files: [CheckpointFile] = []
        for name in fileNames {
            let p = Path.join(directory, name)
            guard FileSystem.exists(p) else {
                throw ShardKitError(.invalidCheckpoint,
                    "\(indexPath ?? directory): names \(name), which does not exist")
            }
            files.append(try CheckpointFile(path: p, formats: formats))
        }
        var seen: [String: String] = [:]
        var tensors: [(file: Int, info: TensorInfo)] = []
        for (i, f) in files.enumerated() {
            for t in f.tensors {
                guard t.name != "__metadata__" else {
                    throw ShardKitError(.invalidCheckpoint,
                        "\(f.path): a tensor named __metadata__, a name safetensors reserves; rename it")
                }
                if let other = seen[t.name] {
                    throw ShardKitError(.invalidCheckpoint, "tensor \(t.name) appears in both \(other) and \(f.path)")
                }
                seen[t.name] = f.path
                tensors.append((i, t))
            }
        }
        self.files = files
        self.tensors = tensors
        self.index = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.info.name, $0) })
        let configPath = Path.join(directory, "config.json")
        config = FileSystem.exists(configPath) ? try ModelConfig(path: configPath) : nil
        if let indexPath { try HFIndex.checkAgrees(indexPath, files: files) }
    }

    /// The one file of `entries` with a suffix of `formats` (nil: none; several: ambiguous).
    static func loneFile(_ entries: [String], formats: [WeightsFileFormat], in path: String) throws -> String? {
        let candidates = entries.filter { e in formats.contains { f in f.suffixes.contains(where: e.hasSuffix) } }
        guard candidates.count <= 1 else {
            throw ShardKitError(.invalidCheckpoint,
                "\(path): several weights files (\(candidates.joined(separator: ", "))); give the file's path")
        }
        return candidates.first
    }

    /// Of the carried-along files `names` in `directory`, those to copy, and warnings for the ones
    /// skipped. A file that is a symbolic link must resolve inside the directory, or (a Hugging Face
    /// cache snapshot, `…/snapshots/REV/`) inside the cache's `blobs/` folder: anything else, such as
    /// `tokenizer.json -> /etc/passwd`, is refused rather than copied into the output. A dangling link
    /// or an entry that is not a regular file is skipped with a warning (every such file is optional).
    static func carriedFiles(_ names: [String], in directory: String) throws -> ([String], [String]) {
        guard let home = Path.resolved(directory) else { return ([], []) }
        var allowed = [home]
        if Path.name(Path.parent(home)) == "snapshots" {
            allowed.append(Path.join(Path.parent(Path.parent(home)), "blobs"))
        }
        var kept: [String] = [], warnings: [String] = []
        for name in names {
            let path = Path.join(directory, name)
            guard let real = Path.resolved(path) else {
                warnings.append("\(path): a dangling link; not carried into the output")
                continue
            }
            guard allowed.contains(where: { Path.contains($0, real) }) else {
                throw ShardKitError(.invalidCheckpoint,
                    "\(path): resolves to \(real), outside the checkpoint directory; "
                    + "refusing to copy it into the output")
            }
            guard !FileSystem.isDirectory(real), (try? ReadOnlyFile(path: real)) != nil else {
                warnings.append("\(path): not a readable regular file; not carried into the output")
                continue
            }
            kept.append(name)
        }
        return (kept, warnings)
    }

    static func isAuxiliary(_ name: String) -> Bool {
        if name == indexName || name == pytorchIndexName || name.hasSuffix(".safetensors") { return false }
        if name == "config.json" || name == "generation_config.json" { return true }
        if name.hasPrefix("tokenizer") || name.hasPrefix("special_tokens_map") || name.hasPrefix("vocab.")
            || name.hasPrefix("merges") || name == "added_tokens.json" || name.hasSuffix(".model")
            || name == "chat_template.jinja" || name == "chat_template.json" || name == "preprocessor_config.json" {
            return true
        }
        return false
    }

    /// Total bytes of tensor data.
    public var totalBytes: Int { tensors.reduce(0) { $0 + $1.info.byteCount } }

    /// Looks a tensor up by name.
    public func tensor(named name: String) -> (file: Int, info: TensorInfo)? {
        index[name].map { tensors[$0] }
    }
}
