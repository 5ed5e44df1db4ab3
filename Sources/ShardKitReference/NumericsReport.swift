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
            return ComparisonStats(maxAbsError: .greatestFiniteMagnitude, maxRelError: .greatestFiniteMagnitude,
                                   cosine: -1, passed: false)
        }
        let rel = maxAbs == 0 ? 0 : maxAbs / max(maxRef, 1e-30)
        let cosine: Double
        if na == 0 || nb == 0 {
            cosine = (na == 0 && nb == 0) ? 1 : 0
        } else {
            cosine = dot / (na.squareRoot() * nb.squareRoot())
        }
        return ComparisonStats(maxAbsError: maxAbs, maxRelError: rel, cosine: cosine, passed: rel <= tolerance)
    }

    /// The worse of two comparisons (largest relative error), keeping the lowest cosine.
    func worst(_ other: ComparisonStats) -> ComparisonStats {
        ComparisonStats(maxAbsError: max(maxAbsError, other.maxAbsError),
                        maxRelError: max(maxRelError, other.maxRelError),
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
    /// Floating-point operations done in `cblas_sgemm` by both passes.
    public var gemmFlops: Double
    /// Threads that ran the products, each calling single-threaded `cblas_sgemm`.
    public var gemmWorkers: Int
    /// Seconds inside `cblas_sgemm` per worker (summed over workers, divided by their number).
    public var gemmSeconds: Double
    /// The sgemm rate with every worker running products, `gemmFlops / gemmSeconds`: compare with
    /// `ReferenceForward.sgemmThroughput(n:)`, square matrices on the same cores.
    public var gemmGFLOPS: Double
    /// The products' rate per wall second including widening weights to f32 and gathering outputs.
    public var productGFLOPS: Double
    /// Wall time of the whole check.
    public var seconds: Double
    /// Pipeline stages and EP groups of the shard set (1 and 1 for plain TP).
    public var pp: Int = 1
    public var ep: Int = 1
    /// Per pipeline stage (for a set with stages or EP): the stage's ranks and layers and the worst
    /// full-vs-TP comparison among the states it computed (the last one is what it hands on).
    public var stages: [StageComparison]? = nil
}

/// One pipeline stage's part of the TP pass.
public struct StageComparison: Codable, Sendable, Equatable {
    public var stage: Int
    /// World ranks of the stage.
    public var ranks: [Int]
    /// Decoder layers it ran, `[start, end)`.
    public var layers: [Int]
    /// The states it computed, in order (embeddings, layers.N, final_norm, …).
    public var checkpoints: [String]
    public var worst: ComparisonStats
}

