import Foundation
import ShardKit

/// A tensor's bytes as stored, widened to f32 only where needed: whole on first use of `floats`, or
/// a range at a time (`widen`) so that a matrix product can widen cache-sized tiles.
final class PieceStorage {
    let raw: [UInt8]
    let dtype: DType
    let name: String

    /// Checks up front that `dtype` can be widened, so that later widening cannot fail.
    init(raw: [UInt8], dtype: DType, count: Int, name: String) throws {
        guard raw.count == count * dtype.size else {
            throw ShardKitError(.verificationFailed, "tensor \(name): \(raw.count) bytes for \(count) \(dtype.rawValue) elements")
        }
        guard Widen.canWiden(dtype) else {
            throw ShardKitError(.verificationFailed, "tensor \(name): dtype \(dtype.rawValue) is not a floating-point type the reference forward pass can read")
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

    init(name: String, raw: [UInt8], shape: [Int], globalShape: [Int], dtype: DType, dim: Int?, index: [Int]?) throws {
        self.name = name
        self.storage = try PieceStorage(raw: raw, dtype: dtype, count: shape.reduce(1, *), name: name)
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
    func load(_ name: String, rank: Int) throws -> Piece
}

/// Full weights read straight from a checkpoint, one tensor at a time.
final class CheckpointWeights: WeightProvider {
    let checkpoint: Checkpoint
    let byName: [String: (file: Int, info: TensorInfo)]
    let handles: [ReadOnlyFile]

    init(_ checkpoint: Checkpoint) throws {
        self.checkpoint = checkpoint
        var map: [String: (file: Int, info: TensorInfo)] = [:]
        for t in checkpoint.tensors { map[t.info.name] = t }
        byName = map
        handles = try checkpoint.files.map { try ReadOnlyFile(path: $0.path) }
    }
    var ranks: Int { 1 }
    func has(_ name: String) -> Bool { byName[name] != nil }
    func dtype(_ name: String) -> DType? { byName[name]?.info.dtype }
    func globalShape(_ name: String) -> [Int]? { byName[name]?.info.shape }
    func load(_ name: String, rank: Int) throws -> Piece {
        guard let (file, info) = byName[name] else {
            throw ShardKitError(.verificationFailed, "\(checkpoint.directory): the full checkpoint has no tensor \(name)")
        }
        let bytes = try handles[file].read(count: info.byteCount, at: info.offset)
        return try Piece(name: name, raw: bytes, shape: info.shape, globalShape: info.shape, dtype: info.dtype, dim: nil, index: nil)
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
    func load(_ name: String, rank: Int) throws -> Piece {
        guard let t = shardSet.manifest.tensors[name] else { throw ShardKitError(.verificationFailed, "\(shardSet.directory): no tensor \(name)") }
        let sink = MemorySink()
        try shardSet.reassemble(name, files: files, into: sink, buffers: buffers)
        return try Piece(name: name, raw: sink.bytes, shape: t.shape, globalShape: t.shape, dtype: t.dtype, dim: nil, index: nil)
    }
}

/// The G ranks of a shard set: each rank's own piece, its layout taken from the manifest's rule and
/// intervals (never re-derived).
final class RankWeights: WeightProvider {
    let shardSet: ShardSet
    /// Each rank's validated files, with a handle for positioned reads (no mapping: pages of mapped
    /// files would stay in RSS as the pass walks the model).
    let files: [[String: (SafetensorsFile, ReadOnlyFile)]]
    /// Names of the tensors loaded so far (what a forward pass actually read).
    private(set) var loaded = Set<String>()

    init(_ set: ShardSet) throws {
        self.shardSet = set
        files = try set.openAllRanks()
    }
    var ranks: Int { shardSet.tp }
    func has(_ name: String) -> Bool { shardSet.manifest.tensors[name] != nil }
    func dtype(_ name: String) -> DType? { shardSet.manifest.tensors[name]?.dtype }
    func globalShape(_ name: String) -> [Int]? { shardSet.manifest.tensors[name]?.shape }
    func load(_ name: String, rank r: Int) throws -> Piece {
        guard let record = shardSet.manifest.tensors[name] else { throw ShardKitError(.verificationFailed, "\(shardSet.directory): no tensor \(name)") }
        let file = record.pieces[r].file
        guard let (sf, handle) = files[r][file] else { throw ShardKitError(.verificationFailed, "\(shardSet.directory): rank \(r) file \(file) is not open") }
        let info = try shardSet.pieceLocation(name, rank: r, files: [file: sf])
        let bytes = try handle.read(count: info.byteCount, at: info.offset)
        loaded.insert(name)
        var index: [Int]? = nil
        if record.rule.dim != nil {
            index = record.pieces[r].intervals.flatMap { Array($0[0]..<$0[1]) }
        }
        let dim = record.rule.dim
        if let dim, let index, dim < info.shape.count, index.count != info.shape[dim] {
            throw ShardKitError(.verificationFailed, "tensor \(name) rank \(r): intervals cover \(index.count) indices, the piece has \(info.shape[dim])")
        }
        return try Piece(name: name, raw: bytes, shape: info.shape, globalShape: record.shape, dtype: record.dtype, dim: dim, index: index)
    }
}

/// A rank's activations: `rows` tokens × features, each column labelled with its global feature index.
struct Act {
    var rows: Int
    var labels: [Int]
    var data: [Float]
    var cols: Int { labels.count }

    init(rows: Int, labels: [Int], data: [Float]) {
        precondition(data.count == rows * labels.count)
        self.rows = rows; self.labels = labels; self.data = data
    }
    init(rows: Int, width: Int) {
        self.init(rows: rows, labels: Array(0..<width), data: [Float](repeating: 0, count: rows * width))
    }

    /// Map from global label to local column.
    func columnMap() -> [Int: Int] {
        var m: [Int: Int] = [:]
        m.reserveCapacity(labels.count)
        for (i, l) in labels.enumerated() { m[l] = i }
        return m
    }

    /// The columns with the given global labels, in that order; nil when a label is missing.
    func select(_ wanted: [Int]) -> Act? {
        if wanted == labels { return self }
        let map = columnMap()
        var cols: [Int] = []
        cols.reserveCapacity(wanted.count)
        for l in wanted { guard let c = map[l] else { return nil }; cols.append(c) }
        var out = [Float](repeating: 0, count: rows * wanted.count)
        for i in 0..<rows { for (j, c) in cols.enumerated() { out[i * wanted.count + j] = data[i * labels.count + c] } }
        return Act(rows: rows, labels: wanted, data: out)
    }

    /// The given rows (tokens).
    func rowsSubset(_ idx: [Int]) -> Act {
        var out: [Float] = []
        out.reserveCapacity(idx.count * cols)
        for i in idx { out.append(contentsOf: data[(i * cols)..<((i + 1) * cols)]) }
        return Act(rows: idx.count, labels: labels, data: out)
    }

    static func += (a: inout Act, b: Act) {
        precondition(a.labels == b.labels && a.rows == b.rows)
        for i in 0..<a.data.count { a.data[i] += b.data[i] }
    }
}

/// Builds the per-rank pieces of a forward pass and simulates the collectives between ranks.
struct TPContext {
    let weights: WeightProvider
    let gemm: GemmEngine
    var G: Int { weights.ranks }

    func load(_ name: String, rank: Int) throws -> Piece { try weights.load(name, rank: rank) }
    func loadAll(_ name: String) throws -> [Piece] { try (0..<G).map { try weights.load(name, rank: $0) } }
    func loadAllIfPresent(_ name: String) throws -> [Piece]? { weights.has(name) ? try loadAll(name) : nil }

    /// y = x·Wᵀ (+ bias) with the rank's piece of W (`[out, in]`, or `[in, out]` for GPT-2's Conv1D).
    /// Returns the output (labelled by the global output features the piece holds) and whether it is a
    /// partial sum (the piece holds only some input features). The bias is added only to complete sums.
    func linear(_ x: Act, _ w: Piece, bias: Piece?, conv1D: Bool = false, rank: Int) throws -> (y: Act, partial: Bool) {
        guard w.shape.count == 2 else { throw ShardKitError(.verificationFailed, "tensor \(w.name): expected a 2-D weight, got shape \(w.shape)") }
        let outDim = conv1D ? 1 : 0, inDim = 1 - outDim
        let inLabels = w.labels(along: inDim), outLabels = w.labels(along: outDim)
        guard let xs = x.select(inLabels) else {
            let missing = inLabels.first { !Set(x.labels).contains($0) } ?? -1
            throw ShardKitError(.verificationFailed, "rank \(rank): \(w.name) needs input feature \(missing), which the rank does not compute (its piece holds input features \(describe(inLabels)), the rank has \(describe(x.labels)))")
        }
        var y = Act(rows: x.rows, labels: outLabels, data: [Float](repeating: 0, count: x.rows * outLabels.count))
        xs.data.withUnsafeBufferPointer { a in
            y.data.withUnsafeMutableBufferPointer { c in
                gemm.multiply(m: x.rows, n: outLabels.count, k: inLabels.count, a: a.baseAddress!, b: w.storage,
                              transB: !conv1D, c: c.baseAddress!)
            }
        }
        let partial = w.isPartial(along: inDim)
        if let bias, !partial { try addBias(&y, bias, trueSize: w.globalShape[outDim], rank: rank) }
        return (y, partial)
    }

    /// Adds the bias values of `y`'s output labels (labels at or past `trueSize` are padding).
    func addBias(_ y: inout Act, _ bias: Piece, trueSize: Int, rank: Int) throws {
        guard bias.shape.count == 1 else { throw ShardKitError(.verificationFailed, "tensor \(bias.name): expected a 1-D bias, got shape \(bias.shape)") }
        let labels = bias.labels(along: 0)
        var map: [Int: Float] = [:]
        for (i, l) in labels.enumerated() { map[l] = bias.data[i] }
        var values = [Float](repeating: 0, count: y.cols)
        for (j, l) in y.labels.enumerated() where l < trueSize {
            guard let v = map[l] else {
                throw ShardKitError(.verificationFailed, "rank \(rank): \(bias.name) has no value for output feature \(l) (the rank holds \(describe(labels)))")
            }
            values[j] = v
        }
        for i in 0..<y.rows { for j in 0..<y.cols { y.data[i * y.cols + j] += values[j] } }
    }

    /// Column-parallel layer: every rank's output features, no communication. The piece must hold all
    /// input features.
    func column(_ xs: [Act], weight: String, bias: String?, conv1D: Bool = false) throws -> [Act] {
        let b = try bias.flatMap { try loadAllIfPresent($0) }
        return try (0..<G).map { r in
            let w = try load(weight, rank: r)
            let (y, partial) = try linear(xs[r], w, bias: b?[r], conv1D: conv1D, rank: r)
            if partial { throw ShardKitError(.verificationFailed, "rank \(r): \(weight) is split along its input features, but this layer must be column-parallel or replicated") }
            return y
        }
    }

    /// Row-parallel layer: partial sums, all-reduce, then each rank adds its (replicated) bias once.
    func row(_ xs: [Act], weight: String, bias: String?, conv1D: Bool = false) throws -> [Act] {
        let b = try bias.flatMap { try loadAllIfPresent($0) }
        var outs: [Act] = [], partial: [Bool] = []
        for r in 0..<G {
            let w = try load(weight, rank: r)
            let (y, p) = try linear(xs[r], w, bias: nil, conv1D: conv1D, rank: r)
            outs.append(y); partial.append(p)
        }
        var result = try combine(outs, partial: partial, what: weight)
        if let b, let shape = weights.globalShape(weight) {
            for r in 0..<G { try addBias(&result[r], b[r], trueSize: shape[conv1D ? 1 : 0], rank: r) }
        }
        return result
    }

    /// All-reduce when every rank holds a partial sum; identity when no rank does (a replicated layer).
    func combine(_ outs: [Act], partial: [Bool], what: String) throws -> [Act] {
        if partial.allSatisfy({ !$0 }) { return outs }
        guard partial.allSatisfy({ $0 }) else {
            throw ShardKitError(.verificationFailed, "\(what): some ranks hold partial input features and some hold all of them; no collective can combine that")
        }
        return try allReduce(outs, what: what)
    }

    /// Sum over ranks (in rank order); every rank receives the sum.
    func allReduce(_ outs: [Act], what: String) throws -> [Act] {
        var sum = outs[0]
        for r in 1..<max(outs.count, 1) {
            guard outs[r].labels == sum.labels, outs[r].rows == sum.rows else {
                throw ShardKitError(.verificationFailed, "\(what): rank \(r)'s partial sum covers output features \(describe(outs[r].labels)), rank 0's \(describe(sum.labels)); they cannot be all-reduced")
            }
            sum += outs[r]
        }
        return Array(repeating: sum, count: outs.count)
    }

    /// All-gather along features: every rank receives features `0..<size` (labels at or past `size` are
    /// padding and dropped), keeping its own values for the features it holds (so a replicated piece is
    /// checked on every rank) and taking the others from the first rank that holds them. Throws when
    /// some feature is on no rank.
    func allGather(_ outs: [Act], size: Int, what: String) throws -> [Act] {
        let rows = outs[0].rows
        guard outs.allSatisfy({ $0.rows == rows }) else { throw ShardKitError(.verificationFailed, "\(what): ranks differ in row count") }
        var data = [Float](repeating: 0, count: rows * size)
        var seen = [Bool](repeating: false, count: size)
        for o in outs {
            for (j, l) in o.labels.enumerated() where l < size && !seen[l] {
                seen[l] = true
                for i in 0..<rows { data[i * size + l] = o.data[i * o.cols + j] }
            }
        }
        if let missing = seen.firstIndex(of: false) {
            throw ShardKitError(.verificationFailed, "\(what): output feature \(missing) is on no rank")
        }
        return outs.map { o in
            var own = data
            for (j, l) in o.labels.enumerated() where l < size {
                for i in 0..<rows { own[i * size + l] = o.data[i * o.cols + j] }
            }
            return Act(rows: rows, labels: Array(0..<size), data: own)
        }
    }

    /// Vocab-parallel embedding lookup: each rank looks up the tokens in its rows (zeros otherwise),
    /// then all-reduce; a table replicated on every rank is looked up locally, without one.
    func embed(_ tokens: [Int], table: String) throws -> [Act] {
        var outs: [Act] = [], partial: [Bool] = []
        for r in 0..<G {
            let e = try load(table, rank: r)
            guard e.shape.count == 2 else { throw ShardKitError(.verificationFailed, "\(table): expected a 2-D embedding, got \(e.shape)") }
            let width = e.shape[1]
            if e.dim == 1 { throw ShardKitError(.verificationFailed, "\(table): split along the hidden dimension; a vocab-parallel embedding splits rows") }
            var rowOf: [Int: Int] = [:]
            for (i, l) in e.labels(along: 0).enumerated() where l < e.globalShape[0] { rowOf[l] = i }
            var a = Act(rows: tokens.count, width: width)
            for (t, tok) in tokens.enumerated() {
                guard tok >= 0 && tok < e.globalShape[0] else {
                    throw ShardKitError(.verificationFailed, "token id \(tok) outside the vocabulary 0..<\(e.globalShape[0])")
                }
                if let row = rowOf[tok] {
                    a.data.withUnsafeMutableBufferPointer { e.storage.widen(from: row * width, count: width, into: $0.baseAddress! + t * width) }
                }
            }
            outs.append(a); partial.append(e.isPartial(along: 0))
        }
        return try combine(outs, partial: partial, what: table)
    }

    /// Replicated lookup (position / token-type embeddings) added to every rank's state.
    func addRows(_ hs: inout [Act], table: String, ids: [Int]) throws {
        for r in 0..<G {
            let e = try load(table, rank: r)
            guard e.dim == nil || !e.isPartial(along: e.dim!), e.shape.count == 2, e.shape[1] == hs[r].cols else {
                throw ShardKitError(.verificationFailed, "rank \(r): \(table) must be replicated with \(hs[r].cols) columns, got \(e.shape)")
            }
            let width = e.shape[1]
            for (t, id) in ids.enumerated() {
                guard id >= 0 && id < e.shape[0] else { throw ShardKitError(.verificationFailed, "\(table): index \(id) outside 0..<\(e.shape[0])") }
                for j in 0..<width { hs[r].data[t * width + j] += e.data[id * width + j] }
            }
        }
    }
}

/// A compact description of a label list for error messages.
func describe(_ labels: [Int]) -> String {
    guard let first = labels.first else { return "none" }
    var ranges: [String] = []
    var start = first, prev = first
    for l in labels.dropFirst() {
        if l == prev + 1 { prev = l; continue }
        ranges.append(start == prev ? "\(start)" : "\(start)..<\(prev + 1)")
        start = l; prev = l
    }
    ranges.append(start == prev ? "\(start)" : "\(start)..<\(prev + 1)")
    return ranges.count > 6 ? ranges.prefix(6).joined(separator: ", ") + ", …" : ranges.joined(separator: ", ")
}
