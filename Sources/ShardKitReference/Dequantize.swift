import Foundation
import ShardKit

/// The weights of a quantized checkpoint as the forward passes read them: `M.weight` of a quantized
/// module is dequantized to f32 from the rank's own pieces of the module's tensors (packed values,
/// scales, zero points, group indices), each indexed by the global positions its manifest intervals
/// give; every other tensor passes through. The same code serves the full model (one rank holding
/// everything) and every TP rank.
final class DequantizingWeights: WeightProvider {
    let base: WeightProvider
    let format: QuantizationFormat
    /// Quantized modules and their logical [N, K] (out, in) shape.
    let modules: [String: [Int]]
    /// GPTQ's zero points are stored minus one ("gptq", v1) unless the checkpoint says "gptq_v2".
    let zeroOffset: Int

    /// `base` itself when `config` declares no quantization, else a dequantizing view of it.
    static func wrap(_ base: WeightProvider, config: ModelConfig) throws -> WeightProvider {
        guard let format = try QuantizationFormat(config: config) else { return base }
        return try DequantizingWeights(base: base, format: format, config: config)
    }

    init(base: WeightProvider, format: QuantizationFormat, config: ModelConfig) throws {
        self.base = base
        self.format = format
        modules = try format.modules(base.names.map { (name: $0, shape: base.globalShape($0) ?? []) })
        let checkpointFormat = config.json["quantization_config"]?["checkpoint_format"]?.stringValue ?? "gptq"
        zeroOffset = checkpointFormat == "gptq_v2" ? 0 : 1
    }

    private func module(of name: String) -> String? {
        if format == .mxfp4 { return modules[name] != nil ? name : nil }
        guard name.hasSuffix(".weight") else { return nil }
        let m = String(name.dropLast(7))
        return modules[m] != nil ? m : nil
    }

    var ranks: Int { base.ranks }
    var names: [String] { base.names }
    func has(_ name: String) -> Bool { module(of: name) != nil || base.has(name) }
    func dtype(_ name: String) -> DType? { module(of: name) != nil ? .f32 : base.dtype(name) }
    func globalShape(_ name: String) -> [Int]? { module(of: name).flatMap { modules[$0] } ?? base.globalShape(name) }
    func holds(_ name: String, rank: Int) -> Bool {
        guard let m = module(of: name) else { return base.holds(name, rank: rank) }
        return base.holds(m + format.separator + QuantizedPart.parts(of: format)[0].rawValue, rank: rank)
    }

    func load(_ name: String, rank: Int, integers: Bool) throws -> Piece {
        guard !integers, let m = module(of: name) else { return try base.load(name, rank: rank, integers: integers) }
        return try dequantize(m, rank: rank)
    }

    /// The rank's piece of `m`'s tensor `part`, nil when the module has none.
    private func part(_ m: String, _ part: QuantizedPart, rank: Int) throws -> Piece? {
        let name = m + format.separator + part.rawValue
        return base.has(name) ? try base.load(name, rank: rank, integers: true) : nil
    }

    private func require(_ m: String, _ p: QuantizedPart, rank: Int) throws -> Piece {
        guard let piece = try part(m, p, rank: rank) else {
            throw ShardKitError(.verificationFailed, "\(m): \(format.name) needs \(m)\(format.separator)\(p.rawValue)")
        }
        return piece
    }

    /// Rank `rank`'s piece of `m.weight` in f32, [n, k] for the global rows and columns the rank holds.
    func dequantize(_ m: String, rank: Int) throws -> Piece {
        if format == .mxfp4 { return try dequantizeMXFP4(m, rank: rank) }
        let nk = modules[m]!
        let (n, k) = (nk[0], nk[1])
        var rows: [Int], cols: [Int]
        var value: (Int, Int, Int, Int) throws -> Float   // (local row, local col, global n, global k)
        switch format {
        case .awq(let bits, let g):
            let q = try Packed(try require(m, .qweight, rank: rank))
            let z = try Packed(try require(m, .qzeros, rank: rank)), s = try require(m, .scales, rank: rank)
            let p = 32 / bits
            rows = Packed.expand(q.piece.labels(along: 1), p); cols = q.piece.labels(along: 0)
            // AWQ packs the 8 values of an int32 in the order 0, 2, 4, 6, 1, 3, 5, 7.
            let slot = [0, 4, 1, 5, 2, 6, 3, 7]
            let qRow = try Lookup(q.piece, 0), qCol = try Lookup(q.piece, 1)
            let zRow = try Lookup(z.piece, 0), zCol = try Lookup(z.piece, 1)
            let sRow = try Lookup(s, 0), sCol = try Lookup(s, 1)
            let scales = s.data
            value = { _, _, gn, gk in
                let qv = q.value(try qRow[gk], try qCol[gn / p], shift: bits * slot[gn % p], bits: bits)
                let zv = z.value(try zRow[gk / g], try zCol[gn / p], shift: bits * slot[gn % p], bits: bits)
                return Float(qv - zv) * scales[try sRow[gk / g] * s.shape[1] + (try sCol[gn])]
            }
        case .gptq(let bits, let g, let actOrder):
            let q = try Packed(try require(m, .qweight, rank: rank))
            let z = try Packed(try require(m, .qzeros, rank: rank)), s = try require(m, .scales, rank: rank)
            let gIdx = try require(m, .gIdx, rank: rank)
            let p = 32 / bits
            rows = q.piece.labels(along: 1); cols = Packed.expand(q.piece.labels(along: 0), p)
            let groupOf = try Packed.ints(gIdx)
            let gLook = try Lookup(gIdx, 0)
            let qRow = try Lookup(q.piece, 0), qCol = try Lookup(q.piece, 1)
            let zRow = try Lookup(z.piece, 0), zCol = try Lookup(z.piece, 1)
            let sRow = try Lookup(s, 0), sCol = try Lookup(s, 1)
            let scales = s.data, offset = zeroOffset
            value = { _, _, gn, gk in
                // With act-order the groups follow g_idx; else position (engines ignore g_idx then).
                let group = actOrder ? groupOf[try gLook[gk]] : gk / g
                let qv = q.value(try qRow[gk / p], try qCol[gn], shift: bits * (gk % p), bits: bits)
                let zv = z.value(try zRow[group], try zCol[gn / p], shift: bits * (gn % p), bits: bits) + offset
                return Float(qv - zv) * scales[try sRow[group] * s.shape[1] + (try sCol[gn])]
            }
        case .packed(let bits, let g, let symmetric):
            let w = try Packed(try require(m, .weightPacked, rank: rank)), s = try require(m, .weightScale, rank: rank)
            let zp = symmetric ? nil : try part(m, .weightZeroPoint, rank: rank).map { try Packed($0) }
            let p = 32 / bits
            rows = w.piece.labels(along: 0); cols = Packed.expand(w.piece.labels(along: 1), p)
            let wRow = try Lookup(w.piece, 0), wCol = try Lookup(w.piece, 1)
            let sRow = try Lookup(s, 0), sCol = try Lookup(s, 1)
            let zRow = try zp.map { try Lookup($0.piece, 0) }
            let zCol = try zp.map { try Lookup($0.piece, 1) }
            let scales = s.data, half = 1 << (bits - 1)
            value = { _, _, gn, gk in
                // Values are stored offset by 2^(bits-1) (unsigned); a zero point is stored the same way.
                let group = g.map { gk / $0 } ?? 0
                let qv = w.value(try wRow[gn], try wCol[gk / p], shift: bits * (gk % p), bits: bits) - half
                var zv = 0
                if let zp, let zRow, let zCol {
                    zv = zp.value(try zRow[gn / p], try zCol[group], shift: bits * (gn % p), bits: bits) - half
                }
                return Float(qv - zv) * scales[try sRow[gn] * s.shape[1] + (try sCol[group])]
            }
        case .mxfp4:
            preconditionFailure("MXFP4 is dequantized by dequantizeMXFP4")
        case .fp8(let block), .float(let block):
            let w = try require(m, .weight, rank: rank)
            let s = try part(m, .weightScaleInv, rank: rank) ?? require(m, .weightScale, rank: rank)
            rows = w.labels(along: 0); cols = w.labels(along: 1)
            let weights = w.data, scales = s.data
            if let block {
                let sRow = try Lookup(s, 0), sCol = try Lookup(s, 1)
                value = { i, j, gn, gk in
                    let scale = scales[try sRow[gn / block[0]] * s.shape[1] + (try sCol[gk / block[1]])]
                    return weights[i * w.shape[1] + j] * scale
                }
            } else if s.shape.reduce(1, *) == 1 {
                value = { i, j, _, _ in weights[i * w.shape[1] + j] * scales[0] }
            } else {
                let sRow = try Lookup(s, 0)
                value = { i, j, gn, _ in weights[i * w.shape[1] + j] * scales[try sRow[gn]] }
            }
        }
        // Rows and columns past the true size (--pad-intermediate) are dequantized from their stored
        // zero bytes like every other, as an engine would: the pass shows that they contribute nothing.
        var out = [Float](repeating: 0, count: rows.count * cols.count)
        for (i, gn) in rows.enumerated() {
            for (j, gk) in cols.enumerated() {
                out[i * cols.count + j] = try value(i, j, gn, gk)
            }
        }
        let dim: Int? = rows.count != n ? 0 : cols.count != k ? 1 : nil
        if rows.count != n && cols.count != k {
            throw ShardKitError(.verificationFailed, "\(m): rank \(rank) holds part of both dimensions")
        }
        let bytes = out.withUnsafeBytes { Array($0) }
        return try Piece(name: m + ".weight", raw: bytes, shape: [rows.count, cols.count], globalShape: nk,
                         dtype: .f32, dim: dim, index: dim == 0 ? rows : dim == 1 ? cols : nil)
    }
}

extension DequantizingWeights {
    /// FP4 E2M1 values by code.
    static let fp4: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]

    /// Rank `rank`'s piece of the MXFP4 tensor `m` as its unquantized [E, K, N] (input-major, as
    /// gpt-oss saves it): value (e, k, n) = fp4(code k of blocks[e, n]) · 2^(scales[e, n, k / 32] − 127),
    /// the low nibble of each byte first.
    func dequantizeMXFP4(_ m: String, rank: Int) throws -> Piece {
        let ekn = modules[m]!
        let b = try require(m, .blocks, rank: rank), s = try require(m, .scales, rank: rank)
        guard b.dtype == .u8, s.dtype == .u8 || s.dtype == .f8e8m0, b.shape.count == 4, s.shape.count == 3 else {
            throw ShardKitError(.verificationFailed, "\(m): MXFP4 blocks and scales must be U8 [E, N, K/32, 16] and "
                                + "[E, N, K/32], got \(b.dtype.rawValue) \(b.shape) and \(s.dtype.rawValue) \(s.shape)")
        }
        let experts = b.labels(along: 0), rows = b.labels(along: 1)
        let cols = Packed.expand(b.labels(along: 2), 32)
        let bytes = b.storage.raw, scales = s.storage.raw
        let sE = try Lookup(s, 0), sN = try Lookup(s, 1), sK = try Lookup(s, 2)
        let (n, kb) = (b.shape[1], b.shape[2])
        var out = [Float](repeating: 0, count: experts.count * cols.count * rows.count)
        for (ei, ge) in experts.enumerated() {
            for (ni, gn) in rows.enumerated() {
                for (ki, gk) in cols.enumerated() {
                    let byte = bytes[((ei * n + ni) * kb + ki / 32) * 16 + (ki % 32) / 2]
                    let code = ki % 2 == 0 ? byte & 0x0F : byte >> 4
                    let e = Int(scales[(try sE[ge] * s.shape[1] + (try sN[gn])) * s.shape[2] + (try sK[gk / 32])])
                    out[(ei * cols.count + ki) * rows.count + ni] = DequantizingWeights.fp4[Int(code)]
                        * Float(sign: .plus, exponent: e - 127, significand: 1)
                }
            }
        }
        let dim: Int? = b.dim == 0 ? 0 : rows.count != ekn[2] ? 2 : cols.count != ekn[1] ? 1 : nil
        let index: [Int]? = dim == 0 ? experts : dim == 2 ? rows : dim == 1 ? cols : nil
        return try Piece(name: m, raw: out.withUnsafeBytes { Array($0) },
                         shape: [experts.count, cols.count, rows.count], globalShape: ekn, dtype: .f32, dim: dim,
                         index: index)
    }
}

/// A piece of packed integers (int32 words holding several values).
private struct Packed {
    let piece: Piece
    let words: [UInt32]

    init(_ piece: Piece) throws {
        guard [.i32, .u32].contains(piece.dtype), piece.shape.count == 2 else {
            throw ShardKitError(.verificationFailed, "tensor \(piece.name): expected a 2-D I32 tensor of packed "
                                + "values, got \(piece.dtype.rawValue) \(piece.shape)")
        }
        self.piece = piece
        words = piece.storage.raw.withUnsafeBytes { raw in
            (0..<(raw.count / 4)).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self) }
        }
    }

    /// The unsigned `bits`-bit value at bit `shift` of word (row, col).
    func value(_ row: Int, _ col: Int, shift: Int, bits: Int) -> Int {
        Int((words[row * piece.shape[1] + col] >> UInt32(shift)) & ((1 << UInt32(bits)) - 1))
    }

    /// The value indices of packed word indices (each word holds `p` consecutive values).
    static func expand(_ words: [Int], _ p: Int) -> [Int] { words.flatMap { w in (w * p)..<((w + 1) * p) } }

    /// An integer tensor's values (I32 or I64).
    static func ints(_ piece: Piece) throws -> [Int] {
        piece.storage.raw.withUnsafeBytes { raw -> [Int] in
            switch piece.dtype {
            case .i64:
                return (0..<(raw.count / 8)).map { Int(raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            default: return (0..<(raw.count / 4)).map { Int(raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
            }
        }
    }
}

/// Local positions of global indices along one dimension of a piece.
private struct Lookup {
    let local: [Int: Int]?
    let count: Int
    let what: String

    init(_ piece: Piece, _ d: Int) throws {
        guard d < piece.shape.count else {
            throw ShardKitError(.verificationFailed,
                                "tensor \(piece.name): expected \(d + 1) dimensions, got \(piece.shape)")
        }
        count = piece.shape[d]
        self.what = piece.name
        if piece.dim == d, let index = piece.index {
            var map: [Int: Int] = [:]
            for (i, g) in index.enumerated() where map[g] == nil { map[g] = i }
            local = map
        } else {
            local = nil
        }
    }

    /// The local position of global index `g`; throws when the rank does not hold it.
    subscript(_ g: Int) -> Int {
        get throws {
            if let local {
                guard let i = local[g] else {
                    throw ShardKitError(.verificationFailed, "\(what): the rank does not hold index \(g) it needs")
                }
                return i
            }
            guard g >= 0 && g < count else {
                throw ShardKitError(.verificationFailed, "\(what): index \(g) outside 0..<\(count)")
            }
            return g
        }
    }
}
