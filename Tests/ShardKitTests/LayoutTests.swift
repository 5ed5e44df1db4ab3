import Foundation
import Testing
import ShardKit

/// Checks rank pieces against index arithmetic written here, from TP-SEMANTICS.md (never via
/// `SplitRule.layout`). Each check also records the tensor, so a test can require that every tensor
/// of the fixture got a hand-computed expectation.
final class LayoutChecker {
    let dir: String
    let manifest: Manifest
    let source: [String: RawTensor]
    let g: Int
    var checked = Set<String>()

    init(fixture: String, tp: Int, dir: String) throws {
        self.dir = dir
        self.g = tp
        try shardFixture(fixture, tp: tp, to: dir)
        manifest = try readManifest(dir)
        source = try sourceTensors(fixture)
    }

    /// `name` is split along `dim` with rank r holding `ranges(r)` (in order); `dim == nil`: whole.
    func expect(_ name: String, _ kind: String, dim: Int?, padded: Int? = nil, _ ranges: (Int) -> [Range<Int>],
                sourceLocation: SourceLocation = #_sourceLocation) throws {
        guard let src = source[name], let t = manifest.tensors[name] else {
            Issue.record("no tensor \(name)", sourceLocation: sourceLocation)
            return
        }
        checked.insert(name)
        #expect(t.rule.kindName == kind, "\(name): rule \(t.rule.kindName), expected \(kind)", sourceLocation: sourceLocation)
        #expect(t.rule.dim == dim, "\(name): rule dim", sourceLocation: sourceLocation)
        #expect(t.paddedSize == padded, "\(name): padded_size \(String(describing: t.paddedSize))", sourceLocation: sourceLocation)
        for r in 0..<g {
            let p = try piece(dir, manifest, name, rank: r)
            guard let d = dim else {
                let whole = same(p.bytes, src.bytes) && p.shape == src.shape
                #expect(whole, "\(name) rank \(r) should be the whole tensor",
                        sourceLocation: sourceLocation)
                continue
            }
            let rs = ranges(r)
            var shape = src.shape
            shape[d] = rs.reduce(0) { $0 + $1.count }
            #expect(p.shape == shape, "\(name) rank \(r): shape \(p.shape), expected \(shape)", sourceLocation: sourceLocation)
            let rows = same(p.bytes, slice(src, dim: d, rs))
            #expect(rows, "\(name) rank \(r): bytes are not rows \(rs) along dim \(d)",
                    sourceLocation: sourceLocation)
            #expect(t.pieces[r].intervals == merged(rs), "\(name) rank \(r): manifest intervals \(t.pieces[r].intervals)",
                    sourceLocation: sourceLocation)
        }
    }

    func whole(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        try expect(name, "replicated", dim: nil, { _ in [] }, sourceLocation: sourceLocation)
    }

    func expectAllChecked(sourceLocation: SourceLocation = #_sourceLocation) {
        let missing = Set(source.keys).subtracting(checked)
        #expect(missing.isEmpty, "tensors without a hand-computed expectation: \(missing.sorted())", sourceLocation: sourceLocation)
    }

    /// Vocab rows: padded to ⌈V/G⌉·G, rank r holds [r·Vp/G, (r+1)·Vp/G).
    func vocab(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let v = source[name]!.shape[0]
        let vp = (v + g - 1) / g * g
        try expect(name, "vocab", dim: 0, padded: vp == v ? nil : vp, { r in [share(vp, rank: r, of: self.g)] },
                   sourceLocation: sourceLocation)
    }
}

/// Q heads: rows [r·H/G·hd, (r+1)·H/G·hd).
func qRows(h: Int, hd: Int, rank r: Int, g: Int) -> Range<Int> { (r * h / g * hd)..<((r + 1) * h / g * hd) }

/// KV heads: KV/G heads per rank when KV ≥ G, else head ⌊r·KV/G⌋.
func kvRows(kv: Int, hd: Int, rank r: Int, g: Int) -> Range<Int> {
    if kv >= g { return (r * kv / g * hd)..<((r + 1) * kv / g * hd) }
    let head = r * kv / g
    return (head * hd)..<((head + 1) * hd)
}

struct LlamaLike: Sendable, CustomTestStringConvertible {
    var fixture: String, tp: Int, heads: Int, kv: Int, hd: Int, inter: Int, qkvBias: Bool, tied: Bool, moe: Bool
    var testDescription: String { "\(fixture) G=\(tp)" }
}

let llamaLikeCases: [LlamaLike] = [2, 4, 8].flatMap { g in [
    LlamaLike(fixture: "llama-gqa", tp: g, heads: 8, kv: 2, hd: 8, inter: 96, qkvBias: false, tied: false, moe: false),
    LlamaLike(fixture: "llama-bf16-sharded", tp: g, heads: 8, kv: 4, hd: 8, inter: 128, qkvBias: false, tied: false, moe: false),
    LlamaLike(fixture: "mistral", tp: g, heads: 8, kv: 2, hd: 8, inter: 96, qkvBias: false, tied: false, moe: false),
    LlamaLike(fixture: "mixtral", tp: g, heads: 8, kv: 2, hd: 8, inter: 96, qkvBias: false, tied: false, moe: true),
] } + [2, 4].flatMap { g in [
    LlamaLike(fixture: "qwen2-bias", tp: g, heads: 4, kv: 2, hd: 16, inter: 96, qkvBias: true, tied: false, moe: false),
    LlamaLike(fixture: "gemma", tp: g, heads: 4, kv: 2, hd: 32, inter: 96, qkvBias: false, tied: true, moe: false),
] }

@Suite("Per-rule pieces, computed independently")
struct LayoutTests {
    @Test("Llama-family layouts: heads, kv_heads, out_projection, column, row, vocab, replicated, experts",
          arguments: llamaLikeCases)
    func llamaFamily(_ c: LlamaLike) throws {
        try withTempDir { tmp in
            let k = try LayoutChecker(fixture: c.fixture, tp: c.tp, dir: tmp + "/out")
            let g = c.tp
            try k.vocab("model.embed_tokens.weight")
            if !c.tied { try k.vocab("lm_head.weight") } else { #expect(k.source["lm_head.weight"] == nil) }
            try k.whole("model.norm.weight")
            for l in 0..<2 {
                let p = "model.layers.\(l)."
                try k.whole(p + "input_layernorm.weight")
                try k.whole(p + "post_attention_layernorm.weight")
                try k.expect(p + "self_attn.q_proj.weight", "heads", dim: 0) { r in [qRows(h: c.heads, hd: c.hd, rank: r, g: g)] }
                for kvName in ["k_proj", "v_proj"] {
                    try k.expect(p + "self_attn.\(kvName).weight", "kv_heads", dim: 0) { r in [kvRows(kv: c.kv, hd: c.hd, rank: r, g: g)] }
                }
                if c.qkvBias {
                    try k.expect(p + "self_attn.q_proj.bias", "heads", dim: 0) { r in [qRows(h: c.heads, hd: c.hd, rank: r, g: g)] }
                    try k.expect(p + "self_attn.k_proj.bias", "kv_heads", dim: 0) { r in [kvRows(kv: c.kv, hd: c.hd, rank: r, g: g)] }
                    try k.expect(p + "self_attn.v_proj.bias", "kv_heads", dim: 0) { r in [kvRows(kv: c.kv, hd: c.hd, rank: r, g: g)] }
                }
                // o_proj [hidden, H·hd]: the columns of the rank's Q heads.
                try k.expect(p + "self_attn.o_proj.weight", "out_projection", dim: 1) { r in [qRows(h: c.heads, hd: c.hd, rank: r, g: g)] }
                if c.moe {
                    try k.whole(p + "block_sparse_moe.gate.weight")
                    for e in 0..<4 {
                        let x = p + "block_sparse_moe.experts.\(e)."
                        try k.expect(x + "w1.weight", "column", dim: 0) { r in [share(c.inter, rank: r, of: g)] }
                        try k.expect(x + "w3.weight", "column", dim: 0) { r in [share(c.inter, rank: r, of: g)] }
                        try k.expect(x + "w2.weight", "row", dim: 1) { r in [share(c.inter, rank: r, of: g)] }
                    }
                } else {
                    try k.expect(p + "mlp.gate_proj.weight", "column", dim: 0) { r in [share(c.inter, rank: r, of: g)] }
                    try k.expect(p + "mlp.up_proj.weight", "column", dim: 0) { r in [share(c.inter, rank: r, of: g)] }
                    try k.expect(p + "mlp.down_proj.weight", "row", dim: 1) { r in [share(c.inter, rank: r, of: g)] }
                }
            }
            k.expectAllChecked()
        }
    }

    @Test("KV replication when KV < G: llama-gqa (KV=2) rank r holds KV head ⌊r·KV/G⌋")
    func kvReplication() throws {
        let src = try sourceTensors("llama-gqa")
        for (g, heads) in [(4, [0, 0, 1, 1]), (8, [0, 0, 0, 0, 1, 1, 1, 1])] {
            try withTempDir { tmp in
                let m = try shardFixture("llama-gqa", tp: g, to: tmp + "/out")
                for name in ["model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight"] {
                    let kv = src[name]!  // [16, 64]: 2 heads of 8 rows
                    #expect(kv.shape == [16, 64])
                    for r in 0..<g {
                        let p = try piece(tmp + "/out", m, name, rank: r)
                        #expect(p.shape == [8, 64])
                        let rowBytes = 64 * 4
                        let head = Array(kv.bytes[(heads[r] * 8 * rowBytes)..<((heads[r] + 1) * 8 * rowBytes)])
                        #expect(same(p.bytes, head), "G=\(g) rank \(r) should hold KV head \(heads[r]) of \(name)")
                        #expect(m.tensors[name]!.pieces[r].intervals == [[heads[r] * 8, heads[r] * 8 + 8]])
                    }
                }
            }
        }
    }

    @Test("vocab padding: qwen2-bias V=253 pads to 254 (G=2) and 256 (G=4) with zero rows", arguments: [2, 4])
    func vocabPadding(_ g: Int) throws {
        let src = try sourceTensors("qwen2-bias")
        let padded = g == 2 ? 254 : 256
        let perRank = padded / g
        try withTempDir { tmp in
            let out = tmp + "/out"
            let m = try shardFixture("qwen2-bias", tp: g, to: out)
            for name in ["model.embed_tokens.weight", "lm_head.weight"] {
                let t = m.tensors[name]!
                #expect(t.paddedSize == padded)
                #expect(t.shape == [253, 64], "the manifest keeps the true V")
                let row = 64 * 4
                for r in 0..<g {
                    let p = try piece(out, m, name, rank: r)
                    #expect(p.shape == [perRank, 64])
                    #expect(t.pieces[r].intervals == [[r * perRank, (r + 1) * perRank]])
                    let real = max(0, min(253, (r + 1) * perRank) - r * perRank)
                    #expect(same(Array(p.bytes[0..<(real * row)]), Array(src[name]!.bytes[(r * perRank * row)..<((r * perRank + real) * row)])))
                    let pad = Array(p.bytes[(real * row)...])
                    #expect(pad.count == (perRank - real) * row)
                    #expect(pad.allSatisfy { $0 == 0 }, "padding rows must be zeros")
                    if r == g - 1 { #expect(perRank - real == padded - 253) } else { #expect(real == perRank) }
                }
            }
            // The padding is dropped again on reassembly.
            let rebuilt = try reassembleAll(out)
            #expect(same(rebuilt["lm_head.weight"], src["lm_head.weight"]!.bytes))
        }
    }

    @Test("phi3 fused qkv_proj = [q_r; k_r; v_r] and gate_up_proj = [gate_r; up_r]", arguments: [1, 2, 4, 8])
    func phi3Fused(_ g: Int) throws {
        try withTempDir { tmp in
            let k = try LayoutChecker(fixture: "phi3", tp: g, dir: tmp + "/out")
            let (h, kv, hd, inter) = (8, 2, 8, 96)
            try k.vocab("model.embed_tokens.weight")
            try k.vocab("lm_head.weight")
            try k.whole("model.norm.weight")
            for l in 0..<2 {
                let p = "model.layers.\(l)."
                try k.whole(p + "input_layernorm.weight")
                try k.whole(p + "post_attention_layernorm.weight")
                #expect(k.source[p + "self_attn.qkv_proj.weight"]!.shape == [(h + 2 * kv) * hd, 64])
                try k.expect(p + "self_attn.qkv_proj.weight", "fused", dim: 0) { r in [
                    qRows(h: h, hd: hd, rank: r, g: g),
                    shifted(kvRows(kv: kv, hd: hd, rank: r, g: g), h * hd),
                    shifted(kvRows(kv: kv, hd: hd, rank: r, g: g), h * hd + kv * hd),
                ] }
                try k.expect(p + "mlp.gate_up_proj.weight", "fused", dim: 0) { r in
                    [share(inter, rank: r, of: g), shifted(share(inter, rank: r, of: g), inter)]
                }
                try k.expect(p + "self_attn.o_proj.weight", "out_projection", dim: 1) { r in [qRows(h: h, hd: hd, rank: r, g: g)] }
                try k.expect(p + "mlp.down_proj.weight", "row", dim: 1) { r in [share(inter, rank: r, of: g)] }
            }
            k.expectAllChecked()
        }
    }

    @Test("a naive contiguous split of phi3's qkv_proj is not what ShardKit writes")
    func phi3NotNaive() throws {
        try withTempDir { tmp in
            let m = try shardFixture("phi3", tp: 2, to: tmp + "/out")
            let name = "model.layers.0.self_attn.qkv_proj.weight"
            let src = try sourceTensors("phi3")[name]!
            let rank0 = try piece(tmp + "/out", m, name, rank: 0)
            #expect(rank0.shape == [48, 64])
            let naive = slice(src, dim: 0, [0..<48])  // the first half of the rows: all q, no k or v
            #expect(!same(rank0.bytes, naive), "rank 0 must not hold the first half of [q; k; v]")
            // What it must hold: q heads 0-3 (rows 0..<32), K head 0 (64..<72), V head 0 (80..<88).
            #expect(same(rank0.bytes, slice(src, dim: 0, [0..<32, 64..<72, 80..<88])))
            #expect(m.tensors[name]!.pieces[0].intervals == [[0, 32], [64, 72], [80, 88]])
            #expect(m.tensors[name]!.pieces[1].intervals == [[32, 64], [72, 80], [88, 96]])
        }
    }

    @Test("GPT-2: Conv1D [in, out], fused c_attn along dim 1 and its bias, vocab 257", arguments: [1, 2, 4, 8])
    func gpt2(_ g: Int) throws {
        try withTempDir { tmp in
            let k = try LayoutChecker(fixture: "gpt2", tp: g, dir: tmp + "/out")
            let (hidden, h, hd, inter) = (64, 8, 8, 256)
            let t = "transformer."
            try k.vocab(t + "wte.weight")
            if g > 1 {
                #expect(k.manifest.tensors[t + "wte.weight"]!.paddedSize == (257 + g - 1) / g * g)
            }
            try k.whole(t + "wpe.weight")
            try k.whole(t + "ln_f.weight")
            try k.whole(t + "ln_f.bias")
            for l in 0..<2 {
                let p = t + "h.\(l)."
                for n in ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_proj.bias", "mlp.c_proj.bias"] {
                    try k.whole(p + n)
                }
                #expect(k.source[p + "attn.c_attn.weight"]!.shape == [hidden, 3 * hidden])
                let qkv = { (r: Int) in [qRows(h: h, hd: hd, rank: r, g: g),
                                         shifted(qRows(h: h, hd: hd, rank: r, g: g), hidden),
                                         shifted(qRows(h: h, hd: hd, rank: r, g: g), 2 * hidden)] }
                try k.expect(p + "attn.c_attn.weight", "fused", dim: 1, qkv)
                try k.expect(p + "attn.c_attn.bias", "fused", dim: 0, qkv)
                try k.expect(p + "attn.c_proj.weight", "out_projection", dim: 0) { r in [qRows(h: h, hd: hd, rank: r, g: g)] }
                try k.expect(p + "mlp.c_fc.weight", "column", dim: 1) { r in [share(inter, rank: r, of: g)] }
                try k.expect(p + "mlp.c_fc.bias", "column", dim: 0) { r in [share(inter, rank: r, of: g)] }
                try k.expect(p + "mlp.c_proj.weight", "row", dim: 0) { r in [share(inter, rank: r, of: g)] }
            }
            k.expectAllChecked()
        }
    }

    @Test("GPT-NeoX: per-head interleaved query_key_value keeps whole heads", arguments: [1, 2, 4, 8])
    func gptNeoX(_ g: Int) throws {
        try withTempDir { tmp in
            let k = try LayoutChecker(fixture: "gpt-neox", tp: g, dir: tmp + "/out")
            let (h, hd, inter) = (8, 8, 256)
            try k.vocab("gpt_neox.embed_in.weight")
            try k.vocab("embed_out.weight")
            try k.whole("gpt_neox.final_layer_norm.weight")
            try k.whole("gpt_neox.final_layer_norm.bias")
            for l in 0..<2 {
                let p = "gpt_neox.layers.\(l)."
                for n in ["input_layernorm.weight", "input_layernorm.bias", "post_attention_layernorm.weight",
                          "post_attention_layernorm.bias", "attention.dense.bias", "mlp.dense_4h_to_h.bias"] {
                    try k.whole(p + n)
                }
                // Whole heads of 3·hd rows (q, k, v of one head together).
                let heads = { (r: Int) in [(r * h / g * 3 * hd)..<((r + 1) * h / g * 3 * hd)] }
                try k.expect(p + "attention.query_key_value.weight", "heads", dim: 0, heads)
                try k.expect(p + "attention.query_key_value.bias", "heads", dim: 0, heads)
                try k.expect(p + "attention.dense.weight", "out_projection", dim: 1) { r in [qRows(h: h, hd: hd, rank: r, g: g)] }
                try k.expect(p + "mlp.dense_h_to_4h.weight", "column", dim: 0) { r in [share(inter, rank: r, of: g)] }
                try k.expect(p + "mlp.dense_h_to_4h.bias", "column", dim: 0) { r in [share(inter, rank: r, of: g)] }
                try k.expect(p + "mlp.dense_4h_to_h.weight", "row", dim: 1) { r in [share(inter, rank: r, of: g)] }
            }
            k.expectAllChecked()
            if g == 2 {
                // Rank 1's first 8 rows are head 4's q (rows 96..<104 of the interleaved layout), not a
                // slice of a "q block" as a fused q|k|v split would give.
                let name = "gpt_neox.layers.0.attention.query_key_value.weight"
                let p = try piece(tmp + "/out", k.manifest, name, rank: 1)
                let src = k.source[name]!
                #expect(same(Array(p.bytes[0..<(8 * 64 * 4)]), slice(src, dim: 0, [96..<104])))
                #expect(!same(p.bytes, slice(src, dim: 0, [32..<64, 96..<128, 160..<192])))
            }
        }
    }

    @Test("BERT: heads, out-projection, column/row, vocab 250 padded, replicated embeddings", arguments: [1, 2, 4, 8])
    func bert(_ g: Int) throws {
        try withTempDir { tmp in
            let k = try LayoutChecker(fixture: "bert", tp: g, dir: tmp + "/out")
            let (h, hd, inter) = (8, 8, 128)
            try k.vocab("embeddings.word_embeddings.weight")
            for n in ["embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight",
                      "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias", "pooler.dense.weight", "pooler.dense.bias"] {
                try k.whole(n)
            }
            for l in 0..<2 {
                let p = "encoder.layer.\(l)."
                for n in ["query", "key", "value"] {
                    for w in ["weight", "bias"] {
                        try k.expect(p + "attention.self.\(n).\(w)", "heads", dim: 0) { r in [qRows(h: h, hd: hd, rank: r, g: g)] }
                    }
                }
                try k.expect(p + "attention.output.dense.weight", "out_projection", dim: 1) { r in [qRows(h: h, hd: hd, rank: r, g: g)] }
                try k.whole(p + "attention.output.dense.bias")
                for n in ["attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
                          "output.LayerNorm.weight", "output.LayerNorm.bias", "output.dense.bias"] {
                    try k.whole(p + n)
                }
                try k.expect(p + "intermediate.dense.weight", "column", dim: 0) { r in [share(inter, rank: r, of: g)] }
                try k.expect(p + "intermediate.dense.bias", "column", dim: 0) { r in [share(inter, rank: r, of: g)] }
                try k.expect(p + "output.dense.weight", "row", dim: 1) { r in [share(inter, rank: r, of: g)] }
            }
            k.expectAllChecked()
        }
    }

    @Test("replicated pieces are identical on every rank and rank files carry rank metadata")
    func replicatedAndMetadata() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            try shardFixture("mixtral", tp: 4, to: out)
            var routers: [[UInt8]] = []
            for r in 0..<4 {
                let raw = try readRawSafetensors(out + "/rank-\(r)/model.safetensors")
                #expect(raw.metadata["shardkit_rank"] == String(r))
                #expect(raw.metadata["shardkit_tp"] == "4")
                #expect(raw.metadata["format"] == "pt")
                routers.append(raw.tensors["model.layers.1.block_sparse_moe.gate.weight"]!.bytes)
            }
            #expect(Set(routers).count == 1)
            #expect(same(routers[0], (try sourceTensors("mixtral"))["model.layers.1.block_sparse_moe.gate.weight"]!.bytes))
        }
    }

    @Test("SplitRule.layout refusals name the tensor and the numbers")
    func layoutRefusals() throws {
        expectShardKitError(caught { _ = try SplitRule.kvHeads(dim: 0, heads: 3).layout(rank: 0, of: 2, size: 24, tensor: "t.k") },
                            .impossibleSplit, ["t.k", "3 KV heads", "2 ranks"])
        expectShardKitError(caught { _ = try SplitRule.kvHeads(dim: 0, heads: 2).layout(rank: 0, of: 3, size: 16, tensor: "t.v") },
                            .impossibleSplit, ["t.v", "2 KV heads", "3 ranks"])
        expectShardKitError(caught { _ = try SplitRule.column(dim: 0).layout(rank: 0, of: 4, size: 10, tensor: "t.c") },
                            .impossibleSplit, ["t.c", "10", "4 ranks"])
        expectShardKitError(caught { _ = try SplitRule.fused(dim: 0, parts: [.init(size: 4, split: .even)]).layout(rank: 0, of: 2, size: 6, tensor: "t.f") },
                            .impossibleSplit, ["t.f", "add up to 4", "6"])
    }

    /// Falcon's grouped query_key_value keeps KV groups whole (shared by G/KV ranks when KV < G); multi-query
    /// K and V on every rank; GPT-J's LM head bias padded with the vocabulary.
    @Test("Falcon grouped and multi-query QKV, GPT-J LM head bias", arguments: [1, 2, 4, 8])
    func falconAndGPTJ(_ g: Int) throws {
        try withTempDir { tmp in
            // new_decoder_architecture: [2 groups, 4 queries + k + v, 8] = 96 rows.
            let k = try LayoutChecker(fixture: "falcon", tp: g, dir: tmp + "/grouped")
            let (h, hd, inter) = (8, 8, 96)
            try k.vocab("transformer.word_embeddings.weight")
            try k.vocab("lm_head.weight")
            for n in ["transformer.ln_f.weight", "transformer.ln_f.bias"] { try k.whole(n) }
            for l in 0..<2 {
                let p = "transformer.h.\(l)."
                for n in ["ln_attn", "ln_mlp"] { try k.whole(p + n + ".weight"); try k.whole(p + n + ".bias") }
                // A group of (4 + 2)·8 = 48 rows is one "KV head".
                try k.expect(p + "self_attention.query_key_value.weight", "kv_heads", dim: 0) { r in
                    [kvRows(kv: 2, hd: 48, rank: r, g: g)]
                }
                try k.expect(p + "self_attention.dense.weight", "out_projection", dim: 1) { r in
                    [qRows(h: h, hd: hd, rank: r, g: g)]
                }
                try k.expect(p + "mlp.dense_h_to_4h.weight", "column", dim: 0) { r in [share(inter, rank: r, of: g)] }
                try k.expect(p + "mlp.dense_4h_to_h.weight", "row", dim: 1) { r in [share(inter, rank: r, of: g)] }
            }
            k.expectAllChecked()

            // multi_query: [8 query heads; k; v] = 80 rows, K and V (rows 64..<80) on every rank.
            let m = try LayoutChecker(fixture: "falcon-mq", tp: g, dir: tmp + "/multi-query")
            try m.vocab("transformer.word_embeddings.weight")
            for n in ["transformer.ln_f.weight", "transformer.ln_f.bias"] { try m.whole(n) }
            for l in 0..<2 {
                let p = "transformer.h.\(l)."
                for n in ["input_layernorm.weight", "input_layernorm.bias", "self_attention.dense.bias",
                          "mlp.dense_4h_to_h.bias"] {
                    try m.whole(p + n)
                }
                for w in ["weight", "bias"] {
                    try m.expect(p + "self_attention.query_key_value.\(w)", "fused", dim: 0) { r in
                        [qRows(h: h, hd: hd, rank: r, g: g), 64..<72, 72..<80]
                    }
                    try m.expect(p + "mlp.dense_h_to_4h.\(w)", "column", dim: 0) { r in [share(inter, rank: r, of: g)] }
                }
                try m.expect(p + "self_attention.dense.weight", "out_projection", dim: 1) { r in
                    [qRows(h: h, hd: hd, rank: r, g: g)]
                }
                try m.expect(p + "mlp.dense_4h_to_h.weight", "row", dim: 1) { r in [share(inter, rank: r, of: g)] }
            }
            m.expectAllChecked()

            // GPT-J: lm_head.bias [250] padded and split exactly like lm_head.weight's rows.
            let j = try LayoutChecker(fixture: "gptj", tp: g, dir: tmp + "/gptj")
            try j.vocab("lm_head.weight")
            try j.vocab("lm_head.bias")
        }
    }
}

@Suite("vocabulary padding multiples")
struct VocabMultipleLayoutTests {
    @Test("lcm(M, G) padding: vLLM's 48 rows per rank for 130 rows at G = 4, Megatron's 128·G, ShardKit's own")
    func paddedRows() throws {
        func rows(_ n: Int, tp: Int, multiple: Int) throws -> [Range<Int>] {
            try (0..<tp).map { try SplitRule.vocab(dim: 0, multiple: multiple).layout(rank: $0, of: tp, size: n, tensor: "t").segments[0] }
        }
        #expect(try rows(130, tp: 4, multiple: 64) == [0..<48, 48..<96, 96..<144, 144..<192])
        #expect(try rows(130, tp: 4, multiple: 1) == [0..<33, 33..<66, 66..<99, 99..<132])
        #expect(try rows(130, tp: 4, multiple: 512).map(\.count) == [128, 128, 128, 128])
        // lcm, not product: M = 6 at G = 4 pads to a multiple of 12.
        #expect(try rows(130, tp: 4, multiple: 6).map(\.count) == [33, 33, 33, 33])
        #expect(try rows(128, tp: 4, multiple: 64).map(\.count) == [32, 32, 32, 32])
        #expect(SplitRule.vocab(dim: 0, multiple: 64).paddedSize(130, ranks: 4) == 192)
        #expect(SplitRule.vocab(dim: 0, multiple: 64).summary == "vocab(dim 0, multiple 64)")
    }
}
