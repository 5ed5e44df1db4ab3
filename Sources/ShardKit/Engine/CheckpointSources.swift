/// An unsharded checkpoint as copy sources: each tensor one source that covers its whole split
/// dimension, read in place from its file (shard, reconstruction checks, `RankSlicer`).
public final class CheckpointSources: @unchecked Sendable {
    public let checkpoint: Checkpoint
    private let handles: [ReadOnlyFile]

    /// Opens every weights file of `checkpoint` for reading.
    public init(_ checkpoint: Checkpoint) throws {
        self.checkpoint = checkpoint
        handles = try checkpoint.files.map { try ReadOnlyFile(path: $0.path) }
    }

    /// The whole tensor `name`, seen with `geometry` (its split along the plan's dimension).
    public func source(for name: String, geometry: TensorGeometry) throws -> CopySource {
        guard let (file, info) = checkpoint.tensor(named: name) else {
            throw ShardKitError(.notFound, "no tensor \(name) in \(checkpoint.directory)")
        }
        return CopySource.whole(info, geometry: geometry, file: handles[file])
    }

    /// The whole tensor `name` as bytes (decoded if its file stores it encoded).
    public func bytes(of name: String) throws -> [UInt8] {
        guard let (file, info) = checkpoint.tensor(named: name) else {
            throw ShardKitError(.notFound, "no tensor \(name) in \(checkpoint.directory)")
        }
        let (source, offset) = info.byteSource(in: handles[file])
        return try source.read(count: info.byteCount, at: offset)
    }
}

extension CopySource {
    /// A full tensor as a copy source: one interval covering the whole split dimension, read in place
    /// or (an encoded tensor) through a new decoder over `file`.
    public static func whole(_ info: TensorInfo, geometry: TensorGeometry, file: ReadOnlyFile) -> CopySource {
        let (source, offset) = info.byteSource(in: file)
        return CopySource(file: source, offset: offset, layout: PieceLayout([0..<geometry.size]), label: file.path)
    }
}
