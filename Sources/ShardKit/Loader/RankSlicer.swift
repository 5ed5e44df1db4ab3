/// Reads one rank's pieces for a layout straight from where the bytes already are, without writing a
/// shard set: from an unsharded checkpoint (what vLLM does with safetensors' `get_slice`), or from a
/// shard set of another layout ("stage s, TP rank r of M, read from this manifest of G").
/// Ranks are world ranks (stage · tp + TP rank).
/// Either way it is the plan `shard` would use and the copy engine that `shard` and `reshard` use.
public final class RankSlicer: @unchecked Sendable {
    public let plan: ShardPlan
    let sources: (ShardPlan.Tensor) throws -> [CopySource]
    let buffers: CopyBuffers

    /// Slices of `checkpoint` for `tp` ranks with `rules` (nil: the preset for its config.json).
    public convenience init(checkpoint: Checkpoint, tp: Int, rules: RuleSet? = nil,
                            bufferBudget: Int = 16 << 20) throws {
        try self.init(checkpoint: checkpoint, layout: LayoutRequest(tp: tp), rules: rules, bufferBudget: bufferBudget)
    }

    /// Slices of `checkpoint` for the layout `request` asks for (pipeline stages, EP groups).
    public init(checkpoint: Checkpoint, layout request: LayoutRequest, rules: RuleSet? = nil,
                bufferBudget: Int = 16 << 20) throws {
        let ruleSet = try rules ?? ShardPlan.rules(for: checkpoint, rulesFile: nil)
        plan = try ShardPlan(checkpoint: checkpoint, rules: ruleSet, request: request)
        let whole = try CheckpointSources(checkpoint)
        sources = { t in [try whole.source(for: t.name, geometry: t.geometry)] }
        buffers = CopyBuffers(budget: bufferBudget)
    }

    /// Slices for `tp` ranks read from the pieces of `shards` (any layout), checking their checksums.
    public convenience init(shards: ShardSet, tp: Int, bufferBudget: Int = 16 << 20) throws {
        try self.init(shards: shards, layout: LayoutRequest(tp: tp), bufferBudget: bufferBudget)
    }

    /// Slices for the layout `request` asks for, read from the pieces of `shards` (any layout).
    public init(shards: ShardSet, layout request: LayoutRequest, bufferBudget: Int = 16 << 20) throws {
        plan = try shards.plan(for: request)
        let files = try shards.openAllRanks()
        sources = { t in try shards.sources(for: t.name, files: files) }
        buffers = CopyBuffers(budget: bufferBudget)
    }

    /// Rank `r`'s piece of `name`: its shape and bytes (exactly the bytes `shard` would write).
    public func piece(_ name: String, rank r: Int) throws -> (shape: [Int], bytes: [UInt8]) {
        let t = try planned(name, rank: r)
        let sink = MemorySink(capacity: t.pieceBytes(rank: r))
        try copy(t, rank: r, into: sink)
        return (t.pieceShape(rank: r), sink.bytes)
    }

    /// Rank `r`'s pieces of every tensor of module `module` (a quantized layer's weight and companions,
    /// or weight and bias), by the last component of the name; only those the rank holds.
    public func module(_ module: String, rank r: Int) throws -> [String: (shape: [Int], bytes: [UInt8])] {
        let prefix = module + "."
        var parts: [String: (shape: [Int], bytes: [UInt8])] = [:]
        for t in plan.tensors where t.name.hasPrefix(prefix) && !t.name.dropFirst(prefix.count).contains(".")
            && t.layout(rank: r) != nil {
            parts[String(t.name.dropFirst(prefix.count))] = try piece(t.name, rank: r)
        }
        return parts
    }

    /// Reads rank `r`'s piece of `name` into `buffer`, which must hold exactly its bytes.
    public func read(_ name: String, rank r: Int, into buffer: UnsafeMutableRawBufferPointer) throws {
        let t = try planned(name, rank: r)
        guard buffer.count == t.pieceBytes(rank: r) else {
            throw ShardKitError(.invalidArgument,
                "tensor \(name) rank \(r) piece is \(t.pieceBytes(rank: r)) bytes, buffer is \(buffer.count)")
        }
        try copy(t, rank: r, into: BufferSink(buffer))
    }

    private func planned(_ name: String, rank r: Int) throws -> ShardPlan.Tensor {
        guard let t = plan.tensor(named: name) else { throw ShardKitError(.notFound, "no tensor \(name)") }
        guard r >= 0 && r < plan.worldSize else {
            throw ShardKitError(.notFound, "rank \(r) out of range 0..<\(plan.worldSize)")
        }
        guard t.layout(rank: r) != nil else {
            throw ShardKitError(.notFound, "rank \(r) holds no piece of \(name) (held by ranks "
                                + "\(describeRuns(t.holders)))")
        }
        return t
    }

    private func copy(_ t: ShardPlan.Tensor, rank r: Int, into sink: PieceSink) throws {
        try CopyEngine.copy(tensor: t.name, geometry: t.geometry, sources: try sources(t),
                            destinations: [CopyDestination(layout: t.layout(rank: r)!, sink: sink)], buffers: buffers)
    }
}
