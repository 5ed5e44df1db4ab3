/// `shardkit reshard`: convert a shard set to another TP degree by copying the overlaps of old and
/// new intervals straight from the old rank files; no whole tensor is rebuilt in memory.
public enum Reshard {
    /// Writes `input` re-cut for `tp` ranks into `output` (see `run(input:layout:…)`).
    @discardableResult
    public static func run(input: ShardSet, tp: Int, output: String, vocabMultiple: Int = 1,
                           padIntermediate: Bool = false, options: ShardSetWriter.Options = .init(),
                           progress: ProgressHandler? = nil) throws -> Manifest {
        try run(input: input, layout: LayoutRequest(tp: tp), output: output, vocabMultiple: vocabMultiple,
                padIntermediate: padIntermediate, options: options, progress: progress)
    }

    /// Writes `input` re-cut for the layout `request` asks for (TP, pipeline stages, EP groups) into
    /// `output`: the same bytes `shard` would write from the original checkpoint. Each tensor is read
    /// once, from one copy of its pieces, and written to every rank that holds it; input pieces'
    /// checksums are checked as they are read. The input's vocabulary padding is dropped: vocab rules
    /// pad to multiples of lcm(`vocabMultiple`, `tp`). Intermediate padding is dropped unless
    /// `padIntermediate` (then recomputed for the new degree; it must already be in the input).
    @discardableResult
    public static func run(input: ShardSet, layout request: LayoutRequest, output: String, vocabMultiple: Int = 1,
                           padIntermediate: Bool = false, options: ShardSetWriter.Options = .init(),
                           progress: ProgressHandler? = nil) throws -> Manifest {
        let m = input.manifest
        let plan = try input.plan(for: request, vocabMultiple: vocabMultiple, keepPadding: padIntermediate)
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

    /// Writes Meta's consolidated checkpoint `meta` as a Hugging Face Llama shard set of `tp` ranks
    /// (HF names, HF q/k row order, the llama preset, a converted config.json): `tp` 1 is a plain
    /// Hugging Face checkpoint. Every byte is read once from the Meta files, a range at a time.
    @discardableResult
    public static func run(meta: MetaCheckpoint, tp: Int, output: String, vocabMultiple: Int = 1,
                           options: ShardSetWriter.Options = .init(),
                           progress: ProgressHandler? = nil) throws -> Manifest {
        let config = ModelConfig(json: meta.config, path: Path.join(meta.directory, "params.json"))
        var rules = try Architectures.rules(for: config)
        rules.vocabMultiple = vocabMultiple
        let assigned = try rules.assign(meta.tensors.map { ($0.name, $0.shape) })
        let plan = try ShardPlan(tensors: meta.tensors, rules: assigned, tp: tp)
        let handles = try meta.files.map { try ReadOnlyFile(path: $0.path) }
        let source = Manifest.Source(path: meta.directory, files: meta.files.map { Path.name($0.path) },
                                     modelType: "llama", rules: rules.name)
        let extras = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json"]
            .map { (from: Path.join(meta.directory, $0), name: $0) }.filter { FileSystem.exists($0.from) }
        return try ShardSetWriter(plan: plan, directory: output, options: options).write(
            source: source, tool: .init(name: "shardkit", version: Shard.toolVersion, operation: "reshard"),
            inputs: [meta.directory] + meta.files.map(\.path) + extras.map(\.from),
            extraFiles: extras, generatedFiles: [("config.json", Array(meta.config.serialized.utf8))],
            sources: { t in
                [CopySource(file: try meta.byteSource(for: t.name, files: handles), offset: 0,
                            layout: PieceLayout([0..<t.geometry.size]), label: meta.directory)]
            },
            progress: progress)
    }
}
