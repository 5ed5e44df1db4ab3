/// A tensor's bytes, borrowed from a mapped file: no copy is made. Valid while its `RankView` (or
/// `CheckpointView`) is alive.
public struct TensorView: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    /// The shape of these bytes (a rank's piece shape for a shard).
    public let shape: [Int]
    public let bytes: UnsafeRawBufferPointer
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

