import Foundation
import ShardKit

/// Falcon, BLOOM, GPT-J, OPT and Phi-1/2: LayerNorm decoders with fused or plain attention projections,
/// each following its transformers `modeling_*.py`.
extension Model {
    /// A two-layer MLP: column-parallel `up` (weight and bias), the activation, row-parallel `down`.
    func denseMLP(_ ctx: TPContext, _ x: [Act], up: String, down: String, act: Activation) throws -> [Act] {
        var f = try ctx.column(x, weight: up + ".weight", bias: up + ".bias")
        for r in 0..<f.count { for j in 0..<f[r].data.count { f[r].data[j] = act(f[r].data[j]) } }
        return try ctx.row(f, weight: down + ".weight", bias: down + ".bias")
    }

    /// Splits each rank's fused projection output into q, k and v by `classify` (see `splitParts`).
    func splitQKV(_ fused: [Act], _ classify: (Int) -> (Int, Int)) throws -> (q: [Act], k: [Act], v: [Act]) {
        var q: [Act] = [], k: [Act] = [], v: [Act] = []
        for a in fused {
            let parts = try splitParts(a, parts: 3, classify: classify)
            q.append(parts[0]); k.append(parts[1]); v.append(parts[2])
        }
        return (q, k, v)
    }

    /// The first of `candidates` (name prefixes such as "transformer.") under which the checkpoint has
    /// `name`; the last when none has it.
    func prefix(_ ctx: TPContext, of name: String, _ candidates: [String]) -> String {
        candidates.first { ctx.weights.has($0 + name) } ?? candidates.last ?? ""
    }

    // MARK: Falcon

    func falcon(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        if config.bool("alibi") == true {
            throw Model.configError(config, "Falcon with alibi has no reference pass (only rotary)")
        }
        let pre = prefix(ctx, of: "word_embeddings.weight", ["transformer.", ""])
        let T = tokens.count, hd = headDim, H = heads
        let layout = Architectures.FalconQKV(config)
        let kv = layout.kvHeads(heads: H)
        guard kv > 0, H % kv == 0 else {
            throw Model.configError(config, "\(H) heads are not a multiple of \(kv) KV groups")
        }
        let newArch = config.bool("new_decoder_architecture") ?? false
        // The new architecture always runs attention and MLP side by side, by default with two norms.
        let parallel = newArch || config.bool("parallel_attn") ?? true
        let twoNorms = newArch && (config.int("num_ln_in_parallel_attn") ?? 2) == 2
        var h = try ctx.embed(tokens, table: pre + "word_embeddings.weight")
        try observe("embeddings", h)
        let rope = try self.rope(Array(0..<T), config.rotary(), factor: 1)
        let act = try activation
        let scale = Float(1 / Double(hd).squareRoot())
        let perGroup = H / kv
        for i in 0..<layers {
            let p = pre + "h.\(i)."
            let x = try layerNormAll(ctx, h, p + (twoNorms ? "ln_attn" : "input_layernorm"))
            let fused = try ctx.column(x, weight: p + "self_attention.query_key_value.weight",
                                       bias: p + "self_attention.query_key_value.bias")
            let (q, k, v) = try splitQKV(fused) { l in
                switch layout {
                case .grouped:
                    // [kv, perGroup + 2, hd]
                    let g = l / ((perGroup + 2) * hd), slot = (l / hd) % (perGroup + 2), d = l % hd
                    return slot < perGroup ? (0, (g * perGroup + slot) * hd + d) : (slot - perGroup + 1, g * hd + d)
                case .multiQuery:
                    // [H + 2, hd]
                    return l < H * hd ? (0, l) : (l / hd - H + 1, l % hd)
                case .perHead:
                    return ((l % (3 * hd)) / hd, (l / (3 * hd)) * hd + l % hd)
                }
            }
            let a = try attention(q, k, v, kvHeads: kv, rope: rope, causal: true, scale: scale, layer: "layer \(i)")
            let attn = try ctx.row(a, weight: p + "self_attention.dense.weight", bias: p + "self_attention.dense.bias")
            let up = p + "mlp.dense_h_to_4h", down = p + "mlp.dense_4h_to_h"
            if parallel {
                let y = twoNorms ? try layerNormAll(ctx, h, p + "ln_mlp") : x
                var m = try denseMLP(ctx, y, up: up, down: down, act: act)
                try add(&m, attn, p + "self_attention.dense")
                try add(&m, h, p + "residual")
                h = m
            } else {
                var r = attn
                try add(&r, h, p + "residual")
                var m = try denseMLP(ctx, try layerNormAll(ctx, r, p + "post_attention_layernorm"),
                                     up: up, down: down, act: act)
                try add(&m, r, p + "mlp")
                h = m
            }
            try observe("layers.\(i)", h)
        }
        return try finalNormAndHead(ctx, h, norm: pre + "ln_f", tied: pre + "word_embeddings.weight", observe)
    }

    // MARK: BLOOM

    func bloom(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        let pre = prefix(ctx, of: "word_embeddings.weight", ["transformer.", ""])
        let hd = headDim
        var h = try ctx.embed(tokens, table: pre + "word_embeddings.weight")
        h = try layerNormAll(ctx, h, pre + "word_embeddings_layernorm")
        try observe("embeddings", h)
        // Slopes of the model's heads: a rank's heads keep their global slopes.
        let slopes = alibiSlopes(heads: heads)
        let act = try activation
        let postNormResidual = config.bool("apply_residual_connection_post_layernorm") ?? false
        let scale = Float(1 / Double(hd).squareRoot())
        for i in 0..<layers {
            let p = pre + "h.\(i)."
            let x = try layerNormAll(ctx, h, p + "input_layernorm")
            let fused = try ctx.column(x, weight: p + "self_attention.query_key_value.weight",
                                       bias: p + "self_attention.query_key_value.bias")
            // [heads, 3, hd] interleaved.
            let (q, k, v) = try splitQKV(fused) { l in ((l % (3 * hd)) / hd, (l / (3 * hd)) * hd + l % hd) }
            let a = try attention(q, k, v, kvHeads: heads, rope: nil, causal: true, alibi: slopes, scale: scale,
                                  layer: "layer \(i)")
            var o = try ctx.row(a, weight: p + "self_attention.dense.weight", bias: p + "self_attention.dense.bias")
            try add(&o, postNormResidual ? x : h, p + "self_attention.dense")
            let x2 = try layerNormAll(ctx, o, p + "post_attention_layernorm")
            var m = try denseMLP(ctx, x2, up: p + "mlp.dense_h_to_4h", down: p + "mlp.dense_4h_to_h", act: act)
            try add(&m, postNormResidual ? x2 : o, p + "mlp")
            h = m
            try observe("layers.\(i)", h)
        }
        return try finalNormAndHead(ctx, h, norm: pre + "ln_f", tied: pre + "word_embeddings.weight", observe)
    }

    // MARK: GPT-J

    func gptJ(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        let T = tokens.count
        var h = try ctx.embed(tokens, table: "transformer.wte.weight")
        try observe("embeddings", h)
        // GPT-J rotates rotary_dim (transformers' default 64) dimensions of each head in interleaved
        // pairs, base 10000.
        let rope = try Rope(dims: config.int("rotary_dim") ?? min(64, headDim), theta: 10000,
                            positions: Array(0..<T), scaling: nil, interleaved: true)
        let act = try activation
        let scale = Float(1 / Double(headDim).squareRoot())
        for i in 0..<layers {
            let p = "transformer.h.\(i)."
            let x = try layerNormAll(ctx, h, p + "ln_1")
            let q = try ctx.column(x, weight: p + "attn.q_proj.weight", bias: nil)
            let k = try ctx.column(x, weight: p + "attn.k_proj.weight", bias: nil)
            let v = try ctx.column(x, weight: p + "attn.v_proj.weight", bias: nil)
            let a = try attention(q, k, v, kvHeads: heads, rope: rope, causal: true, scale: scale, layer: "layer \(i)")
            let attn = try ctx.row(a, weight: p + "attn.out_proj.weight", bias: nil)
            var m = try denseMLP(ctx, x, up: p + "mlp.fc_in", down: p + "mlp.fc_out", act: act)
            try add(&m, attn, p + "attn.out_proj")
            try add(&m, h, p + "residual")
            h = m
            try observe("layers.\(i)", h)
        }
        h = try layerNormAll(ctx, h, "transformer.ln_f")
        try observe("final_norm", h)
        return try lmHead(ctx, h, weight: "lm_head.weight", bias: "lm_head.bias")
    }

    // MARK: OPT

    func opt(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        let d = prefix(ctx, of: "embed_tokens.weight", ["model.decoder.", "decoder."])
        if config.bool("layer_norm_elementwise_affine") == false {
            throw Model.configError(config, "OPT without LayerNorm weights has no reference pass")
        }
        let T = tokens.count
        var h = try ctx.embed(tokens, table: d + "embed_tokens.weight")
        // With word_embed_proj_dim ≠ hidden_size, replicated projections into and out of the hidden size.
        let projected = ctx.weights.has(d + "project_in.weight")
        if projected { h = try ctx.column(h, weight: d + "project_in.weight", bias: nil) }
        // Learned positions, offset by 2.
        try ctx.addRows(&h, table: d + "embed_positions.weight", ids: (0..<T).map { $0 + 2 })
        try observe("embeddings", h)
        let before = config.bool("do_layer_norm_before") ?? true
        let act = try activation
        let scale = Float(1 / Double(headDim).squareRoot())
        for i in 0..<layers {
            let p = d + "layers.\(i)."
            let attnNorm = p + "self_attn_layer_norm", mlpNorm = p + "final_layer_norm"
            let x = before ? try layerNormAll(ctx, h, attnNorm) : h
            func proj(_ name: String) throws -> [Act] {
                try ctx.column(x, weight: p + "self_attn.\(name).weight", bias: p + "self_attn.\(name).bias")
            }
            let a = try attention(try proj("q_proj"), try proj("k_proj"), try proj("v_proj"), kvHeads: heads,
                                  rope: nil, causal: true, scale: scale, layer: "layer \(i)")
            var o = try ctx.row(a, weight: p + "self_attn.out_proj.weight", bias: p + "self_attn.out_proj.bias")
            try add(&o, h, p + "self_attn.out_proj")
            h = before ? o : try layerNormAll(ctx, o, attnNorm)
            let x2 = before ? try layerNormAll(ctx, h, mlpNorm) : h
            var m = try denseMLP(ctx, x2, up: p + "fc1", down: p + "fc2", act: act)
            try add(&m, h, p + "fc2")
            h = before ? m : try layerNormAll(ctx, m, mlpNorm)
            try observe("layers.\(i)", h)
        }
        // transformers builds the final norm only with do_layer_norm_before.
        if ctx.weights.has(d + "final_layer_norm.weight") { h = try layerNormAll(ctx, h, d + "final_layer_norm") }
        if projected { h = try ctx.column(h, weight: d + "project_out.weight", bias: nil) }
        try observe("final_norm", h)
        let head = ctx.weights.has("lm_head.weight") ? "lm_head.weight" : d + "embed_tokens.weight"
        return try lmHead(ctx, h, weight: head)
    }

    // MARK: Phi-1/2

    func phi(_ ctx: TPContext, _ tokens: [Int], _ observe: Observer) throws -> [Act] {
        if config.bool("qk_layernorm") == true {
            throw Model.configError(config, "Phi with qk_layernorm has no reference pass")
        }
        let T = tokens.count
        var h = try ctx.embed(tokens, table: "model.embed_tokens.weight")
        try observe("embeddings", h)
        let rotary = config.rotary(defaultFactor: 0.5)
        let rope = try self.rope(Array(0..<T), rotary, factor: rotary.partialFactor)
        let act = try activation
        let scale = Float(1 / Double(headDim).squareRoot())
        for i in 0..<layers {
            let p = "model.layers.\(i)."
            let x = try layerNormAll(ctx, h, p + "input_layernorm")
            func proj(_ name: String) throws -> [Act] {
                try ctx.column(x, weight: p + "self_attn.\(name).weight", bias: p + "self_attn.\(name).bias")
            }
            let a = try attention(try proj("q_proj"), try proj("k_proj"), try proj("v_proj"), kvHeads: kvHeads,
                                  rope: rope, causal: true, scale: scale, layer: "layer \(i)")
            let attn = try ctx.row(a, weight: p + "self_attn.dense.weight", bias: p + "self_attn.dense.bias")
            var m = try denseMLP(ctx, x, up: p + "mlp.fc1", down: p + "mlp.fc2", act: act)
            try add(&m, attn, p + "self_attn.dense")
            try add(&m, h, p + "residual")
            h = m
            try observe("layers.\(i)", h)
        }
        h = try layerNormAll(ctx, h, "model.final_layernorm")
        try observe("final_norm", h)
        let head = ctx.weights.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight"
        return try lmHead(ctx, h, weight: head, bias: "lm_head.bias")
    }
}
