/// A tensor's bytes, borrowed from a mapped file: no copy is made. Valid while its `RankView` (or
/// `CheckpointView`) is alive.
public struct TensorView: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    /// The shape of these bytes (a rank's piece shape for a shard).
    public let shape: [Int]
    public let bytes: UnsafeRawBufferPointer
}

/// A shard set on disk: its validated manifest and directory. Open a rank with `rank(_:)`.
public struct ShardSet: Sendable {
    public let directory: String
    public let manifest: Manifest

    /// Reads and validates `directory/manifest.json`.
    public init(directory: String) throws {
        self.directory = directory
        self.manifest = try Manifest.read(directory: directory)
    }

    public var tp: Int { manifest.tp }

    /// Opens rank `r`'s files (memory-mapped) and checks that each piece the manifest lists is there
    /// with the right dtype and shape.
    public func rank(_ r: Int) throws -> RankView { try RankView(set: self, rank: r) }

    /// The validated safetensors files of rank `r`, keyed by relative path.
    public func rankFiles(_ r: Int) throws -> [String: SafetensorsFile] {
        guard r >= 0 && r < tp else { throw ShardKitError(.notFound, "rank \(r) out of range 0..<\(tp)") }
        var result: [String: SafetensorsFile] = [:]
        for f in manifest.ranks[r].files {
            let path = FileSystem.join(directory, f)
            guard FileSystem.exists(path) else {
                throw ShardKitError(.invalidManifest, "\(path): named by manifest.json for rank \(r) but missing")
            }
            result[f] = try SafetensorsFile(path: path)
        }
        return result
    }

    /// Where rank `r`'s piece of `name` lives, checked against the manifest.
    public func pieceLocation(_ name: String, rank r: Int, files: [String: SafetensorsFile]) throws -> TensorInfo {
        guard let t = manifest.tensors[name] else { throw ShardKitError(.notFound, "no tensor \(name) in \(directory)") }
        let piece = t.pieces[r]
        guard let file = files[piece.file], let info = file.tensor(named: name) else {
            throw ShardKitError(.invalidManifest, "\(FileSystem.join(directory, piece.file)): has no tensor \(name) (the manifest says rank \(r) holds it there)")
        }
        guard info.dtype == t.dtype, info.shape == piece.shape else {
            throw ShardKitError(.invalidManifest,
                "\(FileSystem.join(directory, piece.file)): tensor \(name) is \(info.dtype.rawValue) \(info.shape), the manifest says \(t.dtype.rawValue) \(piece.shape)")
        }
        return info
    }

    /// Copy sources for every rank's piece of `name` (for reshard, reassembly and verification).
    /// `files[r]` are rank r's open files by relative path.
    public func sources(for name: String, files: [[String: (SafetensorsFile, ReadOnlyFile)]], checkCRC: Bool = true) throws -> [CopySource] {
        guard let t = manifest.tensors[name] else { throw ShardKitError(.notFound, "no tensor \(name) in \(directory)") }
        return try (0..<tp).map { r in
            let piece = t.pieces[r]
            guard let (sf, handle) = files[r][piece.file] else { throw ShardKitError(.invalidManifest, "rank \(r) file \(piece.file) not open") }
            let info = try pieceLocation(name, rank: r, files: [piece.file: sf])
            return CopySource(file: handle, offset: info.offset, layout: manifest.layout(of: t, rank: r),
                              expectedCRC: checkCRC ? CRC32C.parse(hex: piece.crc32c) : nil,
                              label: "rank \(r) file \(FileSystem.join(directory, piece.file))")
        }
    }

    /// Opens every rank's files for `sources(for:files:)`.
    public func openAllRanks() throws -> [[String: (SafetensorsFile, ReadOnlyFile)]] {
        try (0..<tp).map { r in
            try rankFiles(r).mapValues { ($0, try ReadOnlyFile(path: $0.path)) }
        }
    }

    /// Reads the whole tensor `name`, reassembled from the ranks through the copy engine (padding
    /// dropped), checking the pieces' checksums on the way.
    public func reassemble(_ name: String, files: [[String: (SafetensorsFile, ReadOnlyFile)]], into sink: PieceSink,
                           buffers: CopyBuffers) throws {
        guard let t = manifest.tensors[name] else { throw ShardKitError(.notFound, "no tensor \(name) in \(directory)") }
        let g = try TensorGeometry(shape: t.shape, elementSize: t.dtype.size, dim: t.rule.dim, tensor: name)
        try CopyEngine.copy(tensor: name, geometry: g, sources: try sources(for: name, files: files),
                            destinations: [CopyDestination(layout: PieceLayout([0..<g.size]), sink: sink)], buffers: buffers)
    }
}

/// One rank of a shard set, its files mapped: the zero-copy view a loader uses.
public final class RankView: @unchecked Sendable {
    public let rank: Int
    public let shardSet: ShardSet
    let mapped: [String: MappedFile]
    let located: [String: (file: String, info: TensorInfo)]

    init(set: ShardSet, rank r: Int) throws {
        self.rank = r
        self.shardSet = set
        let files = try set.rankFiles(r)
        var mapped: [String: MappedFile] = [:]
        for (rel, f) in files { mapped[rel] = try MappedFile(path: f.path) }
        var located: [String: (String, TensorInfo)] = [:]
        for name in set.manifest.order {
            located[name] = (set.manifest.tensors[name]!.pieces[r].file, try set.pieceLocation(name, rank: r, files: files))
        }
        self.mapped = mapped
        self.located = located
    }

    /// Tensor names in manifest order.
    public var names: [String] { shardSet.manifest.order }

    /// This rank's piece of `name`, zero-copy.
    public func tensor(_ name: String) throws -> TensorView {
        guard let (file, info) = located[name] else { throw ShardKitError(.notFound, "no tensor \(name) in \(shardSet.directory)") }
        let bytes = UnsafeRawBufferPointer(rebasing: mapped[file]!.bytes[info.offset..<(info.offset + info.byteCount)])
        return TensorView(name: name, dtype: info.dtype, shape: info.shape, bytes: bytes)
    }

    /// The manifest's record of `name` (rule, global shape, intervals).
    public func record(_ name: String) -> Manifest.Tensor? { shardSet.manifest.tensors[name] }
}

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
        plan = try ShardPlan(checkpoint: checkpoint, rules: try rules ?? ShardPlan.rules(for: checkpoint, rulesFile: nil), tp: tp)
        let handles = try checkpoint.files.map { try ReadOnlyFile(path: $0.path) }
        let byName = Dictionary(uniqueKeysWithValues: checkpoint.tensors.map { ($0.info.name, $0) })
        sources = { t in
            let entry = byName[t.name]!
            return [Shard.wholeTensorSource(entry.info, geometry: t.geometry, file: handles[entry.file])]
        }
        buffers = CopyBuffers(budget: bufferBudget)
    }

    /// Slices for `tp` ranks read from the pieces of `shards` (any TP degree), checking their checksums.
    public init(shards: ShardSet, tp: Int, bufferBudget: Int = 16 << 20) throws {
        let m = shards.manifest
        plan = try ShardPlan(tensors: m.order.map { (name: $0, dtype: m.tensors[$0]!.dtype, shape: m.tensors[$0]!.shape) },
                             rules: m.order.map { m.tensors[$0]!.rule }, tp: tp)
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
            throw ShardKitError(.notFound, "tensor \(name) rank \(r) piece is \(t.pieceBytes(rank: r)) bytes, buffer is \(buffer.count)")
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
