/// `shardkit shard`: cut a full checkpoint into a TP shard set.
public enum Shard {
    public static let toolVersion = "0.1.0"

    /// Plans `checkpoint` for `tp` ranks with `rules` and writes the shard set to `output`.
    /// Every split is checked before the output directory is touched.
    @discardableResult
    public static func run(checkpoint: Checkpoint, sourcePath: String, rules: RuleSet, tp: Int, output: String,
                           options: ShardSetWriter.Options = .init(), progress: ProgressHandler? = nil) throws -> Manifest {
        let plan = try ShardPlan(checkpoint: checkpoint, rules: rules, tp: tp)
        let handles = try checkpoint.files.map { try ReadOnlyFile(path: $0.path) }
        let byName = Dictionary(uniqueKeysWithValues: checkpoint.tensors.map { ($0.info.name, $0) })
        let source = Manifest.Source(path: sourcePath, files: checkpoint.files.map { $0.path.lastPathComponent },
                                     modelType: checkpoint.config?.modelType, rules: rules.name)
        let extras = checkpoint.auxiliaryFiles.map { (from: FileSystem.join(checkpoint.directory, $0), name: $0) }
        return try ShardSetWriter(plan: plan, directory: output, options: options).write(
            source: source, tool: .init(name: "shardkit", version: toolVersion, operation: "shard"),
            extraFiles: extras,
            sources: { t in
                let entry = byName[t.name]!
                return [Shard.wholeTensorSource(entry.info, geometry: t.geometry, file: handles[entry.file])]
            },
            progress: progress)
    }

    /// A full tensor as a copy source: one interval covering the whole split dimension.
    public static func wholeTensorSource(_ info: TensorInfo, geometry: TensorGeometry, file: ReadOnlyFile) -> CopySource {
        CopySource(file: file, offset: info.offset, layout: PieceLayout([0..<geometry.size]), label: file.path)
    }
}
