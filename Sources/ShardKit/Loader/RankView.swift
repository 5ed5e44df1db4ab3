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

/// One world rank of a shard set, its files mapped: the zero-copy view a loader uses.
public final class RankView: @unchecked Sendable {
    /// The world rank (stage · tp + TP rank).
    public let rank: Int
    public let shardSet: ShardSet
    /// The tensors this rank holds, in manifest order.
    public let names: [String]
    let mapped: [String: MappedFile]
    let located: [String: (file: String, info: TensorInfo)]

    init(set: ShardSet, rank r: Int) throws {
        self.rank = r
        self.shardSet = set
        let files = try set.rankFiles(r)
        var mapped: [String: MappedFile] = [:]
        for (rel, f) in files { mapped[rel] = try MappedFile(path: f.path) }
        var located: [String: (String, TensorInfo)] = [:]
        var names: [String] = []
        for name in set.manifest.order {
            guard let piece = set.manifest.tensors[name]!.piece(rank: r) else { continue }
            located[name] = (piece.file, try set.pieceLocation(name, rank: r, files: files))
            names.append(name)
        }
        self.mapped = mapped
        self.located = located
        self.names = names
    }

    /// This rank's pipeline stage and its TP rank within the stage.
    public var stage: Int { shardSet.layout.coordinates(of: rank).pp }
    public var tpRank: Int { shardSet.layout.coordinates(of: rank).tp }

    /// The decoder layers this rank's stage runs (nil when the manifest does not record them: a
    /// version 1 manifest, where the one stage runs every layer).
    public var layers: Range<Int>? {
        let l = shardSet.layout
        return l.stageLayers.isEmpty ? nil : l.stageLayers[stage]
    }

    /// The experts this rank computes, by MoE layer of its stage (EP > 1 only; with EP 1 every rank
    /// holds a slice of every expert).
    public var experts: [Int: [Int]] {
        let l = shardSet.layout
        guard l.ep > 1 else { return [:] }
        let group = tpRank / l.groupSize
        var result: [Int: [Int]] = [:]
        for (layer, groups) in l.experts where layers?.contains(layer) ?? true { result[layer] = groups[group] }
        return result
    }

    /// This rank's piece of `name`, zero-copy.
    public func tensor(_ name: String) throws -> TensorView {
        guard let (file, info) = located[name] else {
            _ = try shardSet.piece(name, rank: rank)   // says whether the tensor exists, and who holds it
            throw shardSet.noTensor(name)
        }
        return TensorView(name: name, dtype: info.dtype, shape: info.shape, file: mapped[file]!,
                          range: info.offset..<(info.offset + info.byteCount))
    }

    /// Every tensor of module `module` this rank holds, by the last component of its name: for a
    /// quantized linear layer its quantized weight and companions as this rank needs them
    /// (`["qweight": …, "qzeros": …, "scales": …, "g_idx": …]` for GPTQ; `weight` and
    /// `weight_scale_inv` for FP8 blocks), or `["weight": …, "bias": …]` for an unquantized one.
    /// Empty when the rank holds nothing of it.
    public func module(_ module: String) throws -> [String: TensorView] {
        let prefix = module + "."
        var parts: [String: TensorView] = [:]
        for name in names where name.hasPrefix(prefix) && !name.dropFirst(prefix.count).contains(".") {
            parts[String(name.dropFirst(prefix.count))] = try tensor(name)
        }
        return parts
    }

    /// The manifest's record of `name` (rule, global shape, intervals).
    public func record(_ name: String) -> Manifest.Tensor? { shardSet.manifest.tensors[name] }
}

