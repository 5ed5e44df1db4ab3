/// Meta's original Llama checkpoints: `params.json` + `consolidated.00.pth` … `consolidated.NN.pth`,
/// already cut for NN + 1 model-parallel ranks in Meta's layout, read as one Hugging Face Llama
/// checkpoint: HF names, HF shapes, HF's q/k row order, and the `config.json` Hugging Face's
/// converter would write.
///
/// Meta's layout (llama's `model.py`): `wq`/`wk`/`wv`, `w1`/`w3` split on dim 0 (output features),
/// `wo`, `w2` on dim 1 (input features), `tok_embeddings` on dim 1 (its embedding dimension; Llama 3
/// on dim 0, told apart by the pieces' width), `output` on dim 0 (the vocabulary), norms whole in
/// every file. Meta's rotary embedding pairs
/// adjacent rows of each q/k head (`2i`, `2i + 1`); Hugging Face's pairs the two halves (`i`,
/// `i + hd/2`), so HF row `j` of a head is Meta row `2j` for `j < hd/2` and `2(j - hd/2) + 1` after.
///
/// Nothing is gathered in memory: each HF tensor is a `ByteSource` that maps every byte range of the
/// whole tensor (row-major, HF order) to the ranges of the Meta files that hold it, and the copy
/// engine reads it front to back like any tensor. Everything is validated when the checkpoint is
/// opened: params.json, every file (`PyTorchFile`), that all files hold the same tensors, and each
/// tensor's pieces against the layout.
public struct MetaCheckpoint: Sendable {
    public let directory: String
    /// The consolidated files, in rank order.
    public let files: [PyTorchFile]
    /// Every tensor under its Hugging Face name, whole, in Meta's file order.
    public let tensors: [(name: String, dtype: DType, shape: [Int])]
    /// The `config.json` of the equivalent Hugging Face checkpoint.
    public let config: JSONValue
    private let layouts: [String: TensorLayout]

    static let paramsName = "params.json"

    /// How an HF tensor is made of the Meta files' pieces.
    struct TensorLayout: Sendable {
        var metaName: String
        /// The pieces, one per file, in rank order (for a replicated tensor, only file 0's is read).
        var pieces: [TensorInfo]
        /// Meta's split dimension, or nil for a tensor every file holds whole.
        var dim: Int?
        /// The whole tensor's shape (every dimension positive) and its bytes (overflow-checked).
        var shape: [Int]
        var totalBytes: Int
        /// Head size, for q/k rows reordered from Meta's rotary order to HF's.
        var permutedHeadSize: Int?
    }

    /// True when `directory` holds `params.json` and `consolidated.00.pth`.
    public static func recognizes(_ directory: String) -> Bool {
        FileSystem.exists(Path.join(directory, paramsName))
            && FileSystem.exists(Path.join(directory, "consolidated.00.pth"))
    }

    public init(directory: String) throws {
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidCheckpoint, "\(directory): \(message)") }
        let paramsFile = try ReadOnlyFile(path: Path.join(directory, MetaCheckpoint.paramsName))
        let params: JSONValue
        do { params = try JSONValue.parse(try paramsFile.readAll(limit: 1 << 20, what: "params.json")) } catch {
            throw bad("params.json is not valid JSON: \(error)")
        }
        func int(_ key: String) throws -> Int {
            guard let v = params[key]?.intValue, v > 0 else {
                throw bad("params.json: \(key) is missing or not a positive integer")
            }
            return v
        }
        let dim = try int("dim"), layers = try int("n_layers"), heads = try int("n_heads")
        let kvHeads = params["n_kv_heads"]?.intValue ?? heads
        guard kvHeads > 0, heads % kvHeads == 0, dim % heads == 0, (dim / heads) % 2 == 0 else {
            throw bad("params.json: dim \(dim), n_heads \(heads), n_kv_heads \(kvHeads) do not make whole heads "
                      + "of an even size")
        }
        let headSize = dim / heads
        guard layers <= 100_000 else { throw bad("params.json: n_layers \(layers) is implausible") }

        // The files: consolidated.00.pth, .01, ... with no gap.
        let names = try FileSystem.list(directory)
            .filter { $0.hasPrefix("consolidated.") && $0.hasSuffix(".pth") }.sorted()
        let expected: [String] = (0..<names.count).map { (r: Int) -> String in
            let number = r < 10 ? "0\(r)" : "\(r)"
            return "consolidated.\(number).pth"
        }
        guard !names.isEmpty, names == expected else {
            throw bad("expected consolidated.00.pth … consolidated.\(names.count - 1).pth, "
                      + "found \(names.joined(separator: ", "))")
        }
        let files = try names.map { try PyTorchFile(path: Path.join(directory, $0)) }
        let ranks = files.count
        let byName = files.map { Dictionary($0.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }) }
        let order = files[0].tensors.map(\.name).filter { $0 != "rope.freqs" }
        for (r, f) in files.enumerated() where Set(f.tensors.map(\.name)) != Set(files[0].tensors.map(\.name)) {
            throw bad("\(names[r]) holds other tensors than \(names[0])")
        }
        guard heads % ranks == 0, kvHeads % ranks == 0 else {
            throw bad("\(heads) heads and \(kvHeads) KV heads cannot be split over \(ranks) files")
        }

        var tensors: [(name: String, dtype: DType, shape: [Int])] = []
        var layouts: [String: TensorLayout] = [:]
        for metaName in order {
            guard var (hfName, dimension, permuted) = MetaCheckpoint.hfName(metaName, layers: layers) else {
                throw bad("tensor \(metaName) is not part of Meta's Llama layout")
            }
            let pieces = byName.map { $0[metaName]! }
            let first = pieces[0]
            // Llama 1/2 split the embedding on its embedding dimension, Llama 3 on the vocabulary: a
            // piece as wide as the model says which.
            if metaName == "tok_embeddings.weight", ranks > 1, first.shape.count == 2, first.shape[1] == dim {
                dimension = 0
            }
            guard pieces.allSatisfy({ $0.dtype == first.dtype && $0.shape.count == first.shape.count }),
                  let d = dimension ?? Optional(-1), d < first.shape.count else {
                throw bad("tensor \(metaName) has pieces of different dtypes or ranks, or too few dimensions")
            }
            var shape = first.shape
            if let dimension {
                for p in pieces {
                    var a = p.shape, b = first.shape
                    a[dimension] = 0; b[dimension] = 0
                    guard a == b, p.shape[dimension] == first.shape[dimension] else {
                        throw bad("tensor \(metaName): pieces \(pieces.map(\.shape)) are not equal parts along "
                                  + "dimension \(dimension)")
                    }
                }
                guard let whole = checkedProduct([first.shape[dimension]], times: ranks) else {
                    throw bad("tensor \(metaName): shape overflows")
                }
                shape[dimension] = whole
            } else {
                guard pieces.allSatisfy({ $0.shape == first.shape }) else {
                    throw bad("tensor \(metaName) should be whole in every file, but its shapes differ")
                }
            }
            guard shape.allSatisfy({ $0 > 0 }), let count = checkedProduct(shape),
                  let totalBytes = checkedProduct([count], times: first.dtype.size) else {
                throw bad("tensor \(metaName): shape \(shape) is empty or overflows")
            }
            var headSizeOfRows: Int? = nil
            if permuted {
                guard shape.count == 2, first.shape[0] % headSize == 0 else {
                    throw bad("tensor \(metaName): \(first.shape[0]) rows per file are not whole heads of \(headSize)")
                }
                headSizeOfRows = headSize
            }
            tensors.append((hfName, first.dtype, shape))
            layouts[hfName] = TensorLayout(metaName: metaName, pieces: pieces, dim: dimension, shape: shape,
                                           totalBytes: totalBytes, permutedHeadSize: headSizeOfRows)
        }
        let get = { (name: String) in layouts[name]?.shape }
        guard let embed = get("model.embed_tokens.weight"), embed.count == 2, embed[1] == dim,
              let gate = get("model.layers.0.mlp.gate_proj.weight"), gate.count == 2,
              get("model.layers.0.self_attn.q_proj.weight") == [dim, dim],
              get("model.layers.0.self_attn.k_proj.weight") == [kvHeads * headSize, dim] else {
            throw bad("tensors do not match params.json (dim \(dim), \(heads) heads, \(kvHeads) KV heads)")
        }
        for l in 0..<layers where layouts["model.layers.\(l).self_attn.q_proj.weight"] == nil {
            throw bad("layer \(l) of \(layers) is missing")
        }
        self.directory = directory
        self.files = files
        self.tensors = tensors
        self.layouts = layouts
        self.config = MetaCheckpoint.hfConfig(params: params, dim: dim, layers: layers, heads: heads, kvHeads: kvHeads,
                                              intermediate: gate[0], vocab: embed[0], dtype: tensors[0].dtype,
                                              tied: layouts["lm_head.weight"] == nil)
    }

    /// The HF name of a Meta tensor, Meta's split dimension (nil: whole in every file), and whether its
    /// rows are q/k heads in Meta's rotary order.
    static func hfName(_ meta: String, layers: Int) -> (String, Int?, Bool)? {
        switch meta {
        case "tok_embeddings.weight": return ("model.embed_tokens.weight", 1, false)
        case "norm.weight": return ("model.norm.weight", nil, false)
        case "output.weight": return ("lm_head.weight", 0, false)
        default: break
        }
        let parts = meta.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0] == "layers", let l = Int(parts[1]), l >= 0, l < layers,
              String(l) == parts[1], parts.last == "weight" else { return nil }
        let p = "model.layers.\(l)."
        switch parts[2...].joined(separator: ".") {
        case "attention.wq.weight": return (p + "self_attn.q_proj.weight", 0, true)
        case "attention.wk.weight": return (p + "self_attn.k_proj.weight", 0, true)
        case "attention.wv.weight": return (p + "self_attn.v_proj.weight", 0, false)
        case "attention.wo.weight": return (p + "self_attn.o_proj.weight", 1, false)
        case "feed_forward.w1.weight": return (p + "mlp.gate_proj.weight", 0, false)
        case "feed_forward.w3.weight": return (p + "mlp.up_proj.weight", 0, false)
        case "feed_forward.w2.weight": return (p + "mlp.down_proj.weight", 1, false)
        case "attention_norm.weight": return (p + "input_layernorm.weight", nil, false)
        case "ffn_norm.weight": return (p + "post_attention_layernorm.weight", nil, false)
        default: return nil
        }
    }

    /// What transformers' `convert_llama_weights_to_hf.py` writes for these parameters.
    static func hfConfig(params: JSONValue, dim: Int, layers: Int, heads: Int, kvHeads: Int, intermediate: Int,
                         vocab: Int, dtype: DType, tied: Bool) -> JSONValue {
        let theta = params["rope_theta"]?.doubleValue ?? 10000
        let eps = params["norm_eps"]?.doubleValue ?? 1e-5
        var entries: [(String, JSONValue)] = [
            ("architectures", .array([.string("LlamaForCausalLM")])), ("model_type", .string("llama")),
            ("hidden_size", .int(dim)), ("intermediate_size", .int(intermediate)),
            ("num_hidden_layers", .int(layers)), ("num_attention_heads", .int(heads)),
            ("num_key_value_heads", .int(kvHeads)), ("head_dim", .int(dim / heads)), ("vocab_size", .int(vocab)),
            ("rms_norm_eps", .double(eps)), ("rope_theta", .double(theta)),
            ("max_position_embeddings", .int(params["max_seq_len"]?.intValue ?? 2048)),
            ("hidden_act", .string("silu")), ("attention_bias", .bool(false)), ("mlp_bias", .bool(false)),
            ("tie_word_embeddings", .bool(tied)),
            ("torch_dtype", .string(dtype == .bf16 ? "bfloat16" : dtype == .f16 ? "float16" : "float32")),
        ]
        if params["use_scaled_rope"]?.boolValue == true {
            // Llama 3.1's rope scaling, as Meta's code applies it.
            entries.append(("rope_scaling", .object([
                ("rope_type", .string("llama3")), ("factor", .double(params["rope_scaling_factor"]?.doubleValue ?? 8)),
                ("low_freq_factor", .double(1)), ("high_freq_factor", .double(4)),
                ("original_max_position_embeddings", .int(8192)),
            ])))
        }
        return .object(entries)
    }

    /// The whole HF tensor `name` as a byte stream (row-major, HF row order) over the Meta files.
    public func byteSource(for name: String, files handles: [ReadOnlyFile]) throws -> ByteSource {
        guard let layout = layouts[name] else {
            throw ShardKitError(.notFound, "no tensor \(name) in \(directory)")
        }
        let sources = zip(layout.pieces, handles).map { $0.byteSource(in: $1) }
        let es = layout.pieces[0].dtype.size
        let total = layout.totalBytes
        let path = handles[0].path
        guard let dim = layout.dim else {
            let (source, offset) = sources[0]
            return RemappedReader(path: path, length: total) { p in (source, offset + p, total - p) }
        }
        // Row-major [outer, size, inner] around the split dimension; piece m holds `local` of `size`.
        let inner = layout.shape[(dim + 1)...].reduce(1, *) * es
        let size = layout.shape[dim], local = size / sources.count
        let rowBytes = size * inner
        if let hd = layout.permutedHeadSize {
            // Rows (dim 0) one at a time: HF row i is Meta row `metaRow(i)`.
            // (The split dimension is 0: a row is `inner` bytes.)
            return RemappedReader(path: path, length: total) { p in
                let i = p / inner, within = p % inner
                let head = i / hd, j = i % hd
                let meta = head * hd + (j < hd / 2 ? 2 * j : 2 * (j - hd / 2) + 1)
                let (source, offset) = sources[meta / local]
                return (source, offset + (meta % local) * inner + within, inner - within)
            }
        }
        return RemappedReader(path: path, length: total) { p in
            let outer = p / rowBytes, within = p % rowBytes
            let index = within / inner, byte = within % inner
            let m = index / local, l = index % local
            let (source, offset) = sources[m]
            return (source, offset + ((outer * local + l) * inner + byte), (local - l) * inner - byte)
        }
    }
}
