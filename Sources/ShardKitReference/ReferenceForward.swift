import Foundation
import ShardKit

/// The numerics half of `shardkit verify`: a reference forward pass computed on the full weights and
/// again as the shard set's G ranks (each holding only its pieces, laid out as the manifest says),
/// exchanging partial results through simulated collectives as a Megatron/vLLM TP server does.
///
/// Compute is f32 (16- and 8-bit weights widened), matrix products through `cblas_sgemm`; weights are
/// loaded layer by layer. Comparisons use `ComparisonStats` (relative error = max|a − b| / max|b|).
public enum ReferenceForward {
    /// config.json model types with a reference forward pass.
    public static var supportedModelTypes: [String] { Model.supported }

    /// Runs the full pass (weights from `full`, or reassembled from `shards` when nil: then a wrong
    /// layout is seen by both passes alike and only the reference comparison can catch it) and the TP
    /// pass on `shards`, comparing every layer's output and the final output, and both with
    /// `reference` (a reference.safetensors holding `input_ids` and `logits` or `last_hidden_state`)
    /// when given. Throws `verificationFailed` for structural impossibilities (a rank lacks the KV head
    /// its query heads need, pieces that no collective can combine, unsupported architecture);
    /// numeric disagreement is `passed == false`.
    public static func verify(shards: ShardSet, full: Checkpoint?, reference: String?,
                              options: NumericsOptions) throws -> NumericsReport {
        try GemmEngine.withSingleThreadedBLAS {
            try run(shards: shards, full: full, reference: reference, options: options)
        }
    }

    private static func run(shards: ShardSet, full: Checkpoint?, reference: String?,
                            options: NumericsOptions) throws -> NumericsReport {
        let start = ContinuousClock.now
        let config: ModelConfig
        if let c = full?.config {
            config = c
        } else {
            let path = Path.join(shards.directory, "config.json")
            do {
                config = try ModelConfig(path: path)
            } catch let e as ShardKitError where e.errno == ENOENT {
                throw ShardKitError(.verificationFailed, "\(path): missing; the numerics check needs config.json",
                                    underlying: e)
            }
        }
        let model = try Model(config: config)

        var tokens = options.tokens
        var types: [Int]? = nil
        var expected: [Float]? = nil
        if let reference {
            let ref = try ReferenceFile(path: reference)
            let ids = try ref.ints("input_ids")
            if let tokens, tokens != ids {
                throw ShardKitError(.verificationFailed, "\(reference): its input_ids differ from the tokens asked "
                    + "for; the reference cannot be compared")
            }
            tokens = ids
            if ref.has("token_type_ids") { types = try ref.ints("token_type_ids") }
            expected = try ref.floats(model.outputName)
            guard expected!.count == ids.count * model.outputWidth else {
                throw ShardKitError(.verificationFailed, "\(reference): \(model.outputName) has \(expected!.count) "
                    + "values, expected \(ids.count) × \(model.outputWidth)")
            }
        }
        let input = tokens ?? defaultTokens(count: options.tokenCount, vocab: model.vocab)
        guard !input.isEmpty else { throw ShardKitError(.verificationFailed, "no input tokens") }
        if let bad = input.first(where: { $0 < 0 || $0 >= model.vocab }) {
            throw ShardKitError(.verificationFailed, "token id \(bad) outside the vocabulary 0..<\(model.vocab)")
        }
        if let types, types.count != input.count {
            throw ShardKitError(.verificationFailed, "\(reference ?? "reference"): token_type_ids has "
                + "\(types.count) values, input_ids \(input.count)")
        }

        let gemm = GemmEngine()
        let fullWeights: WeightProvider = try full.map { try CheckpointWeights($0) } ?? ReassembledWeights(shards)
        // A quantized model's weights are dequantized in f32, the full model's and each rank's alike.
        let fullModelWeights = try DequantizingWeights.wrap(fullWeights, config: config)
        var snapshots: [String: [Float]] = [:]
        var order: [String] = []
        let fullContext = TPContext(weights: fullModelWeights, gemm: gemm)
        let fullOut = try model.forward(fullContext, tokens: input, tokenTypes: types) { name, acts in
            snapshots[name] = acts[0].data
            order.append(name)
        }

        let tol = options.tolerance
        var stats: [String: ComparisonStats] = [:]
        func compareRanks(_ acts: [Act], _ want: [Float], name: String, tolerance: Double) throws -> ComparisonStats {
            var worst: ComparisonStats? = nil
            for (r, a) in acts.enumerated() {
                guard a.data.count == want.count, a.labels == Array(0..<a.cols) else {
                    throw ShardKitError(.verificationFailed, "rank \(r): \(name) has features \(describe(a.labels)), "
                        + "the full pass \(want.count / max(a.rows, 1))")
                }
                let s = ComparisonStats.compare(a.data, want, tolerance: tolerance)
                worst = worst.map { $0.worst(s) } ?? s
            }
            return worst!
        }
        let rankWeights = try RankWeights(shards)
        let tpContext = TPContext(weights: try DequantizingWeights.wrap(rankWeights, config: config), gemm: gemm)
        // Pipeline stages run in sequence: after each state the pass observes, the next layer (or the
        // final norm and head) runs on the ranks of the stage that holds it, which receive the hidden
        // state (the stages' send / receive); each reads only its own ranks' pieces.
        let layout = shards.layout
        if layout.pp > 1, layout.stageLayers.last?.upperBound != model.layers {
            throw ShardKitError(.verificationFailed, "the shard set's stages hold layers 0..<"
                + "\(layout.stageLayers.last?.upperBound ?? 0), config.json says \(model.layers)")
        }
        var stageOf: [String: Int] = [:]
        rankWeights.stage = 0
        let tpOut = try model.forward(tpContext, tokens: input, tokenTypes: types) { name, acts in
            guard let want = snapshots[name] else {
                throw ShardKitError(.verificationFailed, "TP pass produced \(name), the full pass did not")
            }
            stats[name] = try compareRanks(acts, want, name: name, tolerance: tol)
            stageOf[name] = rankWeights.stage
            let next = name == "embeddings" ? 0
                : name.hasPrefix("layers.") ? Int(name.dropFirst(7)).map { $0 + 1 } : nil
            if let next { rankWeights.stage = next < model.layers ? layout.stage(ofLayer: next) ?? 0 : layout.pp - 1 }
        }
        stageOf[model.outputName] = rankWeights.stage
        var layers = order.compactMap { n in stats[n].map { LayerComparison(name: n, stats: $0) } }
        let final = try compareRanks(tpOut, fullOut[0].data, name: model.outputName, tolerance: tol)

        var refStats: ComparisonStats? = nil, refTP: ComparisonStats? = nil, refTol: Double? = nil
        if let expected {
            guard fullOut[0].data.count == expected.count else {
                throw ShardKitError(.verificationFailed, "the full pass's \(model.outputName) has "
                    + "\(fullOut[0].data.count) values, the reference \(expected.count); "
                    + "config.json disagrees with the tensors' shapes")
            }
            let lowPrecision = shards.manifest.tensors.values.contains { ![.f32, .f64].contains($0.dtype) }
            let t = lowPrecision ? max(tol, options.lowPrecisionReferenceTolerance) : tol
            refTol = t
            refStats = ComparisonStats.compare(fullOut[0].data, expected, tolerance: t)
            refTP = try compareRanks(tpOut, expected, name: model.outputName, tolerance: t)
        }
        // Split weights the pass never read (experts no token was routed to, a pooler, ...) are checked
        // one by one as linear maps, so that no wrong layout goes unseen.
        let unread = shards.manifest.order.filter { !rankWeights.loaded.contains($0) }
        let unreadChecks = try GenericLinearCheck
            .check(shards: shards, names: unread, full: fullWeights, ctx: TPContext(weights: rankWeights, gemm: gemm),
                   tolerance: tol)
            .map { LayerComparison(name: "weight \($0.name) (not read by the pass)", stats: $0.stats) }
        layers += unreadChecks
        var all = layers + [LayerComparison(name: model.outputName, stats: final)]
        if let refStats { all.append(LayerComparison(name: "reference (full)", stats: refStats)) }
        if let refTP { all.append(LayerComparison(name: "reference (TP)", stats: refTP)) }
        let worst = all.max { $0.stats.maxRelError < $1.stats.maxRelError }
        let passed = all.allSatisfy { $0.stats.passed }
        stats[model.outputName] = final
        let stages: [StageComparison]? = layout.isTensorParallelOnly ? nil : (0..<layout.pp).map { s in
            let names = (order + [model.outputName]).filter { stageOf[$0] == s && stats[$0] != nil }
            let range = layout.stageLayers.isEmpty ? 0..<model.layers : layout.stageLayers[s]
            return StageComparison(stage: s, ranks: Array((s * layout.tp)..<((s + 1) * layout.tp)),
                                   layers: [range.lowerBound, range.upperBound], checkpoints: names,
                                   worst: names.dropFirst().reduce(stats[names[0]]!) { $0.worst(stats[$1]!) })
        }
        return NumericsReport(architecture: model.type, tp: shards.tp, tokens: input.count, layers: layers,
                              final: final, reference: refStats, referenceTP: refTP, worstLayer: worst?.name,
                              passed: passed, tolerance: tol, referenceTolerance: refTol,
                              gemmFlops: gemm.flops, gemmWorkers: gemm.workers,
                              gemmSeconds: gemm.secondsPerWorker,
                              gemmGFLOPS: gemm.gflops, productGFLOPS: gemm.productGFLOPS,
                              seconds: start.duration(to: .now).seconds,
                              pp: layout.pp, ep: layout.ep, stages: stages)
    }

    /// The default input: 16 deterministic ids covering 0, vocab − 1 and vocab − 2.
    /// A fixed deterministic input of `count` ids spread over the vocabulary, including 0, V − 1 and
    /// V − 2 (the last vocab rows, where padding and the last rank's range begin).
    static func defaultTokens(count: Int, vocab: Int) -> [Int] {
        var t = (0..<max(count, 1)).map { ($0 * 7919 + 13) % vocab }
        let edges = [(1, vocab - 1), (4, vocab - 2), (5, 0)]
        for (i, id) in edges where i < t.count && id >= 0 { t[i] = id }
        if t.count < 6 { t[0] = 0 }
        return t
    }
}

/// A reference.safetensors: integer inputs and f32 outputs.
struct ReferenceFile {
    let file: SafetensorsFile
    let handle: ReadOnlyFile

    init(path: String) throws {
        file = try SafetensorsFile(path: path)
        handle = try ReadOnlyFile(path: path)
    }
    func has(_ name: String) -> Bool { file.tensor(named: name) != nil }

    private func bad(_ message: String) -> ShardKitError {
        ShardKitError(.verificationFailed, "\(file.path): \(message)")
    }

    func info(_ name: String) throws -> TensorInfo {
        guard let t = file.tensor(named: name) else { throw bad("no tensor \(name)") }
        return t
    }

    func ints(_ name: String) throws -> [Int] {
        let t = try info(name)
        let bytes = try handle.read(count: t.byteCount, at: t.offset)
        return try bytes.withUnsafeBytes { p in
            switch t.dtype {
            case .i64: return (0..<t.elementCount).map { Int(p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            case .i32: return (0..<t.elementCount).map { Int(p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
            default: throw bad("\(name) is \(t.dtype.rawValue), expected I64 or I32")
            }
        }
    }

    func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        let bytes = try handle.read(count: t.byteCount, at: t.offset)
        return try bytes.withUnsafeBytes { try Widen.toFloat($0, dtype: t.dtype, count: t.elementCount, name: name) }
    }
}
