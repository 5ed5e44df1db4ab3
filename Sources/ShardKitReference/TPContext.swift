import Foundation
import ShardKit

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

    /// A verification failure on one rank: "rank r: message".
    private static func rankError(_ rank: Int, _ message: String) -> ShardKitError {
        ShardKitError(.verificationFailed, "rank \(rank): \(message)")
    }

    /// y = x·Wᵀ (+ bias) with the rank's piece of W (`[out, in]`, or `[in, out]` for GPT-2's Conv1D).
    /// Returns the output (labelled by the global output features the piece holds) and whether it is a
    /// partial sum (the piece holds only some input features). The bias is added only to complete sums.
    func linear(_ x: Act, _ w: Piece, bias: Piece?, conv1D: Bool = false, rank: Int) throws -> (y: Act, partial: Bool) {
        guard w.shape.count == 2 else {
            throw ShardKitError(.verificationFailed, "tensor \(w.name): expected a 2-D weight, got shape \(w.shape)")
        }
        let outDim = conv1D ? 1 : 0, inDim = 1 - outDim
        let inLabels = w.labels(along: inDim), outLabels = w.labels(along: outDim)
        guard let xs = x.select(inLabels) else {
            let missing = inLabels.first { !Set(x.labels).contains($0) } ?? -1
            throw TPContext.rankError(rank, "\(w.name) needs input feature \(missing), which the rank does not compute "
                                      + "(its piece holds input features \(describe(inLabels)), "
                                      + "the rank has \(describe(x.labels)))")
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

    /// Adds the bias values of `y`'s output labels (labels at or past `trueSize` are padding). As on a TP
    /// server, a rank adds its own bias piece to its own outputs: the piece must hold exactly `y`'s
    /// features (a column-parallel bias split like its weight, a bias after an all-reduce whole).
    func addBias(_ y: inout Act, _ bias: Piece, trueSize: Int, rank: Int) throws {
        guard bias.shape.count == 1 else {
            throw ShardKitError(.verificationFailed,
                                "tensor \(bias.name): expected a 1-D bias, got shape \(bias.shape)")
        }
        let labels = bias.labels(along: 0)
        let held = labels.filter { $0 < trueSize }, produced = y.labels.filter { $0 < trueSize }
        guard held == produced else {
            throw TPContext.rankError(rank, "\(bias.name) holds output features \(describe(held)), but the rank's "
                                      + "layer produces \(describe(produced)); its bias must be split like them")
        }
        var map: [Int: Float] = [:]
        for (i, l) in labels.enumerated() { map[l] = bias.data[i] }
        var values = [Float](repeating: 0, count: y.cols)
        for (j, l) in y.labels.enumerated() where l < trueSize {
            guard let v = map[l] else {
                throw TPContext.rankError(rank, "\(bias.name) has no value for output feature \(l) "
                                          + "(the rank holds \(describe(labels)))")
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
            if partial {
                throw TPContext.rankError(r, "\(weight) is split along its input features, "
                                          + "but this layer must be column-parallel or replicated")
            }
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
            throw ShardKitError(.verificationFailed, "\(what): some ranks hold partial input features and some hold "
                + "all of them; no collective can combine that")
        }
        return try allReduce(outs, what: what)
    }

    /// Vocab-parallel embedding lookup: each rank looks up the tokens in its rows (zeros otherwise),
    /// then all-reduce; a table replicated on every rank is looked up locally, without one.
    func embed(_ tokens: [Int], table: String) throws -> [Act] {
        var outs: [Act] = [], partial: [Bool] = []
        for r in 0..<G {
            let e = try load(table, rank: r)
            guard e.shape.count == 2 else {
                throw ShardKitError(.verificationFailed, "\(table): expected a 2-D embedding, got \(e.shape)")
            }
            let width = e.shape[1]
            if e.dim == 1 {
                throw ShardKitError(.verificationFailed, "\(table): split along the hidden dimension; "
                    + "a vocab-parallel embedding splits rows")
            }
            var rowOf: [Int: Int] = [:]
            for (i, l) in e.labels(along: 0).enumerated() where l < e.globalShape[0] { rowOf[l] = i }
            var a = Act(rows: tokens.count, width: width)
            for (t, tok) in tokens.enumerated() {
                guard tok >= 0 && tok < e.globalShape[0] else {
                    throw ShardKitError(.verificationFailed,
                                        "token id \(tok) outside the vocabulary 0..<\(e.globalShape[0])")
                }
                if let row = rowOf[tok] {
                    a.data.withUnsafeMutableBufferPointer {
                        e.storage.widen(from: row * width, count: width, into: $0.baseAddress! + t * width)
                    }
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
                throw TPContext.rankError(r, "\(table) must be replicated with \(hs[r].cols) columns, got \(e.shape)")
            }
            let width = e.shape[1]
            for (t, id) in ids.enumerated() {
                guard id >= 0 && id < e.shape[0] else {
                    throw ShardKitError(.verificationFailed, "\(table): index \(id) outside 0..<\(e.shape[0])")
                }
                for j in 0..<width { hs[r].data[t * width + j] += e.data[id * width + j] }
            }
        }
    }
}

/// A compact description of a label list for error messages.
func describe(_ labels: [Int]) -> String { describeRuns(labels, limit: 6) }
