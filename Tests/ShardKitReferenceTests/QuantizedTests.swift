import Foundation
import Testing
import ShardKit
@testable import ShardKitReference

/// The quantized fixtures (fixtures/make_quantized.py) and the TP degrees their sizes allow.
/// FP8 block scales straddle ranks at 4 and 8 (320 rows in 128-row blocks); GPTQ act-order keeps its
/// row layers' scales whole, so its groups never constrain the degree.
let quantizedFixtures: [(name: String, degrees: [Int])] = [
    ("llama-fp8-block", [1, 2, 4, 8]), ("llama-fp8-channel", [1, 2, 4, 8]), ("llama-awq", [1, 2]),
    ("llama-gptq", [1]), ("llama-gptq-actorder", [1, 2, 4]), ("llama-gptq-8bit", [1]), ("llama-w4a16-ct", [1]),
    ("gpt-oss-mxfp4", [1, 2]),
]

/// Degrees the group size forbids (down_proj's input features per rank not a multiple of 32), which
/// --pad-intermediate makes possible.
let paddedFixtures: [(name: String, degrees: [Int], format: String)] = [
    ("llama-awq", [4], "AWQ"), ("llama-gptq", [2, 4], "GPTQ"), ("llama-gptq-8bit", [2, 4], "GPTQ"),
    ("llama-w4a16-ct", [2, 4], "compressed-tensors"),
]

@Suite("quantized checkpoints")
struct QuantizedTests {
    /// Every quantized Linear's dequantized weight equals the producer's dequantization
    /// (`dequantized.M.weight` in reference.safetensors), for the full model and for every rank's
    /// piece (read back from its own pieces only).
    @Test("dequantized weights equal the producer's, whole and per rank",
          arguments: quantizedFixtures.map(\.name).filter { $0 != "gpt-oss-mxfp4" })   // MXFP4: mxfp4()
    func dequantizedWeights(fixture: String) throws {
        let ckpt = try Checkpoint(path: fixturePath(fixture))
        let ref = try ReferenceFile(path: fixturePath(fixture) + "/reference.safetensors")
        let full = try DequantizingWeights.wrap(try CheckpointWeights(ckpt), config: ckpt.config!)
        let names = ref.file.tensors.map(\.name).filter { $0.hasPrefix("dequantized.") }
        #expect(!names.isEmpty)
        let tp = quantizedFixtures.first { $0.name == fixture }!.degrees.max()!
        let (set, _, dir) = try shardFixture(fixture, tp: tp)
        defer { removeDirectory(dir) }
        let ranks = try DequantizingWeights.wrap(try RankWeights(set), config: ckpt.config!)
        for name in names {
            let module = String(name.dropFirst("dequantized.".count))
            let want = try ref.floats(name)
            let got = try full.load(module, rank: 0)
            let s = ComparisonStats.compare(got.data, want, tolerance: 1e-6)
            #expect(s.passed, "\(fixture) \(module): rel \(s.maxRelError)")
            let shape = try ref.info(name).shape
            for r in 0..<tp {
                let piece = try ranks.load(module, rank: r)
                let rows = piece.labels(along: 0), cols = piece.labels(along: 1)
                var expected: [Float] = []
                for n in rows { for k in cols { expected.append(n < shape[0] && k < shape[1] ? want[n * shape[1] + k] : 0) } }
                #expect(ComparisonStats.compare(piece.data, expected, tolerance: 1e-6).passed, "\(module) rank \(r)")
            }
        }
    }

    @Test("shard + verify --reference at every degree the sizes allow", arguments: quantizedFixtures)
    func verifyAtDegrees(fixture: String, degrees: [Int]) throws {
        for tp in degrees {
            let (set, ckpt, dir) = try shardFixture(fixture, tp: tp)
            defer { removeDirectory(dir) }
            let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: fixturePath(fixture) + "/reference.safetensors",
                                                     options: NumericsOptions())
            print(String(format: "[numerics] %-20@ tp=%d ref(full) rel %.2e | ref(TP) rel %.2e | TP-vs-full rel %.2e",
                         fixture as NSString, tp, report.reference?.maxRelError ?? -1, report.referenceTP?.maxRelError ?? -1,
                         report.final.maxRelError))
            #expect(report.passed, "\(fixture) at TP \(tp)")
            #expect(Verify.reconstruction(set, source: ckpt).status == .pass)
        }
    }

    /// reshard between 2 and 4 (where both are allowed) equals sharding at the new degree; --tp 1 gives
    /// back the source bytes.
    @Test("reshard equals shard; --tp 1 gives the source back", arguments: quantizedFixtures)
    func reshardRoundTrip(fixture: String, degrees: [Int]) throws {
        let high = degrees.max()!
        let (set, _, dir) = try shardFixture(fixture, tp: high)
        defer { removeDirectory(dir) }
        for tp in degrees where tp != high {
            let out = temporaryPath("\(fixture)-reshard-\(tp)")
            defer { removeDirectory(out) }
            try Reshard.run(input: set, tp: tp, output: out)
            let (direct, _, directDir) = try shardFixture(fixture, tp: tp)
            defer { removeDirectory(directDir) }
            let a = try ShardSet(directory: out).manifest, b = direct.manifest
            #expect(a.tensors == b.tensors, "\(fixture) \(high) → \(tp)")
            for f in b.ranks.flatMap(\.files) {
                #expect(FileManager.default.contentsEqual(atPath: out + "/" + f, andPath: directDir + "/" + f), "\(f)")
            }
        }
        let one = temporaryPath("\(fixture)-one")
        defer { removeDirectory(one) }
        try Reshard.run(input: set, tp: 1, output: one)
        #expect(FileManager.default.contentsEqual(atPath: one + "/model.safetensors",
                                                  andPath: fixturePath(fixture) + "/model.safetensors"))
    }

    /// A degree the group size does not allow is refused with the numbers; `--pad-intermediate` makes it
    /// possible, exactly: verify passes against transformers' logits, reshard drops the padding, and
    /// --tp 1 gives the source bytes back.
    @Test("a degree the groups forbid: refused with the numbers, or padded exactly", arguments: paddedFixtures)
    func padding(fixture: String, degrees: [Int], format: String) throws {
        let dir = fixturePath(fixture)
        let ckpt = try Checkpoint(path: dir)
        var rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
        let out = temporaryPath("\(fixture)-pad")
        defer { removeDirectory(out) }
        for tp in degrees {
            removeDirectory(out)
            do {
                rules.padIntermediate = false
                try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: tp, output: out)
                Issue.record("\(fixture) at TP \(tp) should be refused")
            } catch let e as ShardKitError {
                #expect(e.code == .impossibleSplit && e.message.contains("down_proj")
                        && e.message.contains("\(ckpt.config!.intermediateSize! / tp) per rank), which is not a multiple of group size 32 (\(format)"),
                        "\(e.message)")
            }
            #expect(!FileManager.default.fileExists(atPath: out))
            rules.padIntermediate = true
            let m = try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: tp, output: out)
            let padded = m.tensors.filter { $0.value.paddedSize != nil }.map(\.key)
            #expect(padded.contains { $0.contains("mlp.down_proj") } && padded.contains { $0.contains("mlp.gate_proj") })
            #expect(padded.allSatisfy { $0.contains(".mlp.") })
            let set = try ShardSet(directory: out)
            let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: dir + "/reference.safetensors",
                                                     options: NumericsOptions())
            print(String(format: "[numerics] %-20@ tp=%d padded: ref(TP) rel %.2e | TP-vs-full rel %.2e", fixture as NSString,
                         tp, report.referenceTP?.maxRelError ?? -1, report.final.maxRelError))
            #expect(report.passed, "padded \(fixture) at TP \(tp)")
            #expect(Verify.reconstruction(set, source: ckpt).status == .pass)
            let one = temporaryPath("\(fixture)-pad-one")
            defer { removeDirectory(one) }
            try Reshard.run(input: set, tp: 1, output: one)
            #expect(FileManager.default.contentsEqual(atPath: one + "/model.safetensors", andPath: dir + "/model.safetensors"))
        }
        // Padded 2 → 4 (keeping the padding, recomputed for 4) equals sharding padded at 4.
        do {
            let two = temporaryPath("\(fixture)-pad-2"), four = temporaryPath("\(fixture)-pad-4")
            let resharded = temporaryPath("\(fixture)-pad-2to4")
            defer { for d in [two, four, resharded] { removeDirectory(d) } }
            try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: 2, output: two)
            let direct = try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: 4, output: four)
            let m = try Reshard.run(input: try ShardSet(directory: two), tp: 4, output: resharded, padIntermediate: true)
            #expect(m.tensors == direct.tensors)
        }
    }

    /// Wrong layouts a splitter can produce fail verify.
    @Test("AWQ qweight split along the wrong dimension fails verify")
    func awqWrongDimension() throws {
        // A column layer (gate_proj) has qweight [K, N/8] split along N (dim 1); split it along K instead.
        let wrong = try shardOverriding("llama-awq", tp: 2) { t in
            t.name.hasSuffix("gate_proj.qweight") ? .column(dim: 0) : nil
        }
        defer { removeDirectory(wrong.directory) }
        #expect(try failsVerify(wrong.set, wrong.checkpoint, "llama-awq"))
    }

    @Test("GPTQ act-order scales split by groups instead of whole fail verify")
    func gptqActOrderScalesSplit() throws {
        let fixture = "llama-gptq-actorder"
        // Each rank takes the groups its input features would have without act-order (by position):
        // with act-order, g_idx sends some of them to groups another rank holds.
        let wrong = try shardOverriding(fixture, tp: 2) { t in
            guard t.name.hasSuffix("down_proj.scales") || t.name.hasSuffix("down_proj.qzeros") else { return nil }
            let k = t.shape[0] * 32
            return .units(dim: 0, UnitSplit(base: .row(dim: 1), size: k, unit: 32, exact: false, what: "groups"))
        }
        defer { removeDirectory(wrong.directory) }
        #expect(try failsVerify(wrong.set, wrong.checkpoint, fixture))
    }

    @Test("FP8 block scales taken by rank order instead of the blocks each rank's rows fall in fail verify")
    func fp8ScalesByRows() throws {
        let fixture = "llama-fp8-block"
        let (set, ckpt, dir) = try shardFixture(fixture, tp: 4)
        defer { removeDirectory(dir) }
        let name = "model.layers.0.mlp.gate_proj.weight_scale_inv"
        // 320 rows in 128-row blocks: ranks hold blocks [0], [0, 1], [1], [1, 2]; a splitter that
        // hands out scale rows in rank order gives [0], [1, 2], [2], [2, 2].
        let counts = set.manifest.tensors[name]!.pieces.map { $0.shape[0] }
        #expect(counts == [1, 2, 1, 2])
        try corruptRows(set, checkpoint: ckpt, name: name, rows: [[0], [1, 2], [2], [2, 2]])
        #expect(try failsVerify(try ShardSet(directory: dir), ckpt, fixture))
    }

    func failsVerify(_ set: ShardSet, _ ckpt: Checkpoint, _ fixture: String) throws -> Bool {
        do {
            let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: fixturePath(fixture) + "/reference.safetensors",
                                                     options: NumericsOptions())
            print("[wrong layout] \(fixture): passed \(report.passed), TP vs full rel \(report.final.maxRelError)")
            return !report.passed
        } catch let e as ShardKitError {
            print("[wrong layout] \(fixture): \(e.message)")
            return e.code == .verificationFailed
        }
    }

    /// MXFP4 (gpt-oss): the experts' blocks and scales follow the unquantized [E, K, N] tensors' rules
    /// (gate/up in whole pairs, down in blocks of 32 input features).
    @Test("MXFP4: dequantized experts equal transformers', verify at 1 and 2, 4 refused with the numbers")
    func mxfp4() throws {
        let fixture = "gpt-oss-mxfp4"
        let ckpt = try Checkpoint(path: fixturePath(fixture))
        let ref = try ReferenceFile(path: fixturePath(fixture) + "/reference.safetensors")
        let full = try DequantizingWeights.wrap(try CheckpointWeights(ckpt), config: ckpt.config!)
        let names = ref.file.tensors.map(\.name).filter { $0.hasPrefix("dequantized.") }
        #expect(names.count == 4)
        for name in names {
            let module = String(name.dropFirst("dequantized.".count))
            let want = try ref.floats(name), shape = try ref.info(name).shape   // [E, N, K]
            let got = try full.load(module, rank: 0)                               // [E, K, N]
            #expect(got.shape == [shape[0], shape[2], shape[1]])
            var transposed = [Float](repeating: 0, count: want.count)
            for e in 0..<shape[0] { for n in 0..<shape[1] { for k in 0..<shape[2] {
                transposed[(e * shape[2] + k) * shape[1] + n] = want[(e * shape[1] + n) * shape[2] + k]
            } } }
            #expect(ComparisonStats.compare(got.data, transposed, tolerance: 1e-6).passed, "\(module)")
        }
        for tp in [1, 2] {
            let (set, _, dir) = try shardFixture(fixture, tp: tp)
            defer { removeDirectory(dir) }
            let report = try ReferenceForward.verify(shards: set, full: ckpt, reference: fixturePath(fixture) + "/reference.safetensors",
                                                     options: NumericsOptions())
            print(String(format: "[numerics] gpt-oss-mxfp4 tp=%d ref(TP) rel %.2e | TP-vs-full rel %.2e", tp,
                         report.referenceTP?.maxRelError ?? -1, report.final.maxRelError))
            #expect(report.passed)
        }
        do {
            _ = try shardFixture(fixture, tp: 4)
            Issue.record("TP 4 cuts MXFP4 blocks and should be refused")
        } catch let e as ShardKitError {
            #expect(e.message.contains("16 per rank), which is not a multiple of MXFP4 blocks of 32 values"), "\(e.message)")
        }
    }

    @Test("MXFP4 gate/up split in halves instead of pairs fails verify")
    func mxfp4Halves() throws {
        let fixture = "gpt-oss-mxfp4"
        let wrong = try shardOverriding(fixture, tp: 2) { t in
            guard t.name.contains("experts.gate_up_proj") else { return nil }
            let rows = t.shape[1]
            return .fused(dim: 1, parts: [FusedPart(size: rows / 2, split: .even), FusedPart(size: rows / 2, split: .even)])
        }
        defer { removeDirectory(wrong.directory) }
        #expect(try failsVerify(wrong.set, wrong.checkpoint, fixture))
    }
}
