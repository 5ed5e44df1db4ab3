import Foundation
import ShardKit

/// Elementwise activations, named as in Hugging Face's ACT2FN.
enum Activation {
    case silu, geluErf, geluTanh, relu

    init(name: String) throws {
        switch name {
        case "silu", "swish": self = .silu
        case "gelu": self = .geluErf
        case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": self = .geluTanh
        case "relu": self = .relu
        default:
            throw ShardKitError(.verificationFailed,
                                "activation \"\(name)\" is not supported by the reference forward pass")
        }
    }

    func callAsFunction(_ x: Float) -> Float {
        switch self {
        case .silu: return x / (1 + Float(exp(Double(-x))))
        case .geluErf: return Float(0.5 * Double(x) * (1 + erf(Double(x) / 2.0.squareRoot())))
        case .geluTanh:
            let d = Double(x)
            return Float(0.5 * d * (1 + tanh((2 / Double.pi).squareRoot() * (d + 0.044715 * d * d * d))))
        case .relu: return max(x, 0)
        }
    }
}

enum Norm {
    /// RMSNorm of each `headDim`-wide block of a row (one head's features), with one replicated
    /// weight of `headDim` (Qwen3's and Gemma 3's q/k norms; Gemma's scale by 1 + w), or none (Llama 4's
    /// L2 norm).
    static func rmsPerHead(_ x: Act, _ w: Piece?, headDim hd: Int, eps: Double, plusOne: Bool = false,
                           rank: Int) throws -> Act {
        if let w { try checkReplicated(w, width: hd, rank: rank) }
        guard hd > 0, x.cols % hd == 0 else {
            throw ShardKitError(.verificationFailed, "rank \(rank): \(x.cols) features are not whole heads of \(hd)")
        }
        var out = x
        for i in 0..<x.rows {
            for h in stride(from: 0, to: x.cols, by: hd) {
                let base = i * x.cols + h
                var ss = 0.0
                for j in 0..<hd { let v = Double(x.data[base + j]); ss += v * v }
                let inv = Float(1 / (ss / Double(hd) + eps).squareRoot())
                for j in 0..<hd {
                    let scale: Float = w.map { plusOne ? 1 + $0.data[j] : $0.data[j] } ?? 1
                    out.data[base + j] = (x.data[base + j] * inv) * scale
                }
            }
        }
        return out
    }

    /// RMSNorm over each row: x / sqrt(mean(x²) + eps) · w (Gemma: · (1 + w)).
    static func rms(_ x: Act, _ w: Piece, eps: Double, plusOne: Bool, rank: Int) throws -> Act {
        try checkReplicated(w, width: x.cols, rank: rank)
        var out = x
        let n = x.cols
        for i in 0..<x.rows {
            var ss = 0.0
            for j in 0..<n { let v = Double(x.data[i * n + j]); ss += v * v }
            let inv = Float(1 / (ss / Double(n) + eps).squareRoot())
            for j in 0..<n {
                let scale = plusOne ? 1 + w.data[j] : w.data[j]
                out.data[i * n + j] = (x.data[i * n + j] * inv) * scale
            }
        }
        return out
    }

    /// LayerNorm over each row: (x − mean) / sqrt(var + eps) · w (+ b; Cohere's have no bias).
    static func layer(_ x: Act, _ w: Piece, _ b: Piece?, eps: Double, rank: Int) throws -> Act {
        try checkReplicated(w, width: x.cols, rank: rank)
        if let b { try checkReplicated(b, width: x.cols, rank: rank) }
        var out = x
        let n = x.cols
        for i in 0..<x.rows {
            layerRow(x.data, from: i * n, count: n, into: &out.data, eps: eps) { j in (w.data[j], b?.data[j] ?? 0) }
        }
        return out
    }

    /// LayerNorm of each `headDim`-wide block of a row with that head's own weight, no bias (Cohere's q/k
    /// norms): `w` is `[heads, headDim]` split by head, and the rank must hold the row of each head it
    /// computes.
    static func layerPerHead(_ x: Act, _ w: Piece, headDim hd: Int, eps: Double, rank: Int) throws -> Act {
        guard w.shape.count == 2, w.shape[1] == hd, w.dim != 1, hd > 0, x.cols % hd == 0 else {
            throw ShardKitError(.verificationFailed, "rank \(rank): \(w.name) must be [heads, \(hd)] split by head, "
                + "the rank holds \(w.shape) of \(w.globalShape) for \(x.cols) features")
        }
        var rowOf: [Int: Int] = [:]
        for (i, h) in w.labels(along: 0).enumerated() where h < w.globalShape[0] { rowOf[h] = i }
        var out = x
        for c in stride(from: 0, to: x.cols, by: hd) {
            let head = x.labels[c] / hd
            guard let row = rowOf[head], x.labels[c] == head * hd else {
                throw ShardKitError(.verificationFailed, "rank \(rank): \(w.name) has no weights for head \(head) "
                    + "(the rank holds heads \(describe(w.labels(along: 0))))")
            }
            for i in 0..<x.rows {
                layerRow(x.data, from: i * x.cols + c, count: hd, into: &out.data, eps: eps) {
                    (w.data[row * hd + $0], 0)
                }
            }
        }
        return out
    }

    /// Normalizes `count` values of `x` from `from` into `out` (same positions), scaled and shifted
    /// by `affine(j)` = (weight, bias) of position j.
    private static func layerRow(_ x: [Float], from o: Int, count n: Int, into out: inout [Float], eps: Double,
                                 affine: (Int) -> (Float, Float)) {
        var mean = 0.0
        for j in 0..<n { mean += Double(x[o + j]) }
        mean /= Double(n)
        var v = 0.0
        for j in 0..<n { let d = Double(x[o + j]) - mean; v += d * d }
        let inv = 1 / (v / Double(n) + eps).squareRoot()
        for j in 0..<n {
            let (w, b) = affine(j)
            out[o + j] = Float((Double(x[o + j]) - mean) * inv) * w + b
        }
    }

    static func checkReplicated(_ w: Piece, width: Int, rank: Int) throws {
        guard w.data.count == width, w.shape == w.globalShape else {
            throw ShardKitError(.verificationFailed, "rank \(rank): norm weight \(w.name) must be replicated "
                + "(\(width) values), the rank holds \(w.shape) of \(w.globalShape)")
        }
    }
}

/// Rotary position embedding over the first `dims` dimensions of each head: Hugging Face's
/// rotate_half convention (dimension i pairs with i + dims/2), or with `interleaved` GPT-J's
/// rotate_every_two (dimension 2i pairs with 2i + 1).
struct Rope {
    let dims: Int
    let cos: [[Float]], sin: [[Float]]
    /// The pairs rotated together are adjacent entries (GPT-J, GLM-4, Cohere, Llama 4) instead of the
    /// two halves.
    let interleaved: Bool
    /// The scale of cos and sin (1 unless the rope scaling sets one: YaRN, longrope).
    let attentionFactor: Float

    /// `config` supplies max_position_embeddings / original_max_position_embeddings for longrope.
    init(dims: Int, theta: Double, positions: [Int], scaling: JSONValue?, config: ModelConfig? = nil,
         interleaved: Bool = false) throws {
        guard dims % 2 == 0, dims > 0 else {
            throw ShardKitError(.verificationFailed, "rotary dimension \(dims) must be even and positive")
        }
        self.dims = dims
        self.interleaved = interleaved
        let half = dims / 2
        var inv = (0..<half).map { Float(1.0 / pow(theta, Double(2 * $0) / Double(dims))) }
        var attentionFactor: Float = 1
        if let scaling, scaling.objectValue != nil {
            var type = scaling["rope_type"]?.stringValue ?? scaling["type"]?.stringValue ?? "default"
            // Phi3Config's renaming.
            if type == "su" || type == "yarn", config?.modelType == "phi3" { type = "longrope" }
            switch type {
            case "default": break
            case "dynamic":
                // Dynamic NTK only changes inv_freq past max_position_embeddings.
                let maxPos = config?.int("max_position_embeddings") ?? Int.max
                if (positions.max() ?? 0) + 1 > maxPos {
                    throw ShardKitError(.verificationFailed,
                                        "dynamic rope scaling past max_position_embeddings is not supported")
                }
            case "longrope":
                // As transformers 4.57: the config's original_max_position_embeddings (then factor is
                // max_position_embeddings / it), else max_position_embeddings and rope_scaling's factor.
                let maxPosition = config?.int("max_position_embeddings")
                let topOriginal = config?.int("original_max_position_embeddings")
                let original = topOriginal ?? maxPosition ?? scaling["original_max_position_embeddings"]?.intValue
                guard let original, original > 0,
                      let short = scaling["short_factor"]?.arrayValue?.compactMap(\.doubleValue),
                      let long = scaling["long_factor"]?.arrayValue?.compactMap(\.doubleValue),
                      short.count == half, long.count == half else {
                    throw ShardKitError(.verificationFailed, "longrope scaling needs short_factor/long_factor of "
                        + "\(half) values and max_position_embeddings")
                }
                let factors = (positions.max() ?? 0) + 1 > original ? long : short
                inv = (0..<half).map { Float(1.0 / (factors[$0] * pow(theta, Double(2 * $0) / Double(dims)))) }
                if let a = scaling["attention_factor"]?.doubleValue {
                    attentionFactor = Float(a)
                } else {
                    let factor = topOriginal != nil
                        ? Double(maxPosition ?? original) / Double(original)
                        : scaling["factor"]?.doubleValue ?? 1
                    attentionFactor = factor <= 1 ? 1 : Float((1 + log(factor) / log(Double(original))).squareRoot())
                }
            case "linear":
                let f = Float(scaling["factor"]?.doubleValue ?? 1)
                inv = inv.map { $0 / f }
            case "yarn":
                let yarn = try Rope.yarn(dims: dims, theta: theta, scaling: scaling, config: config)
                inv = yarn.inv
                attentionFactor = yarn.attentionFactor
            case "llama3":
                let factor = scaling["factor"]?.doubleValue ?? 8
                let low = scaling["low_freq_factor"]?.doubleValue ?? 1
                let high = scaling["high_freq_factor"]?.doubleValue ?? 4
                let old = scaling["original_max_position_embeddings"]?.doubleValue ?? 8192
                let lowWave = old / low, highWave = old / high
                inv = inv.map { f in
                    let wave = 2 * Double.pi / Double(f)
                    if wave < highWave { return f }
                    if wave > lowWave { return Float(Double(f) / factor) }
                    let smooth = (old / wave - low) / (high - low)
                    return Float((1 - smooth) * Double(f) / factor + smooth * Double(f))
                }
            default:
                throw ShardKitError(.verificationFailed,
                                    "rope scaling type \"\(type)\" is not supported by the reference forward pass")
            }
        }
        self.attentionFactor = attentionFactor
        cos = positions.map { p in inv.map { Float(Foundation.cos(Double(Float(p) * $0))) * attentionFactor } }
        sin = positions.map { p in inv.map { Float(Foundation.sin(Double(Float(p) * $0))) * attentionFactor } }
    }

    /// YaRN (transformers' `_compute_yarn_parameters`): each frequency blends the original one and
    /// the one divided by `factor`, by a linear ramp between the dimensions that turn `beta_fast` and
    /// `beta_slow` times over `original_max_position_embeddings`; cos and sin are scaled by
    /// `attention_factor` (default from `factor`, `mscale`, `mscale_all_dim`).
    static func yarn(dims: Int, theta: Double, scaling: JSONValue, config: ModelConfig?) throws
        -> (inv: [Float], attentionFactor: Float) {
        let maxPosition = config?.int("max_position_embeddings")
        let original = config?.int("original_max_position_embeddings")
            ?? scaling["original_max_position_embeddings"]?.intValue ?? maxPosition
        guard let original, original > 0 else {
            throw ShardKitError(.verificationFailed, "yarn rope scaling needs original_max_position_embeddings")
        }
        let factor = scaling["factor"]?.doubleValue ?? Double(maxPosition ?? original) / Double(original)
        func mscale(_ m: Double) -> Double { factor <= 1 ? 1 : 0.1 * m * log(factor) + 1 }
        var attention = scaling["attention_factor"]?.doubleValue ?? mscale(1)
        if scaling["attention_factor"]?.doubleValue == nil, let m = scaling["mscale"]?.doubleValue,
           let all = scaling["mscale_all_dim"]?.doubleValue, m != 0, all != 0 {
            attention = mscale(m) / mscale(all)
        }
        let betaFast = scaling["beta_fast"]?.doubleValue.flatMap { $0 != 0 ? $0 : nil } ?? 32
        let betaSlow = scaling["beta_slow"]?.doubleValue.flatMap { $0 != 0 ? $0 : nil } ?? 1
        func correction(_ rotations: Double) -> Double {
            Double(dims) * log(Double(original) / (rotations * 2 * Double.pi)) / (2 * log(theta))
        }
        var low = correction(betaFast), high = correction(betaSlow)
        if scaling["truncate"]?.boolValue ?? true { low = low.rounded(.down); high = high.rounded(.up) }
        low = max(low, 0); high = min(high, Double(dims - 1))
        if low == high { high += 0.001 }
        let inv = (0..<(dims / 2)).map { i -> Float in
            let position = Float(pow(theta, Double(2 * i) / Double(dims)))
            let ramp = min(max((Float(i) - Float(low)) / Float(high - low), 0), 1)
            let extrapolation = 1 - ramp
            return 1 / (Float(factor) * position) * (1 - extrapolation) + 1 / position * extrapolation
        }
        return (inv, Float(attention))
    }

    /// Rotates the first `dims` entries of `v` (one head at token `t`) in place; `interleaved` (default:
    /// the rope's own): the pairs are adjacent entries (DeepSeek's rope_interleave) instead of the two halves.
    func apply(_ v: inout [Float], offset: Int, token t: Int, interleaved: Bool? = nil) {
        let interleaved = interleaved ?? self.interleaved
        let half = dims / 2
        for i in 0..<half {
            let (a, b) = interleaved ? (offset + 2 * i, offset + 2 * i + 1) : (offset + i, offset + i + half)
            let x1 = v[a], x2 = v[b]
            let c = cos[t][i], s = sin[t][i]
            v[a] = x1 * c - x2 * s
            v[b] = x2 * c + x1 * s
        }
    }
}

enum Attention {
    /// Scaled dot-product attention of one rank: its Q heads (labels `head·hd + d`) against the K/V heads
    /// it holds (labels `kvHead·hd + d`). Q head h uses KV head ⌊h·KV/H⌋; a rank that lacks it cannot
    /// compute (throws). Output labels are the Q labels of the rank's heads, in head order.
    /// `window`: sliding-window attention (token i sees j with i − window < j ≤ i). `softcap`: scores
    /// become cap · tanh(score / cap) (Gemma 2). `alibi`: ALiBi slopes by global head; head h's score
    /// for key j gets slope[h]·j added after scaling (BLOOM). `valueDim`: the width of a value head when
    /// it differs from the query/key head's (DeepSeek's MLA); value and output labels are
    /// `head·valueDim + d`. `sinks` (gpt-oss): one logit per query head (by global head) that joins each
    /// row's softmax and is dropped after it; the rank must hold the sink of every head it computes.
    /// `chunk` (Llama 4's chunked layers): token i sees only the tokens of its own chunk of that size.
    static func run(q: Act, k: Act, v: Act, heads: Int, kvHeads: Int, headDim hd: Int, valueDim: Int? = nil,
                    rope: Rope?, causal: Bool, window: Int? = nil, chunk: Int? = nil, softcap: Float? = nil,
                    alibi: [Float]? = nil, sinks: [Int: Float]? = nil, scale: Float, rank: Int,
                    layer: String) throws -> Act {
        let vd = valueDim ?? hd
        let T = q.rows
        guard heads % kvHeads == 0 else {
            throw ShardKitError(.verificationFailed, "\(heads) heads are not a multiple of \(kvHeads) KV heads")
        }
        let group = heads / kvHeads
        let qHeads = Array(Set(q.labels.map { $0 / hd })).sorted()
        func gather(_ a: Act, head h: Int, what: String, width: Int = hd) throws -> [Float] {
            let wanted = (0..<width).map { h * width + $0 }
            guard let s = a.select(wanted) else {
                throw ShardKitError(.verificationFailed, "rank \(rank) \(layer): needs \(what) head \(h) "
                    + "(all \(width) dims), but holds \(what) features \(describe(a.labels))")
            }
            return s.data
        }
        var outLabels: [Int] = []
        var heads_: [[Float]] = []
        var kvCache: [Int: ([Float], [Float])] = [:]
        let adjacent = rope?.interleaved ?? false
        for h in qHeads {
            var qh = try gather(q, head: h, what: "query")
            let kvh = h / group
            if kvCache[kvh] == nil {
                var kh = try gather(k, head: kvh, what: "key")
                let vh = try gather(v, head: kvh, what: "value", width: vd)
                if let rope { for t in 0..<T { rope.apply(&kh, offset: t * hd, token: t, interleaved: adjacent) } }
                kvCache[kvh] = (kh, vh)
            }
            let (kh, vh) = kvCache[kvh]!
            var sink: Float? = nil
            if let sinks {
                guard let s = sinks[h] else {
                    throw ShardKitError(.verificationFailed, "rank \(rank) \(layer): computes head \(h) but holds no "
                        + "attention sink for it (it holds the sinks of heads \(describe(sinks.keys.sorted())))")
                }
                sink = s
            }
            if let rope { for t in 0..<T { rope.apply(&qh, offset: t * hd, token: t) } }
            var out = [Float](repeating: 0, count: T * vd)
            var scores = [Float](repeating: 0, count: T)
            for i in 0..<T {
                let last = causal ? i : T - 1
                let first = max(window.map { max(0, i - $0 + 1) } ?? 0, chunk.map { i / $0 * $0 } ?? 0)
                var m = -Float.infinity
                for j in first...last {
                    var s: Float = 0
                    for d in 0..<hd { s += qh[i * hd + d] * kh[j * hd + d] }
                    scores[j] = s * scale
                    if let softcap { scores[j] = softcap * Float(tanh(Double(scores[j] / softcap))) }
                    if let alibi { scores[j] += alibi[h] * Float(j) }
                    m = max(m, scores[j])
                }
                if let sink { m = max(m, sink) }
                var sum: Float = sink.map { Float(exp(Double($0 - m))) } ?? 0
                for j in first...last { scores[j] = Float(exp(Double(scores[j] - m))); sum += scores[j] }
                for j in first...last {
                    let p = scores[j] / sum
                    for d in 0..<vd { out[i * vd + d] += p * vh[j * vd + d] }
                }
            }
            heads_.append(out)
            outLabels += (0..<vd).map { h * vd + $0 }
        }
        let n = outLabels.count
        var data = [Float](repeating: 0, count: T * n)
        for (hi, o) in heads_.enumerated() {
            for i in 0..<T { for d in 0..<vd { data[i * n + hi * vd + d] = o[i * vd + d] } }
        }
        return Act(rows: T, labels: outLabels, data: data)
    }
}

/// ALiBi slopes of `heads` heads, as transformers computes them (BLOOM's `_get_alibi_slopes`): powers of
/// 2^(−8/n) for the largest power of two n ≤ heads, then odd powers of 2^(−4/n) for the rest.
func alibiSlopes(heads: Int) -> [Float] {
    let n = 1 << (Int.bitWidth - 1 - heads.leadingZeroBitCount)
    let base = Float(pow(2, -pow(2, -(log2(Double(n)) - 3))))
    var slopes = (1...n).map { Float(pow(Double(base), Double($0))) }
    if n != heads {
        let extra = Float(pow(2, -pow(2, -(log2(Double(2 * n)) - 3))))
        let rest = min(n, heads - n)
        slopes += stride(from: 1, to: 2 * rest, by: 2).map { Float(pow(Double(extra), Double($0))) }
    }
    return slopes
}

/// Splits an activation whose labels index a fused output (e.g. [q; k; v]) into its parts, relabelled
/// by `classify(label) -> (part, label within the part)`.
/// A label outside the parts (a fused tensor larger than config.json implies) throws.
func splitParts(_ a: Act, parts: Int, classify: (Int) -> (Int, Int)) throws -> [Act] {
    var cols = [[Int]](repeating: [], count: parts), labels = [[Int]](repeating: [], count: parts)
    for (j, l) in a.labels.enumerated() {
        let (p, local) = classify(l)
        guard p >= 0 && p < parts else {
            throw ShardKitError(.verificationFailed, "fused output feature \(l) is past its \(parts) parts; "
                + "the tensor's shape disagrees with config.json")
        }
        cols[p].append(j); labels[p].append(local)
    }
    return (0..<parts).map { p in
        var data = [Float](repeating: 0, count: a.rows * cols[p].count)
        for i in 0..<a.rows {
            for (k, c) in cols[p].enumerated() { data[i * cols[p].count + k] = a.data[i * a.cols + c] }
        }
        return Act(rows: a.rows, labels: labels[p], data: data)
    }
}

/// act(gate) · up, matched by label (SwiGLU / GeGLU): gate and up must hold the same features.
/// `clamped` (gpt-oss): gate clamped above and up on both sides at `limit`, then
/// (up + 1) · gate · sigmoid(alpha · gate).
func gatedProduct(gate: Act, up: Act, act: Activation, clamped: (alpha: Float, limit: Float)? = nil, rank: Int,
                  what: String) throws -> Act {
    guard let u = up.select(gate.labels) else {
        throw ShardKitError(.verificationFailed, "rank \(rank) \(what): gate features \(describe(gate.labels)) "
            + "and up features \(describe(up.labels)) differ")
    }
    var out = gate
    if let (alpha, limit) = clamped {
        for i in 0..<out.data.count {
            let g = min(gate.data[i], limit), v = min(max(u.data[i], -limit), limit)
            out.data[i] = (v + 1) * (g / (1 + Float(exp(Double(-alpha * g)))))
        }
        return out
    }
    for i in 0..<out.data.count { out.data[i] = act(gate.data[i]) * u.data[i] }
    return out
}
