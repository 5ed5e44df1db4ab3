import Foundation
import ShardKit

/// Numerics for architectures without a reference forward pass (user rules, issue 6 item 5): every
/// split weight is checked as a linear map. For a 2-D weight W and random inputs X, `y_full = X·Wᵀ`
/// (over W's input features) is compared with the ranks' products combined by the collective the rule
/// implies:
/// - column / heads / kv_heads / fused / vocab split output features along `rule.dim`: each rank's
///   product is all-gathered by the manifest's intervals (vocab padding dropped; a KV head replicated
///   on several ranks is compared on every rank that holds it);
/// - row / out_projection split input features along `rule.dim`: each rank multiplies its input slice,
///   the partial sums are all-reduced.
/// Which dimension is "output features" follows the rule, so GPT-2-style `[in, out]` weights work.
/// Split 1-D tensors (biases) are all-gathered and compared with the full tensor; replicated tensors
/// and tensors of rank > 2 are not checked.
public enum GenericLinearCheck {
    /// Number of random input vectors per weight.
    static let vectors = 4

    public static func verify(shards: ShardSet, full: Checkpoint?, options: NumericsOptions) throws -> NumericsReport {
        try GemmEngine.withSingleThreadedBLAS { try run(shards: shards, full: full, options: options) }
    }

    private static func run(shards: ShardSet, full: Checkpoint?, options: NumericsOptions) throws -> NumericsReport {
        let start = ContinuousClock.now
        let fullW: WeightProvider = try full.map { try CheckpointWeights($0) } ?? ReassembledWeights(shards)
        let ctx = TPContext(weights: try RankWeights(shards), gemm: GemmEngine())
        let layers = try check(shards: shards, names: shards.manifest.order, full: fullW, ctx: ctx,
                               tolerance: options.tolerance)
        guard !layers.isEmpty else {
            throw ShardKitError(.verificationFailed,
                                "\(shards.directory): no split floating-point tensor of rank 1 or 2 to check")
        }
        let worst = layers.max { $0.stats.maxRelError < $1.stats.maxRelError }!
        var final = layers[0].stats
        for l in layers.dropFirst() { final = final.worst(l.stats) }
        let config = full?.config
        return NumericsReport(architecture: config?.modelType ?? shards.manifest.source.modelType ?? "generic",
                              tp: shards.tp, tokens: vectors, layers: layers, final: final, reference: nil,
                              referenceTP: nil, worstLayer: worst.name, passed: final.passed,
                              tolerance: options.tolerance, referenceTolerance: nil,
                              gemmFlops: ctx.gemm.flops, gemmWorkers: ctx.gemm.workers,
                              gemmSeconds: ctx.gemm.secondsPerWorker,
                              gemmGFLOPS: ctx.gemm.gflops, productGFLOPS: ctx.gemm.productGFLOPS,
                              seconds: start.duration(to: .now).seconds)
    }

    /// Checks each split floating-point tensor of rank 1 or 2 among `names` (others are skipped);
    /// one comparison per tensor. `ctx` holds the ranks' weights.
    static func check(shards: ShardSet, names: [String], full fullW: WeightProvider, ctx: TPContext,
                      tolerance tol: Double) throws -> [LayerComparison] {
        guard let ranks = ctx.weights as? RankWeights else { preconditionFailure("the TP context holds the ranks") }
        let position = Dictionary(uniqueKeysWithValues: shards.manifest.order.enumerated().map { ($1, $0) })
        var layers: [LayerComparison] = []
        for name in names {
            guard let t = shards.manifest.tensors[name], let index = position[name] else { continue }
            guard let d = t.rule.dim, t.dtype.isFloatingPoint, t.shape.count <= 2,
                  t.shape.allSatisfy({ $0 > 0 }) else { continue }
            guard fullW.has(name) else {
                throw ShardKitError(.verificationFailed, "the full checkpoint has no tensor \(name)")
            }
            let w = try fullW.load(name, rank: 0)
            guard w.shape == t.shape else {
                throw ShardKitError(.verificationFailed, "tensor \(name): the full checkpoint has shape \(w.shape), "
                    + "the manifest \(t.shape)")
            }
            var got: [Float] = [], want: [Float] = []
            if t.shape.count == 1 {
                let pieces = try ranks.loadCopy(name)
                let acts = pieces.map { Act(rows: 1, labels: $0.labels(along: 0), data: $0.data) }
                let gathered = try ctx.allGather(acts, size: t.shape[0], what: name)
                got = gathered[0].data; want = w.data
                appendDuplicates(acts, full: w.data, size: t.shape[0], got: &got, want: &want)
            } else {
                let outDim = t.rule.splitsInputFeatures ? 1 - d : d, inDim = 1 - outDim
                let nIn = t.shape[inDim], nOut = t.shape[outDim]
                var rng = UInt64(0x9E37_79B9_7F4A_7C15) &+ UInt64(index)
                let x = Act(rows: vectors, labels: Array(0..<nIn), data: (0..<(vectors * nIn)).map { _ in
                    rng = rng &* 6364136223846793005 &+ 1442695040888963407
                    return Float(Int(rng >> 40) % 2001 - 1000) / 1000
                })
                let conv = outDim == 1
                let (yFull, _) = try ctx.linear(x, w, bias: nil, conv1D: conv, rank: 0)
                var outs: [Act] = [], partial: [Bool] = []
                for (r, p) in try ranks.loadCopy(name).enumerated() {
                    let (y, isPartial) = try ctx.linear(x, p, bias: nil, conv1D: conv, rank: r)
                    outs.append(y); partial.append(isPartial)
                }
                if t.rule.splitsInputFeatures {
                    let reduced = try ctx.combine(outs, partial: partial, what: name)
                    got = reduced[0].data
                } else {
                    got = try ctx.allGather(outs, size: nOut, what: name)[0].data
                    want = yFull.data
                    appendDuplicates(outs, full: yFull.data, size: nOut, got: &got, want: &want)
                }
                if want.isEmpty { want = yFull.data }
            }
            layers.append(LayerComparison(name: name, stats: ComparisonStats.compare(got, want, tolerance: tol)))
        }
        return layers
    }

    /// Second and later copies of a feature (a KV head replicated on several ranks) are compared too.
    static func appendDuplicates(_ outs: [Act], full: [Float], size: Int, got: inout [Float], want: inout [Float]) {
        var seen = [Bool](repeating: false, count: size)
        for o in outs {
            for (j, l) in o.labels.enumerated() where l < size {
                if seen[l] {
                    for i in 0..<o.rows { got.append(o.data[i * o.cols + j]); want.append(full[i * size + l]) }
                }
                seen[l] = true
            }
        }
    }
}
