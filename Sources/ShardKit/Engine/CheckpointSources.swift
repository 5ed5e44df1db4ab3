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
}

extension CopySource {
    /// A full tensor as a copy source: one interval covering the whole split dimension.
    public static func whole(_ info: TensorInfo, geometry: TensorGeometry, file: ReadOnlyFile) -> CopySource {
        CopySource(file: file, offset: info.offset, layout: PieceLayout([0..<geometry.size]), label: file.path)
    }
}
