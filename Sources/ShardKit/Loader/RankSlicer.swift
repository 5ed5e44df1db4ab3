/// Reads one rank's pieces for a TP layout straight from where the bytes already are, without
/// writing a shard set: from an unsharded checkpoint (what vLLM does with safetensors' `get_slice`),
/// or from a shard set of another TP degree ("rank r of M, read from this manifest of G").
/// Either way it is the plan `shard` would use and the copy engine that `shard` and `reshard` use.
public final class RankSlicer: @unchecked Sendable {
    public let plan: ShardPlan
    let sources: (ShardPlan.Tensor) throws -> [CopySource]
    let buffers: CopyBuffers

    /// Slices of `checkpoint` for `tp` ranks with `rules` (nil: the preset for its config.json).
    public init(checkpoint: Checkpoint, tp: Int, rules: RuleSet? = nil, bufferBudget: Int = 16 << 20) throws {
        let ruleSet = try rules ?? ShardPlan.rules(for: checkpoint, rulesFile: nil)
        plan = try ShardPlan(checkpoint: checkpoint, rules: ruleSet, tp: tp)
        let whole = try CheckpointSources(checkpoint)
        sources = { t in [try whole.source(for: t.name, geometry: t.geometry)] }
        buffers = CopyBuffers(budget: bufferBudget)
    }

    /// Slices for `tp` ranks read from the pieces of `shards` (any TP degree), checking their checksums.
    public init(shards: ShardSet, tp: Int, bufferBudget: Int = 16 << 20) throws {
        let m = shards.manifest
        let list = m.order.map { (name: $0, dtype: m.tensors[$0]!.dtype, shape: m.tensors[$0]!.shape) }
        plan = try ShardPlan(tensors: list, rules: m.order.map { m.tensors[$0]!.rule }, tp: tp)
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
        guard r >= 0 && r < plan.tp else { throw ShardKitError(.notFound, "rank \(r) out of range 0..<\(plan.tp)") }
        return t
    }

    private func copy(_ t: ShardPlan.Tensor, rank r: Int, into sink: PieceSink) throws {
        try CopyEngine.copy(tensor: t.name, geometry: t.geometry, sources: try sources(t),
                            destinations: [CopyDestination(layout: t.layouts[r], sink: sink)], buffers: buffers)
    }
}
