import Foundation
import ShardKit

/// A tensor's bytes as stored, widened to f32 only where needed: whole on first use of `floats`, or
/// a range at a time (`widen`) so that a matrix product can widen cache-sized tiles.
final class PieceStorage {
    let raw: [UInt8]
    let dtype: DType
    let name: String

    /// Checks up front that `dtype` can be widened, so that later widening cannot fail. `integers`:
    /// an integer tensor is accepted too (quantized parts, read as integers by the dequantizer; never
    /// widened).
    init(raw: [UInt8], dtype: DType, count: Int, name: String, integers: Bool = false) throws {
        guard raw.count == count * dtype.size else {
            throw Widen.sizeMismatch(name, bytes: raw.count, count: count, dtype: dtype)
        }
        guard Widen.canWiden(dtype) || (integers && [.i32, .u32, .i8, .u8, .i64].contains(dtype)) else {
            throw Widen.unreadable(name, dtype: dtype)
        }
        self.raw = raw
        self.dtype = dtype
        self.name = name
    }

    var count: Int { raw.count / dtype.size }

    lazy var floats: [Float] = {
        raw.withUnsafeBytes { try! Widen.toFloat($0, dtype: dtype, count: count, name: name) }
    }()

    /// Widens elements `[from, from + count)` into `out`.
    func widen(from: Int, count n: Int, into out: UnsafeMutablePointer<Float>) {
        raw.withUnsafeBytes { bytes in
            let slice = UnsafeRawBufferPointer(rebasing: bytes[(from * dtype.size)..<((from + n) * dtype.size)])
            try! Widen.toFloat(slice, dtype: dtype, count: n, into: out, name: name)
        }
    }
}

/// One rank's piece of a tensor (or a whole tensor); its values widen to f32 on use.
struct Piece {
    var name: String
    let storage: PieceStorage
    /// The values as f32 (widened on first use).
    var data: [Float] { storage.floats }
    /// The shape of `data`.
    var shape: [Int]
    /// The tensor's global (unpadded) shape.
    var globalShape: [Int]
    var dtype: DType
    /// The split dimension (nil: whole tensor) and the global index of each local position along it,
    /// from the manifest's intervals (indices past the true size are zero padding).
    var dim: Int?
    var index: [Int]?

    /// Global indices of the local positions along `d`.
    func labels(along d: Int) -> [Int] {
        if dim == d, let index { return index }
        return Array(0..<shape[d])
    }
    /// True when this piece holds only part of dimension `d`.
    func isPartial(along d: Int) -> Bool { dim == d && shape[d] < globalShape[d] }

    /// Entry `e` of the first dimension of a 3-D (or 2-D) piece: one expert of a fused expert tensor (or
    /// of a fused expert bias), one dimension less; the first dimension must not be split.
    func expert(_ e: Int) throws -> Piece {
        guard shape.count == 3 || shape.count == 2, dim != 0, e >= 0, e < shape[0] else {
            let split = dim.map { "split along dim \($0)" } ?? "whole"
            throw ShardKitError(.verificationFailed, "tensor \(name): expected [experts, …] with the experts "
                + "whole on every rank, got shape \(shape) of \(globalShape), \(split)")
        }
        let size = shape[1...].reduce(1, *) * dtype.size
        return try Piece(name: "\(name)[\(e)]", raw: Array(storage.raw[(e * size)..<((e + 1) * size)]),
                         shape: Array(shape[1...]), globalShape: Array(globalShape[1...]), dtype: dtype,
                         dim: dim.map { $0 - 1 }, index: index)
    }

    init(name: String, raw: [UInt8], shape: [Int], globalShape: [Int], dtype: DType, dim: Int?, index: [Int]?,
         integers: Bool = false) throws {
        self.name = name
        self.storage = try PieceStorage(raw: raw, dtype: dtype, count: shape.reduce(1, *), name: name,
                                        integers: integers)
        self.shape = shape; self.globalShape = globalShape; self.dtype = dtype; self.dim = dim; self.index = index
    }
}

/// Where a forward pass gets its weights: one "rank" holding everything, or G ranks of a shard set.
protocol WeightProvider {
    var ranks: Int { get }
    func has(_ name: String) -> Bool
    func dtype(_ name: String) -> DType?
    /// The tensor's global (unpadded) shape, without loading it.
    func globalShape(_ name: String) -> [Int]?
    /// Rank `rank`'s piece of `name`; `integers`: an integer tensor is accepted (quantized parts).
    func load(_ name: String, rank: Int, integers: Bool) throws -> Piece
    /// The names of the tensors, in order.
    var names: [String] { get }
    /// Whether TP rank `rank` (of the current stage) holds a piece of `name` (false for an expert that
    /// another EP group computes).
    func holds(_ name: String, rank: Int) -> Bool
}

extension WeightProvider {
    func holds(_ name: String, rank: Int) -> Bool { has(name) }
    /// Rank `rank`'s piece of the floating-point tensor `name`.
    func load(_ name: String, rank: Int) throws -> Piece { try load(name, rank: rank, integers: false) }
}

/// Full weights read straight from a checkpoint, one tensor at a time.
final class CheckpointWeights: WeightProvider {
    let checkpoint: Checkpoint
    let byName: [String: (file: Int, info: TensorInfo)]
    let sources: CheckpointSources

    init(_ checkpoint: Checkpoint) throws {
        self.checkpoint = checkpoint
        var map: [String: (file: Int, info: TensorInfo)] = [:]
        for t in checkpoint.tensors { map[t.info.name] = t }
        byName = map
        sources = try CheckpointSources(checkpoint)
    }
    var ranks: Int { 1 }
    func has(_ name: String) -> Bool { byName[name] != nil }
    func dtype(_ name: String) -> DType? { byName[name]?.info.dtype }
    func globalShape(_ name: String) -> [Int]? { byName[name]?.info.shape }
    var names: [String] { checkpoint.tensors.map(\.info.name) }
    func load(_ name: String, rank: Int, integers: Bool) throws -> Piece {
        guard let (_, info) = byName[name] else {
            throw ShardKitError(.verificationFailed,
                                "\(checkpoint.directory): the full checkpoint has no tensor \(name)")
        }
        let bytes = try sources.bytes(of: name)
        return try Piece(name: name, raw: bytes, shape: info.shape, globalShape: info.shape, dtype: info.dtype,
                         dim: nil, index: nil, integers: integers)
    }
}

/// Full weights reassembled from a shard set's ranks (padding dropped, checksums checked).
final class ReassembledWeights: WeightProvider {
    let shardSet: ShardSet
    let files: [[String: (SafetensorsFile, ReadOnlyFile)]]
    let buffers = CopyBuffers()

    init(_ set: ShardSet) throws {
        self.shardSet = set
        files = try shardSet.openAllRanks()
    }
    var ranks: Int { 1 }
    func has(_ name: String) -> Bool { shardSet.manifest.tensors[name] != nil }
    func dtype(_ name: String) -> DType? { shardSet.manifest.tensors[name]?.dtype }
    func globalShape(_ name: String) -> [Int]? { shardSet.manifest.tensors[name]?.shape }
    var names: [String] { shardSet.manifest.order }
    func load(_ name: String, rank: Int, integers: Bool) throws -> Piece {
        guard let t = shardSet.manifest.tensors[name] else {
            throw ShardKitError(.verificationFailed, "\(shardSet.directory): no tensor \(name)")
        }
        let sink = MemorySink()
        try shardSet.reassemble(name, files: files, into: sink, buffers: buffers)
        return try Piece(name: name, raw: sink.bytes, shape: t.shape, globalShape: t.shape, dtype: t.dtype,
                         dim: nil, index: nil, integers: integers)
    }
}

/// The ranks of a shard set: each rank's own piece, its layout taken from the manifest's rule and
/// intervals (never re-derived). A forward pass sees the G = tp ranks of the current pipeline `stage`:
/// its TP rank r is world rank stage · tp + r, and a tensor that stage does not hold cannot be read.
final class RankWeights: WeightProvider {
    let shardSet: ShardSet
    /// Each world rank's validated files, with a handle for positioned reads (no mapping: pages of
    /// mapped files would stay in RSS as the pass walks the model).
    let files: [[String: (SafetensorsFile, ReadOnlyFile)]]
    /// Names of the tensors loaded so far (what a forward pass actually read).
    private(set) var loaded = Set<String>()
    /// The pipeline stage whose ranks the pass runs on.
    var stage = 0

    init(_ set: ShardSet) throws {
        self.shardSet = set
        files = try set.openAllRanks()
    }
    var ranks: Int { shardSet.tp }
    func holds(_ name: String, rank r: Int) -> Bool {
        shardSet.manifest.tensors[name]?.piece(rank: stage * shardSet.tp + r) != nil
    }
    func has(_ name: String) -> Bool { shardSet.manifest.tensors[name] != nil }
    func dtype(_ name: String) -> DType? { shardSet.manifest.tensors[name]?.dtype }
    func globalShape(_ name: String) -> [Int]? { shardSet.manifest.tensors[name]?.shape }
    private func bad(_ message: String) -> ShardKitError {
        ShardKitError(.verificationFailed, "\(shardSet.directory): \(message)")
    }
    var names: [String] { shardSet.manifest.order }

    /// TP rank `r` of the current stage's piece of `name`.
    func load(_ name: String, rank r: Int, integers: Bool) throws -> Piece {
        guard let record = shardSet.manifest.tensors[name] else { throw bad("no tensor \(name)") }
        let w = stage * shardSet.tp + r
        guard let piece = record.piece(rank: w) else {
            let holders = shardSet.manifest.holders(of: record).ranks
            throw ShardKitError(.verificationFailed, "rank \(r) of stage \(stage) (world rank \(w)) needs \(name), "
                + "which it does not hold (held by world ranks \(describeRuns(holders)), stages \(record.stages))")
        }
        return try load(name, piece: piece, record: record, integers: integers)
    }

    /// The pieces of one copy of `name` (the first stage's that holds it), in rank order.
    func loadCopy(_ name: String) throws -> [Piece] {
        guard let record = shardSet.manifest.tensors[name] else { throw bad("no tensor \(name)") }
        let ways = shardSet.manifest.holders(of: record).ways
        return try record.pieces.prefix(ways).map { try load(name, piece: $0, record: record) }
    }

    private func load(_ name: String, piece: Manifest.Piece, record: Manifest.Tensor,
                      integers: Bool = false) throws -> Piece {
        let r = piece.rank
        guard let (sf, handle) = files[r][piece.file] else { throw bad("rank \(r) file \(piece.file) is not open") }
        let info = try shardSet.pieceLocation(name, rank: r, in: sf)
        let bytes = try handle.read(count: info.byteCount, at: info.offset)
        loaded.insert(name)
        var index: [Int]? = nil
        if record.rule.dim != nil {
            index = piece.intervals.flatMap { Array($0[0]..<$0[1]) }
        }
        let dim = record.rule.dim
        if let dim, let index, dim < info.shape.count, index.count != info.shape[dim] {
            throw ShardKitError(.verificationFailed, "tensor \(name) rank \(r): intervals cover \(index.count) "
                + "indices, the piece has \(info.shape[dim])")
        }
        return try Piece(name: name, raw: bytes, shape: info.shape, globalShape: record.shape, dtype: record.dtype,
                         dim: dim, index: index, integers: integers)
    }
}

/// A rank's activations: `rows` tokens × features, each column labelled with its global feature index.
