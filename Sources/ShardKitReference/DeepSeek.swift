import Foundation
import ShardKit

// MARK: DeepSeek-V3

extension Model {
    /// DeepSeek-V3 (transformers' modeling_deepseek_v3, defaults of its DeepseekV3Config): multi-head
    /// latent attention, then a dense MLP (the first `first_k_dense_replace` layers) or routed experts
    /// plus shared experts. Layers past num_hidden_layers (multi-token prediction) are not run.
    func deepseekV3(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        let T = tokens.count
        func need(_ key: String) throws -> Int {
            guard let v = config.int(key), v > 0 else { throw Model.configError(config, "missing or invalid \(key)") }
            return v
        }
        let mla = MLA(nope: try need("qk_nope_head_dim"), rope: try need("qk_rope_head_dim"),
                      value: try need("v_head_dim"), latent: try need("kv_lora_rank"),
                      interleaved: config.bool("rope_interleave") ?? true)
        guard mla.rope % 2 == 0 else { throw Model.configError(config, "qk_rope_head_dim \(mla.rope) is odd") }
        let rotary = config.rotary()
        let legacy = config.json["rope_scaling"].flatMap { $0.objectValue != nil ? $0 : nil }
        let scaling = legacy ?? config.ropeParameters()
        let rope = try Rope(dims: mla.rope, theta: rotary.theta, positions: Array(0..<T), scaling: scaling,
                            config: config)
        // With a scaled rope and mscale_all_dim, the softmax scale grows by (0.1 · mscale_all_dim · ln factor + 1)².
        var scale = Float(1 / Double(mla.qk).squareRoot())
        let ropeType = scaling?["rope_type"]?.stringValue ?? scaling?["type"]?.stringValue ?? "default"
        if ropeType != "default", let all = scaling?["mscale_all_dim"]?.doubleValue, all != 0,
           let factor = scaling?["factor"]?.doubleValue, factor > 1 {
            let m = Float(0.1 * all * log(factor) + 1)
            scale *= m * m
        }
        let act = try activation
        let denseLayers = config.int("first_k_dense_replace") ?? 3
        let embedName = "model.embed_tokens.weight"
        var h = try ctx.embed(tokens, table: embedName)
        try observe("embeddings", h)
        for i in 0..<layers {
            let p = "model.layers.\(i)."
            let x = try rmsAll(ctx, h, p + "input_layernorm.weight")
            let a = try latentAttention(ctx, x, prefix: p + "self_attn.", mla: mla, rope: rope, scale: scale, layer: i)
            try add(&h, try ctx.row(a, weight: p + "self_attn.o_proj.weight", bias: p + "self_attn.o_proj.bias"),
                    p + "self_attn.o_proj")
            let x2 = try rmsAll(ctx, h, p + "post_attention_layernorm.weight")
            var m: [Act]
            if i < denseLayers {
                m = try gatedMLP(ctx, x2, prefix: p + "mlp.", act: act)
            } else {
                let routing = Routing.grouped(bias: p + "mlp.gate.e_score_correction_bias",
                                              groups: config.int("n_group") ?? 8,
                                              topGroups: config.int("topk_group") ?? 4,
                                              normalize: config.bool("norm_topk_prob") ?? true,
                                              scale: Float(config.double("routed_scaling_factor") ?? 2.5))
                m = try moe(ctx, x2, prefix: p + "mlp.", act: act, experts: ("gate_proj", "up_proj", "down_proj"),
                            routing: routing)
                if (config.int("n_shared_experts") ?? 1) > 0 {
                    try add(&m, try gatedMLP(ctx, x2, prefix: p + "mlp.shared_experts.", act: act),
                            p + "mlp.shared_experts")
                }
            }
            try add(&h, m, p + "mlp")
            try observe("layers.\(i)", h)
        }
        h = try rmsAll(ctx, h, "model.norm.weight")
        try observe("final_norm", h)
        return try lmHead(ctx, h, weight: ctx.weights.has("lm_head.weight") ? "lm_head.weight" : embedName)
    }

    /// The head dimensions of multi-head latent attention.
    struct MLA {
        /// Per head: q/k features without rope, q/k features with rope, value features.
        let nope: Int, rope: Int, value: Int
        /// Width of the compressed kv latent (kv_a_proj_with_mqa yields it, then the shared rope key).
        let latent: Int
        /// DeepSeek's rope_interleave: rotated pairs are adjacent features.
        let interleaved: Bool
        var qk: Int { nope + rope }
    }

    /// MLA of every rank: the q latent (q_a_proj, normalized, or none with q_proj) and the kv latent are
    /// whole on every rank; q_b_proj / q_proj give the rank's heads (qk features each), kv_b_proj each
    /// head's k_nope then v rows; every head's key ends with the one rope key of kv_a_proj_with_mqa.
    /// Returns per rank the attention output of its heads (labels `head·value + d`).
    func latentAttention(_ ctx: TPContext, _ x: [Act], prefix a: String, mla: MLA, rope: Rope, scale: Float,
                         layer i: Int) throws -> [Act] {
        let T = x[0].rows
        func whole(_ y: [Act], _ weight: String, _ width: Int) throws -> [Act] {
            for (r, v) in y.enumerated() where v.labels != Array(0..<width) {
                throw Model.rankError(r, "\(weight) must be replicated: every rank needs all \(width) latent "
                    + "features, it computes \(describe(v.labels))")
            }
            return y
        }
        var q: [Act]
        if ctx.weights.has(a + "q_a_proj.weight") {
            let rank = ctx.weights.globalShape(a + "q_a_proj.weight")?.first ?? 0
            let qa = try whole(try ctx.column(x, weight: a + "q_a_proj.weight", bias: a + "q_a_proj.bias"),
                               a + "q_a_proj.weight", rank)
            let normed = try rmsAll(ctx, qa, a + "q_a_layernorm.weight")
            q = try ctx.column(normed, weight: a + "q_b_proj.weight", bias: nil)
        } else {
            q = try ctx.column(x, weight: a + "q_proj.weight", bias: nil)
        }
        let ckv = try whole(try ctx.column(x, weight: a + "kv_a_proj_with_mqa.weight",
                                           bias: a + "kv_a_proj_with_mqa.bias"),
                            a + "kv_a_proj_with_mqa.weight", mla.latent + mla.rope)
        let parts = try ckv.map { c in
            try splitParts(c, parts: 2) { l in l < mla.latent ? (0, l) : (1, l - mla.latent) }
        }
        let latent = try rmsAll(ctx, parts.map { $0[0] }, a + "kv_a_layernorm.weight")
        let kv = try ctx.column(latent, weight: a + "kv_b_proj.weight", bias: nil)
        let kvWidth = mla.nope + mla.value
        return try (0..<ctx.G).map { r in
            // The rope key, shared by every head.
            var kRot = parts[r][1].data
            for t in 0..<T { rope.apply(&kRot, offset: t * mla.rope, token: t, interleaved: mla.interleaved) }
            let heads = Array(Set(q[r].labels.map { $0 / mla.qk })).sorted()
            let n = heads.count
            var qd = [Float](repeating: 0, count: T * n * mla.qk), kd = qd
            var vd = [Float](repeating: 0, count: T * n * mla.value)
            for (j, head) in heads.enumerated() {
                guard let qh = q[r].select((0..<mla.qk).map { head * mla.qk + $0 }) else {
                    throw Model.rankError(r, "layer \(i): holds part of query head \(head) (\(describe(q[r].labels)))")
                }
                guard let kvh = kv[r].select((0..<kvWidth).map { head * kvWidth + $0 }) else {
                    throw Model.rankError(r, "layer \(i): \(a)kv_b_proj.weight must hold query head \(head)'s rows "
                        + "whole (\(mla.nope) of k, then \(mla.value) of v); the rank holds \(describe(kv[r].labels))")
                }
                for t in 0..<T {
                    let o = (t * n + j) * mla.qk
                    for d in 0..<mla.qk { qd[o + d] = qh.data[t * mla.qk + d] }
                    rope.apply(&qd, offset: o + mla.nope, token: t, interleaved: mla.interleaved)
                    for d in 0..<mla.nope { kd[o + d] = kvh.data[t * kvWidth + d] }
                    for d in 0..<mla.rope { kd[o + mla.nope + d] = kRot[t * mla.rope + d] }
                    for d in 0..<mla.value { vd[(t * n + j) * mla.value + d] = kvh.data[t * kvWidth + mla.nope + d] }
                }
            }
            let qkLabels = heads.flatMap { h in (0..<mla.qk).map { h * mla.qk + $0 } }
            let vLabels = heads.flatMap { h in (0..<mla.value).map { h * mla.value + $0 } }
            return try Attention.run(q: Act(rows: T, labels: qkLabels, data: qd),
                                     k: Act(rows: T, labels: qkLabels, data: kd),
                                     v: Act(rows: T, labels: vLabels, data: vd), heads: self.heads, kvHeads: self.heads,
                                     headDim: mla.qk, valueDim: mla.value, rope: nil, causal: true, scale: scale,
                                     rank: r, layer: "layer \(i)")
        }
    }
}
