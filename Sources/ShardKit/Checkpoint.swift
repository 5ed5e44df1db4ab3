/// One weights file of a checkpoint, validated: a safetensors file or a PyTorch `torch.save` zip.
public struct CheckpointFile: Sendable {
    public enum Format: String, Sendable { case safetensors, pytorch }
    public let path: String
    public let format: Format
    /// Tensors in the file's order; each a byte range of this file.
    public let tensors: [TensorInfo]

    /// Opens and validates `path`; a ZIP archive is read as a PyTorch checkpoint, anything else as
    /// safetensors.
    public init(path: String) throws {
        let file = try ReadOnlyFile(path: path)
        self.path = path
        if PyTorchFile.looksLikeZip(file) {
            format = .pytorch
            tensors = try PyTorchFile(file: file).tensors
        } else if path.hasSuffix(".safetensors") || !CheckpointFile.pytorchSuffixes.contains(where: path.hasSuffix) {
            format = .safetensors
            tensors = try SafetensorsFile(file: file).tensors
        } else {
            format = .pytorch
            tensors = try PyTorchFile(file: file).tensors      // refuses with the reason (legacy format, ...)
        }
    }

    static let pytorchSuffixes = [".bin", ".pt", ".pth"]
}

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
    private let index: [String: Int]

    public static let indexName = "model.safetensors.index.json"
    public static let pytorchIndexName = "pytorch_model.bin.index.json"

    /// Opens `path`: a directory, or a single weights file. In a directory, the first of these is the
    /// checkpoint: `model.safetensors.index.json`, `model.safetensors`, `pytorch_model.bin.index.json`,
    /// `pytorch_model.bin`, a lone `.safetensors` file (safetensors first when a repository has both,
    /// as Hugging Face repositories often do: they hold the same weights).
    public init(path: String) throws {
        var directory = path
        var fileNames: [String] = []
        var indexPath: String? = nil
        if FileSystem.isDirectory(path) {
            let entries = try FileSystem.list(path)
            let safetensors = entries.filter { $0.hasSuffix(".safetensors") }
            if entries.contains(Checkpoint.indexName) {
                indexPath = FileSystem.join(path, Checkpoint.indexName)
            } else if entries.contains("model.safetensors") {
                fileNames = ["model.safetensors"]
            } else if entries.contains(Checkpoint.pytorchIndexName) {
                indexPath = FileSystem.join(path, Checkpoint.pytorchIndexName)
            } else if entries.contains("pytorch_model.bin") {
                fileNames = ["pytorch_model.bin"]
            } else if safetensors.count == 1 {
                fileNames = safetensors
            } else if safetensors.count > 1 {
                // A lone .safetensors file is the checkpoint; several are ambiguous (adapters,
                // reference outputs, ...).
                throw ShardKitError(.invalidCheckpoint, "\(path): several .safetensors files (\(safetensors.joined(separator: ", "))) and no \(Checkpoint.indexName); give the file's path")
            } else {
                throw ShardKitError(.invalidCheckpoint, "\(path): no weights: none of \(Checkpoint.indexName), model.safetensors, \(Checkpoint.pytorchIndexName), pytorch_model.bin, or a lone .safetensors file")
            }
            if let indexPath { fileNames = try Checkpoint.readIndex(indexPath) }
            auxiliaryFiles = entries.filter(Checkpoint.isAuxiliary)
        } else {
            guard FileSystem.exists(path) else { throw ShardKitError(.io, "\(path): no such file or directory") }
            directory = path.deletingLastPathComponent
            fileNames = [path.lastPathComponent]
            auxiliaryFiles = []
        }
        self.directory = directory
        var files: [CheckpointFile] = []
        for name in fileNames {
            let p = FileSystem.join(directory, name)
            guard FileSystem.exists(p) else {
                throw ShardKitError(.invalidCheckpoint, "\(indexPath ?? directory): names \(name), which does not exist")
            }
            files.append(try CheckpointFile(path: p))
        }
        var seen: [String: String] = [:]
        var tensors: [(file: Int, info: TensorInfo)] = []
        for (i, f) in files.enumerated() {
            for t in f.tensors {
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
        let configPath = FileSystem.join(directory, "config.json")
        config = FileSystem.exists(configPath) ? try ModelConfig(path: configPath) : nil
        if let indexPath { try Checkpoint.checkIndexAgrees(indexPath, files: files) }
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

    /// The distinct file names of an index's weight_map, in first-seen order.
    static func readIndex(_ path: String) throws -> [String] {
        let map = try weightMap(path)
        var names: [String] = []
        var seen = Set<String>()
        for (_, file) in map where seen.insert(file).inserted { names.append(file) }
        guard !names.isEmpty else { throw ShardKitError(.invalidCheckpoint, "\(path): weight_map is empty") }
        return names
    }

    static func weightMap(_ path: String) throws -> [(String, String)] {
        let file = try ReadOnlyFile(path: path)
        let json: JSONValue
        do { json = try JSONValue.parse(try file.read(count: file.size, at: 0)) } catch let e as JSONParseError {
            throw ShardKitError(.invalidCheckpoint, "\(path): not valid JSON: \(e)")
        }
        guard let map = json["weight_map"]?.objectValue else {
            throw ShardKitError(.invalidCheckpoint, "\(path): no \"weight_map\" object")
        }
        var result: [(String, String)] = []
        for (tensor, file) in map {
            guard let f = file.stringValue, !f.contains("/"), !f.hasPrefix(".") else {
                throw ShardKitError(.invalidCheckpoint, "\(path): weight_map entry for \(tensor) is not a plain file name")
            }
            result.append((tensor, f))
        }
        return result
    }

    static func checkIndexAgrees(_ path: String, files: [CheckpointFile]) throws {
        var actual: [String: String] = [:]
        for f in files { for t in f.tensors { actual[t.name] = f.path.lastPathComponent } }
        let map = try weightMap(path)
        for (tensor, file) in map where actual[tensor] != file {
            throw ShardKitError(.invalidCheckpoint, "\(path): says \(tensor) is in \(file), but it is not there")
        }
        if map.count != actual.count {
            let listed = Set(map.map { $0.0 })
            let extra = actual.keys.sorted().first { !listed.contains($0) } ?? "?"
            throw ShardKitError(.invalidCheckpoint, "\(path): tensor \(extra) is in \(actual[extra] ?? "?") but not in the index")
        }
    }

    /// Total bytes of tensor data.
    public var totalBytes: Int { tensors.reduce(0) { $0 + $1.info.byteCount } }

    /// Looks a tensor up by name.
    public func tensor(named name: String) -> (file: Int, info: TensorInfo)? {
        index[name].map { tensors[$0] }
    }
}
