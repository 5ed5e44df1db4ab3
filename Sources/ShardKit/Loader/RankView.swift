/// A tensor's bytes in a mapped file: no copy is made. The view holds the mapping it reads from, so it
/// stays valid however long it is kept, even after its `RankView` is gone; the bytes are lent out only
/// inside `withUnsafeBytes`, so no pointer outlives the mapping.
public struct TensorView: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    /// The shape of these bytes (a rank's piece shape for a shard).
    public let shape: [Int]
    /// The mapped file, kept alive by the view.
    private let file: MappedFile
    private let range: Range<Int>

    init(name: String, dtype: DType, shape: [Int], file: MappedFile, range: Range<Int>) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.file = file; self.range = range
    }

    /// Number of bytes.
    public var byteCount: Int { range.count }

    /// Calls `body` with the bytes, in place in the mapped file (valid only during the call).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: file.bytes[range]))
    }

    /// A copy of the bytes.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }
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
            let file = set.manifest.tensors[name]!.pieces[r].file
            located[name] = (file, try set.pieceLocation(name, rank: r, files: files))
        }
        self.mapped = mapped
        self.located = located
    }

    /// Tensor names in manifest order.
    public var names: [String] { shardSet.manifest.order }

    /// This rank's piece of `name`, zero-copy.
    public func tensor(_ name: String) throws -> TensorView {
        guard let (file, info) = located[name] else { throw shardSet.noTensor(name) }
        return TensorView(name: name, dtype: info.dtype, shape: info.shape, file: mapped[file]!,
                          range: info.offset..<(info.offset + info.byteCount))
    }

    /// The manifest's record of `name` (rule, global shape, intervals).
    public func record(_ name: String) -> Manifest.Tensor? { shardSet.manifest.tensors[name] }
}

