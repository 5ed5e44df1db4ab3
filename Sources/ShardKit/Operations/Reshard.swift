/// `shardkit reshard`: convert a shard set to another TP degree by copying the overlaps of old and
/// new intervals straight from the old rank files; no whole tensor is rebuilt in memory.
public enum Reshard {
    /// Writes `input` re-cut for `tp` ranks into `output`: the same bytes `shard` would write from the
    /// original checkpoint. Input pieces' checksums are checked as they are read.
    @discardableResult
    public static func run(input: ShardSet, tp: Int, output: String, options: ShardSetWriter.Options = .init(),
                           progress: ProgressHandler? = nil) throws -> Manifest {
        let m = input.manifest
        let list = m.order.map { (name: $0, dtype: m.tensors[$0]!.dtype, shape: m.tensors[$0]!.shape) }
        let plan = try ShardPlan(tensors: list, rules: m.order.map { m.tensors[$0]!.rule }, tp: tp)
        let files = try input.openAllRanks()
        let extras = try m.extraFiles.map { (from: try input.member($0), name: $0) }
        for e in extras where !FileSystem.exists(e.from) {
            throw ShardKitError(.invalidManifest, "\(e.from): listed in extra_files but missing")
        }
        return try ShardSetWriter(plan: plan, directory: output, options: options).write(
            source: m.source, tool: .init(name: "shardkit", version: Shard.toolVersion, operation: "reshard"),
            inputs: [input.directory] + m.ranks.flatMap { $0.files.map { Path.join(input.directory, $0) } },
            extraFiles: extras,
            sources: { t in try input.sources(for: t.name, files: files) },
            progress: progress)
    }
}

