/// `shardkit shard`: cut a full checkpoint into a TP shard set.
public enum Shard {
    public static let toolVersion = "0.1.0"

    /// Plans `checkpoint` for `tp` ranks with `rules` and writes the shard set to `output`.
    /// Every split is checked before the output directory is touched; the output may not be, contain
    /// or lie inside the checkpoint.
    @discardableResult
    public static func run(checkpoint: Checkpoint, sourcePath: String, rules: RuleSet, tp: Int, output: String,
                           options: ShardSetWriter.Options = .init(),
                           progress: ProgressHandler? = nil) throws -> Manifest {
        try run(checkpoint: checkpoint, sourcePath: sourcePath, rules: rules, layout: LayoutRequest(tp: tp),
                output: output, options: options, progress: progress)
    }

    /// Plans `checkpoint` over the layout `request` asks for (TP, pipeline stages, EP groups) and
    /// writes one rank directory per world rank.
    @discardableResult
    public static func run(checkpoint: Checkpoint, sourcePath: String, rules: RuleSet, layout request: LayoutRequest,
                           output: String, options: ShardSetWriter.Options = .init(),
                           progress: ProgressHandler? = nil) throws -> Manifest {
        let plan = try ShardPlan(checkpoint: checkpoint, rules: rules, request: request)
        let sources = try CheckpointSources(checkpoint)
        let source = Manifest.Source(path: sourcePath, files: checkpoint.files.map { Path.name($0.path) },
                                     modelType: checkpoint.config?.modelType, rules: rules.name)
        let extras = checkpoint.auxiliaryFiles.map { (from: Path.join(checkpoint.directory, $0), name: $0) }
        return try ShardSetWriter(plan: plan, directory: output, options: options).write(
            source: source, tool: .init(name: "shardkit", version: toolVersion, operation: "shard"),
            inputs: [sourcePath] + checkpoint.files.map(\.path) + extras.map(\.from),
            extraFiles: extras, sources: { t in [try sources.source(for: t.name, geometry: t.geometry)] },
            progress: progress)
    }
}
