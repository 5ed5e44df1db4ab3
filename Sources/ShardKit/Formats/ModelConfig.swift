/// The parts of a Hugging Face `config.json` that splitting and the reference forward pass need,
/// read under both old and new spellings.
public struct ModelConfig: Sendable {
    public let path: String
    public let json: JSONValue

    public init(path: String) throws {
        let file = try ReadOnlyFile(path: path)
        do {
            json = try JSONValue.parse(try file.readAll(limit: 16 << 20, what: "a config.json"))
        } catch let e as JSONParseError {
            throw ShardKitError(.invalidConfig, "\(path): not valid JSON: \(e)")
        }
        guard json.objectValue != nil else { throw ShardKitError(.invalidConfig, "\(path): not a JSON object") }
        self.path = path
    }

    public init(json: JSONValue, path: String = "config.json") {
        self.json = json
        self.path = path
    }

    public var modelType: String? { json["model_type"]?.stringValue }

    /// The first of `keys` present (top level, then `text_config`), as an integer.
    public func int(_ keys: String...) -> Int? {
        for k in keys { if let v = json[k]?.intValue { return v } }
        for k in keys { if let v = json["text_config"]?[k]?.intValue { return v } }
        return nil
    }

    public func double(_ keys: String...) -> Double? {
        for k in keys { if let v = json[k]?.doubleValue { return v } }
        for k in keys { if let v = json["text_config"]?[k]?.doubleValue { return v } }
        return nil
    }

    public func string(_ keys: String...) -> String? {
        for k in keys { if let v = json[k]?.stringValue { return v } }
        return nil
    }

    public func bool(_ keys: String...) -> Bool? {
        for k in keys { if let v = json[k]?.boolValue { return v } }
        return nil
    }

    /// An integer that must be present; the error names the file and every spelling tried.
    public func requireInt(_ keys: String...) throws -> Int {
        for k in keys { if let v = json[k]?.intValue { return v } }
        for k in keys { if let v = json["text_config"]?[k]?.intValue { return v } }
        throw ShardKitError(.invalidConfig, "\(path): missing integer \(keys.joined(separator: " / "))")
    }

    public var hiddenSize: Int? { int("hidden_size", "n_embd", "d_model") }
    public var attentionHeads: Int? { int("num_attention_heads", "n_head", "num_heads") }
    /// KV heads; defaults to the attention heads (no GQA) when absent.
    public var keyValueHeads: Int? {
        int("num_key_value_heads", "num_kv_heads", "multi_query_group_num") ?? attentionHeads
    }
    /// head_dim from config, else hidden / heads.
    public var headDim: Int? {
        if let d = int("head_dim"), d > 0 { return d }
        guard let h = hiddenSize, let n = attentionHeads, n > 0 else { return nil }
        return h / n
    }
    public var layers: Int? { int("num_hidden_layers", "n_layer", "num_layers") }
    public var vocabSize: Int? { int("vocab_size") }
    public var intermediateSize: Int? { int("intermediate_size", "n_inner", "ffn_dim") }

    /// A model's rotary embedding settings.
    public struct Rotary: Sendable, Equatable {
        public var theta: Double
        /// Fraction of each head's dimensions that rotate.
        public var partialFactor: Double
        public init(theta: Double, partialFactor: Double) { self.theta = theta; self.partialFactor = partialFactor }
    }

    /// The rotary settings, read the way transformers reads them, in one place for every forward
    /// pass: transformers ≥ 5 writes and reads `rope_parameters` (`rope_theta`,
    /// `partial_rotary_factor`); older configs spell them at the top level, under names that depend
    /// on the model (GPT-NeoX: `rotary_pct`, `rotary_emb_base`; most others: `partial_rotary_factor`,
    /// `rope_theta`), given as `factorKeys` / `thetaKeys`; then `rope_scaling.rope_theta`; then the
    /// model's defaults. `layerType` (Gemma 3: "sliding_attention", "full_attention"): transformers 5
    /// keeps one `rope_parameters` object per layer type.
    public func rotary(factorKeys: [String] = ["partial_rotary_factor"], thetaKeys: [String] = ["rope_theta"],
                       defaultFactor: Double = 1, defaultTheta: Double = 10000, layerType: String? = nil) -> Rotary {
        let parameters = ropeParameters(layerType: layerType)
        func legacy(_ keys: [String]) -> Double? {
            for k in keys { if let v = json[k]?.doubleValue ?? json["text_config"]?[k]?.doubleValue { return v } }
            return nil
        }
        let theta = parameters?["rope_theta"]?.doubleValue ?? legacy(thetaKeys)
            ?? json["rope_scaling"]?["rope_theta"]?.doubleValue ?? defaultTheta
        let factor = parameters?["partial_rotary_factor"]?.doubleValue ?? legacy(factorKeys) ?? defaultFactor
        return Rotary(theta: theta, partialFactor: factor)
    }

    /// `rope_parameters` (top level, then `text_config`), or its object for `layerType` when it has one.
    public func ropeParameters(layerType: String? = nil) -> JSONValue? {
        let parameters = json["rope_parameters"] ?? json["text_config"]?["rope_parameters"]
        if let layerType, let nested = parameters?[layerType], nested.objectValue != nil { return nested }
        return parameters
    }

    public var tieWordEmbeddings: Bool? { bool("tie_word_embeddings") }
}
