/// Built-in rule sets for the architectures ShardKit knows, chosen by config.json's `model_type`.
/// Each is written in the same pattern language as a user rules file (docs/rules.md).
public enum Preset {
    /// The model types with a preset.
    public static let modelTypes = ["llama", "mistral", "qwen2", "gemma", "mixtral", "phi3", "gpt2", "gpt_neox", "bert"]

    /// The preset for `config`'s model_type. Throws `invalidConfig` for an unknown type or a missing key.
    public static func rules(for config: ModelConfig) throws -> RuleSet {
        guard let type = config.modelType else {
            throw ShardKitError(.invalidConfig, "\(config.path): no \"model_type\", so no preset applies", remedy: .rules)
        }
        let heads = try config.requireInt("num_attention_heads", "n_head")
        let kv = config.int("num_key_value_heads", "multi_query_group_num") ?? heads
        guard heads > 0, kv > 0 else {
            throw ShardKitError(.invalidConfig, "\(config.path): head counts must be positive (heads \(heads), KV heads \(kv))")
        }
        let origin = "preset \(type)"
        func e(_ pattern: String, _ rule: RuleSpec, optional: Bool = false) -> RuleSet.Entry {
            // Preset patterns are compile-time constants; a bad one is a programming error. A required
            // entry that matches nothing means the checkpoint is not what config.json says.
            RuleSet.Entry(try! NamePattern(pattern), rule, required: !optional, origin: origin)
        }
        let entries: [RuleSet.Entry]
        switch type {
        case "llama", "mistral", "qwen2", "gemma", "mixtral", "phi3":
            let p = "model.layers.*."
            var list = [
                e("model.embed_tokens.weight", .vocab(0)),
                e("lm_head.weight", .vocab(0), optional: true),
                e("model.norm.weight", .replicated),
                e(p + "{input_layernorm,post_attention_layernorm}.weight", .replicated),
                e(p + "self_attn.o_proj.weight", .outProjection(1, heads)),
                e(p + "self_attn.o_proj.bias", .replicated, optional: true),
                e(p + "self_attn.rotary_emb.inv_freq", .replicated, optional: true),
            ]
            if type == "phi3" {
                list += [
                    e(p + "self_attn.qkv_proj.weight", .fused(0, [.init(.heads(heads)), .init(.kvHeads(kv)), .init(.kvHeads(kv))])),
                    e(p + "self_attn.qkv_proj.bias", .fused(0, [.init(.heads(heads)), .init(.kvHeads(kv)), .init(.kvHeads(kv))]), optional: true),
                    e(p + "mlp.gate_up_proj.weight", .fused(0, [.init(.even), .init(.even)])),
                    e(p + "mlp.down_proj.weight", .row(1)),
                ]
            } else {
                list += [
                    e(p + "self_attn.q_proj.weight", .heads(0, heads)),
                    e(p + "self_attn.q_proj.bias", .heads(0, heads), optional: type != "qwen2"),
                    e(p + "self_attn.{k_proj,v_proj}.weight", .kvHeads(0, kv)),
                    e(p + "self_attn.{k_proj,v_proj}.bias", .kvHeads(0, kv), optional: type != "qwen2"),
                ]
            }
            if type == "mixtral" {
                list += [
                    e(p + "block_sparse_moe.gate.weight", .replicated),
                    e(p + "block_sparse_moe.experts.*.{w1,w3}.weight", .column(0)),
                    e(p + "block_sparse_moe.experts.*.w2.weight", .row(1)),
                ]
            } else if type != "phi3" {
                list += [
                    e(p + "mlp.{gate_proj,up_proj}.weight", .column(0)),
                    e(p + "mlp.{gate_proj,up_proj}.bias", .column(0), optional: true),
                    e(p + "mlp.down_proj.weight", .row(1)),
                    e(p + "mlp.down_proj.bias", .replicated, optional: true),
                ]
            }
            entries = list
        case "gpt2":
            let t = "{transformer.,}"
            let qkv: [RuleSpec.Part] = [.init(.heads(heads)), .init(.heads(heads)), .init(.heads(heads))]
            entries = [
                e(t + "wte.weight", .vocab(0)),
                e(t + "wpe.weight", .replicated),
                e(t + "h.*.ln_{1,2}.{weight,bias}", .replicated),
                e(t + "h.*.attn.c_attn.weight", .fused(1, qkv)),
                e(t + "h.*.attn.c_attn.bias", .fused(0, qkv)),
                e(t + "h.*.attn.c_proj.weight", .outProjection(0, heads)),
                e(t + "h.*.attn.c_proj.bias", .replicated),
                e(t + "h.*.mlp.c_fc.weight", .column(1)),
                e(t + "h.*.mlp.c_fc.bias", .column(0)),
                e(t + "h.*.mlp.c_proj.weight", .row(0)),
                e(t + "h.*.mlp.c_proj.bias", .replicated),
                e(t + "h.*.attn.{bias,masked_bias}", .replicated, optional: true),
                e(t + "ln_f.{weight,bias}", .replicated),
                e("lm_head.weight", .vocab(0), optional: true),
            ]
        case "gpt_neox":
            let p = "gpt_neox.layers.*."
            entries = [
                e("gpt_neox.embed_in.weight", .vocab(0)),
                e("embed_out.weight", .vocab(0), optional: true),
                e(p + "{input_layernorm,post_attention_layernorm}.{weight,bias}", .replicated),
                // [heads, 3, head_dim] interleaved: a "head" of 3·head_dim rows keeps q, k and v together.
                e(p + "attention.query_key_value.{weight,bias}", .heads(0, heads)),
                e(p + "attention.dense.weight", .outProjection(1, heads)),
                e(p + "attention.dense.bias", .replicated),
                e(p + "attention.{bias,masked_bias,rotary_emb.inv_freq}", .replicated, optional: true),
                e(p + "mlp.dense_h_to_4h.{weight,bias}", .column(0)),
                e(p + "mlp.dense_4h_to_h.weight", .row(1)),
                e(p + "mlp.dense_4h_to_h.bias", .replicated),
                e("gpt_neox.final_layer_norm.{weight,bias}", .replicated),
            ]
        case "bert":
            let b = "{bert.,}"
            let l = b + "encoder.layer.*."
            entries = [
                e(b + "embeddings.word_embeddings.weight", .vocab(0)),
                e(b + "embeddings.{position_embeddings,token_type_embeddings}.weight", .replicated),
                e(b + "embeddings.LayerNorm.{weight,bias}", .replicated),
                e(b + "embeddings.{position_ids,token_type_ids}", .replicated, optional: true),
                e(l + "attention.self.{query,key,value}.{weight,bias}", .heads(0, heads)),
                e(l + "attention.output.dense.weight", .outProjection(1, heads)),
                e(l + "attention.output.dense.bias", .replicated),
                e(l + "{attention.output,output}.LayerNorm.{weight,bias}", .replicated),
                e(l + "intermediate.dense.{weight,bias}", .column(0)),
                e(l + "output.dense.weight", .row(1)),
                e(l + "output.dense.bias", .replicated),
                e(b + "pooler.dense.{weight,bias}", .replicated, optional: true),
            ]
        default:
            throw ShardKitError(.invalidConfig,
                "\(config.path): unknown model_type \"\(type)\" (presets: \(modelTypes.joined(separator: ", ")))", remedy: .rules)
        }
        return RuleSet(name: origin, entries: entries)
    }
}
