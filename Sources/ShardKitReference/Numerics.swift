import COpenBLAS
import Foundation
import ShardKit

// MARK: - Public report types

/// Options of the numerics check of `shardkit verify`.
public struct NumericsOptions: Sendable {
    /// Pass threshold on the relative error `max|a − b| / max|b|` (b = the full-weights pass) of every
    /// TP-vs-full comparison, and of the full-vs-reference comparison when all weights are stored as
    /// f32/f64. Default 1e-4: both passes compute in f32, so they differ only by summation order.
    public var tolerance: Double = 1e-4
    /// Threshold of the full-vs-reference comparison when some weight is stored in a 16- or 8-bit type
    /// (the reference may have been computed from rounded weights or in that dtype). Default 1e-3.
    public var lowPrecisionReferenceTolerance: Double = 1e-3
    /// Input token ids. nil: the reference file's `input_ids` when a reference is given, else a fixed
    /// deterministic sequence of `tokenCount` ids in `0..<vocab_size` (including 0 and vocab_size − 1).
    public var tokens: [Int]? = nil
    /// Length of the default input (without `tokens` or a reference).
    public var tokenCount = 16
    public init() {}
}

/// How close two tensors are. `maxRelError` is `max|a − b| / max|b|` (b the expected side): robust to
/// near-zero elements, unlike an element-wise ratio. `cosine` is the cosine similarity of the two
/// flattened tensors. Non-finite values (NaN/inf in the output) are reported as
/// `Double.greatestFiniteMagnitude` errors and cosine −1, and fail.
public struct ComparisonStats: Codable, Sendable, Equatable {
    public var maxAbsError: Double
    public var maxRelError: Double
    public var cosine: Double
    public var passed: Bool

    public init(maxAbsError: Double, maxRelError: Double, cosine: Double, passed: Bool) {
        self.maxAbsError = maxAbsError; self.maxRelError = maxRelError; self.cosine = cosine; self.passed = passed
    }

    /// Compares `actual` with `expected` (same length) against a relative-error `tolerance`.
    public static func compare(_ actual: [Float], _ expected: [Float], tolerance: Double) -> ComparisonStats {
        precondition(actual.count == expected.count, "compared tensors differ in size")
        var maxAbs = 0.0, maxRef = 0.0, dot = 0.0, na = 0.0, nb = 0.0
        var finite = true
        for i in 0..<actual.count {
            let a = Double(actual[i]), b = Double(expected[i])
            if !a.isFinite || !b.isFinite { finite = false; break }
            maxAbs = max(maxAbs, abs(a - b))
            maxRef = max(maxRef, abs(b))
            dot += a * b; na += a * a; nb += b * b
        }
        guard finite else {
            return ComparisonStats(maxAbsError: .greatestFiniteMagnitude, maxRelError: .greatestFiniteMagnitude, cosine: -1, passed: false)
        }
        let rel = maxAbs == 0 ? 0 : maxAbs / max(maxRef, 1e-30)
        let cosine: Double
        if na == 0 || nb == 0 { cosine = (na == 0 && nb == 0) ? 1 : 0 } else { cosine = dot / (na.squareRoot() * nb.squareRoot()) }
        return ComparisonStats(maxAbsError: maxAbs, maxRelError: rel, cosine: cosine, passed: rel <= tolerance)
    }

    /// The worse of two comparisons (largest relative error), keeping the lowest cosine.
    func worst(_ other: ComparisonStats) -> ComparisonStats {
        ComparisonStats(maxAbsError: max(maxAbsError, other.maxAbsError), maxRelError: max(maxRelError, other.maxRelError),
                        cosine: min(cosine, other.cosine), passed: passed && other.passed)
    }
}

/// One named checkpoint of the forward pass (embeddings, each layer's output, final norm; or one
/// weight for `GenericLinearCheck`), TP vs full.
public struct LayerComparison: Codable, Sendable, Equatable {
    public var name: String
    public var stats: ComparisonStats
}

/// The result of a numerics check. `passed` is false when any comparison fails; structural problems
/// (a rank missing what its heads need, shapes that cannot be combined) throw instead.
public struct NumericsReport: Codable, Sendable {
    /// config.json's model_type (or "generic" for `GenericLinearCheck` without one).
    public var architecture: String
    public var tp: Int
    /// Number of input tokens (or random input vectors for `GenericLinearCheck`).
    public var tokens: Int
    /// Full vs TP at every checkpoint of the pass; every rank's copy of replicated states is compared.
    public var layers: [LayerComparison]
    /// Full vs TP on the final output (logits, or BERT's last_hidden_state).
    public var final: ComparisonStats
    /// Full pass vs the reference file's logits / last_hidden_state, when a reference was given.
    public var reference: ComparisonStats?
    /// TP pass vs the reference, when a reference was given.
    public var referenceTP: ComparisonStats?
    /// The comparison with the largest relative error.
    public var worstLayer: String?
    public var passed: Bool
    /// Tolerances actually applied (TP vs full; vs reference).
    public var tolerance: Double
    public var referenceTolerance: Double?
    /// Floating-point operations done in `cblas_sgemm` by both passes, the time spent there, and the
    /// resulting rate (compare with `ReferenceForward.sgemmThroughput(n:)` on square matrices).
    public var gemmFlops: Double
    public var gemmSeconds: Double
    public var gemmGFLOPS: Double
    /// Wall time of the whole check.
    public var seconds: Double
}

// MARK: - Widening to f32

enum Widen {
    static let e4m3: [Float] = (0..<256).map { decodeFP8(UInt8($0), expBits: 4, manBits: 3, bias: 7, fn: true) }
    static let e5m2: [Float] = (0..<256).map { decodeFP8(UInt8($0), expBits: 5, manBits: 2, bias: 15, fn: false) }

    static func decodeFP8(_ b: UInt8, expBits: Int, manBits: Int, bias: Int, fn: Bool) -> Float {
        let sign: Float = (b & 0x80) != 0 ? -1 : 1
        let e = Int((b >> UInt8(manBits)) & UInt8((1 << expBits) - 1))
        let m = Int(b & UInt8((1 << manBits) - 1))
        let maxE = (1 << expBits) - 1
        if fn {
            if e == maxE && m == (1 << manBits) - 1 { return .nan }    // E4M3FN: only S.1111.111 is NaN, no inf
        } else if e == maxE {
            return m == 0 ? sign * .infinity : .nan
        }
        let frac = Float(m) / Float(1 << manBits)
        if e == 0 { return sign * frac * Float(pow(2.0, Double(1 - bias))) }
        return sign * (1 + frac) * Float(pow(2.0, Double(e - bias)))
    }

    /// `count` elements of `dtype` at `bytes`, widened to f32 (bf16: bits << 16; f16 via Float16;
    /// fp8 via tables; f64 narrowed).
    static func canWiden(_ dtype: DType) -> Bool {
        [.f32, .bf16, .f16, .f64, .f8e4m3, .f8e5m2, .f8e8m0].contains(dtype)
    }

    static func toFloat(_ bytes: UnsafeRawBufferPointer, dtype: DType, count: Int, name: String) throws -> [Float] {
        if count == 0 { return [] }
        return try [Float](unsafeUninitializedCapacity: count) { out, n in
            try toFloat(bytes, dtype: dtype, count: count, into: out.baseAddress!, name: name)
            n = count
        }
    }

    /// Widens `count` elements of `dtype` from `bytes` into `out`.
    static func toFloat(_ bytes: UnsafeRawBufferPointer, dtype: DType, count: Int, into out: UnsafeMutablePointer<Float>, name: String) throws {
        guard bytes.count == count * dtype.size else {
            throw ShardKitError(.verificationFailed, "tensor \(name): \(bytes.count) bytes for \(count) \(dtype.rawValue) elements")
        }
        if count == 0 { return }
        do {
            let p = bytes.baseAddress!
            switch dtype {
            case .f32:
                memcpy(out, p, count * 4)
            case .bf16:
                for i in 0..<count { out[i] = Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) }
            case .f16:
                for i in 0..<count { out[i] = Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            case .f64:
                for i in 0..<count { out[i] = Float(p.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
            case .f8e4m3:
                let t = e4m3
                for i in 0..<count { out[i] = t[Int(p.load(fromByteOffset: i, as: UInt8.self))] }
            case .f8e5m2:
                let t = e5m2
                for i in 0..<count { out[i] = t[Int(p.load(fromByteOffset: i, as: UInt8.self))] }
            case .f8e8m0:
                for i in 0..<count {
                    let b = p.load(fromByteOffset: i, as: UInt8.self)
                    out[i] = b == 0xFF ? .nan : Float(pow(2.0, Double(Int(b) - 127)))
                }
            default:
                throw ShardKitError(.verificationFailed, "tensor \(name): dtype \(dtype.rawValue) is not a floating-point type the reference forward pass can read")
            }
        }
    }

    /// `x` rounded to `dtype` and back (the precision a model running in that dtype computes with).
    static func round(_ x: Float, to dtype: DType) -> Float {
        switch dtype {
        case .bf16:
            let bits = x.bitPattern
            let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)      // round to nearest even
            return Float(bitPattern: rounded & 0xFFFF_0000)
        case .f16: return Float(Float16(x))
        default: return x
        }
    }
}

// MARK: - GEMM with accounting

/// Runs `cblas_sgemm` and counts its flops and time.
final class GemmEngine {
    var flops = 0.0
    var seconds = 0.0

    /// C[m×n] = A[m×k] · op(B), all row-major; `transB`: B is stored [n×k] (an `[out, in]` weight).
    func multiply(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, transB: Bool,
                  c: UnsafeMutablePointer<Float>) {
        if m == 0 || n == 0 { return }
        if k == 0 { c.initialize(repeating: 0, count: m * n); return }
        sgemm(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: transB ? k : n, transB: transB, beta: 0, c: c, ldc: n)
    }

    /// Elements of B widened per tile (4 MiB of f32): stays in cache between widening and the product,
    /// and is large enough that each cblas_sgemm call is worth its overhead.
    static let tileElements = 1024 * 1024
    private var tile: [Float] = []

    /// C = A · op(B) with B as stored (any float dtype). An f32 B is used in place; otherwise B is
    /// widened a cache-sized tile of whole rows at a time and each tile multiplied at once, so the f32
    /// copy of a large weight never goes through main memory. The tiles are rows of B as stored:
    /// output features of an `[n×k]` B (`transB`, each tile fills some columns of C), input features
    /// of a `[k×n]` B (each tile adds its share to all of C).
    func multiply(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: PieceStorage, transB: Bool,
                  c: UnsafeMutablePointer<Float>) {
        precondition(b.count == n * k, "weight \(b.name) has \(b.count) elements, expected \(n) × \(k)")
        if b.dtype == .f32 {
            b.raw.withUnsafeBytes { multiply(m: m, n: n, k: k, a: a, b: $0.baseAddress!.assumingMemoryBound(to: Float.self), transB: transB, c: c) }
            return
        }
        if m == 0 || n == 0 { return }
        if k == 0 { c.initialize(repeating: 0, count: m * n); return }
        let rowLength = transB ? k : n, rowCount = transB ? n : k
        let rowsPerTile = max(1, GemmEngine.tileElements / rowLength)
        if tile.count < rowsPerTile * rowLength { tile = [Float](repeating: 0, count: rowsPerTile * rowLength) }
        tile.withUnsafeMutableBufferPointer { t in
            var row = 0
            while row < rowCount {
                let rows = min(rowsPerTile, rowCount - row)
                b.widen(from: row * rowLength, count: rows * rowLength, into: t.baseAddress!)
                if transB {
                    sgemm(m: m, n: rows, k: k, a: a, lda: k, b: t.baseAddress!, ldb: k, transB: true, beta: 0, c: c + row, ldc: n)
                } else {
                    sgemm(m: m, n: n, k: rows, a: a + row, lda: k, b: t.baseAddress!, ldb: n, transB: false,
                          beta: row == 0 ? 0 : 1, c: c, ldc: n)
                }
                row += rows
            }
        }
    }

    /// One timed `cblas_sgemm`: C = A · op(B) + beta · C, row-major.
    private func sgemm(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                       transB: Bool, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let start = ContinuousClock.now
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    1, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
        seconds += start.duration(to: .now).seconds
        flops += 2 * Double(m) * Double(n) * Double(k)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

extension ReferenceForward {
    /// GFLOP/s of `cblas_sgemm` on square n×n f32 matrices on this machine (best of a few runs), the
    /// yardstick for the forward pass's `gemmGFLOPS`.
    public static func sgemmThroughput(n: Int) -> Double {
        precondition(n > 0)
        let a = (0..<(n * n)).map { Float(($0 * 7919) % 1013) / 1013 - 0.5 }
        let b = (0..<(n * n)).map { Float(($0 * 104729) % 997) / 997 - 0.5 }
        var c = [Float](repeating: 0, count: n * n)
        let flops = 2 * Double(n) * Double(n) * Double(n)
        var best = Double.infinity
        var runs = 0
        let deadline = ContinuousClock.now + .seconds(2)
        repeat {
            let t0 = ContinuousClock.now
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1, a, Int32(n), b, Int32(n), 0, &c, Int32(n))
            best = min(best, t0.duration(to: .now).seconds)
            runs += 1
        } while runs < 3 || (runs < 20 && ContinuousClock.now < deadline)
        return flops / max(best, 1e-12) / 1e9
    }
}
