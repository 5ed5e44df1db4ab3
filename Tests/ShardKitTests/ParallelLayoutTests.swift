import Foundation
import Testing
import ShardKit
import ShardKitTestSupport

/// Shards `fixture` over (tp, pp, ep) into `out`.
@discardableResult
func shardLayout(_ fixture: String, tp: Int, pp: Int = 1, ep: Int = 1, stageSizes: [Int]? = nil,
                 placement: ExpertPlacement? = nil, to out: String,
                 options: ShardSetWriter.Options = .init()) throws -> Manifest {
    let ckpt = try loadCheckpoint(fixture)
    let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
    let request = LayoutRequest(tp: tp, pp: pp, stageSizes: stageSizes, ep: ep, placement: placement)
    return try Shard.run(checkpoint: ckpt, sourcePath: Fixtures.path(fixture), rules: rules, layout: request,
                         output: out, options: options)
}

/// The layer index in a tensor name (`model.layers.3.…` → 3).
func layerIndex(_ name: String) -> Int? { name.split(separator: ".").lazy.compactMap { Int($0) }.first }

/// The expert index in a tensor name (`…experts.2.w1.weight` → 2).
func expertIndex(_ name: String) -> Int? {
    let parts = name.split(separator: ".")
    guard let i = parts.firstIndex(of: "experts"), i + 1 < parts.count else { return nil }
    return Int(parts[i + 1])
}

@Suite("pipeline stages and expert parallelism")
struct ParallelLayoutTests {
    @Test("vLLM's default partition: the remainder on the stages before the last")
    func defaultPartition() throws {
        #expect(try ParallelLayout.defaultStageSizes(layers: 22, stages: 4) == [5, 6, 6, 5])
        #expect(try ParallelLayout.defaultStageSizes(layers: 5, stages: 3) == [2, 2, 1])
        #expect(try ParallelLayout.defaultStageSizes(layers: 4, stages: 3) == [1, 2, 1])
        #expect(try ParallelLayout.defaultStageSizes(layers: 61, stages: 4) == [15, 15, 16, 15])
        #expect(try ParallelLayout.defaultStageSizes(layers: 61, stages: 2) == [31, 30])
        #expect(try ParallelLayout.defaultStageSizes(layers: 32, stages: 4) == [8, 8, 8, 8])
        #expect(try ParallelLayout.defaultStageSizes(layers: 3, stages: 1) == [3])
        #expect(ParallelLayout.contiguousPlacement(experts: 10, groups: 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]])
    }

    @Test("tensor roles from names: layer, expert, first stage, last stage",
          arguments: [
            ("model.embed_tokens.weight", TensorRole.first),
            ("model.norm.weight", .last),
            ("lm_head.weight", .last),
            ("transformer.ln_f.weight", .last),
            ("gpt_neox.final_layer_norm.bias", .last),
            ("embed_out.weight", .last),
            ("model.decoder.project_out.weight", .last),
            ("model.decoder.project_in.weight", .first),
            ("model.decoder.embed_positions.weight", .first),
            ("bert.pooler.dense.weight", .last),
            ("bert.embeddings.LayerNorm.weight", .first),
            ("transformer.word_embeddings_layernorm.weight", .first),
            ("transformer.h.3.attn.c_attn.weight", .layer(3, expert: nil)),
            ("bert.encoder.layer.11.output.dense.weight", .layer(11, expert: nil)),
            ("model.layers.2.block_sparse_moe.experts.7.w1.weight", .layer(2, expert: 7)),
            ("model.layers.2.mlp.shared_experts.gate_proj.weight", .layer(2, expert: nil)),
            ("model.layers.2.mlp.experts.gate_up_proj", .layer(2, expert: nil)),
          ])
    func roles(name: String, role: TensorRole) {
        #expect(TensorRole.of(name) == role)
    }

    /// Every stage holds exactly its layers: each layer in one stage, contiguous, in order; the
    /// embedding with the first stage; the final norm and head with the last; a tied embedding with both.
    @Test("every stage holds exactly its layers, embedding first, head last", arguments: [
        ("llama-tied-3l", 1, 3, [1, 1, 1]), ("llama-tied-3l", 2, 2, [2, 1]), ("mixtral-4l", 2, 2, [2, 2]),
        ("mixtral-4l", 1, 3, [1, 2, 1]), ("mixtral-4l", 1, 4, [1, 1, 1, 1]), ("gpt2", 2, 2, [1, 1]),
        ("bert", 2, 2, [1, 1]),
    ])
    func stagesHoldTheirLayers(fixture: String, tp: Int, pp: Int, sizes: [Int]) throws {
        try withTempDir { dir in
            let m = try shardLayout(fixture, tp: tp, pp: pp, to: dir + "/out")
            let set = try ShardSet(directory: dir + "/out")
            #expect(m.version == 2 && set.layout.pp == pp && set.worldSize == tp * pp)
            #expect(set.layout.stageLayers.map(\.count) == sizes)
            #expect(set.layout.stageLayers.first?.lowerBound == 0)
            let lastStage = pp - 1
            var layersSeen: [Int: Int] = [:]
            for w in 0..<set.worldSize {
                let view = try set.rank(w)
                #expect(view.stage == w / tp && view.tpRank == w % tp)
                let layers = try #require(view.layers)
                for name in view.names {
                    if let l = layerIndex(name) {
                        #expect(layers.contains(l), "\(name) on rank \(w) (stage layers \(layers))")
                        if let s = layersSeen[l] { #expect(s == view.stage) } else { layersSeen[l] = view.stage }
                    }
                }
                // Each rank holds every tensor of its stage's layers (TP only: every rank of the stage).
                let expected = m.order.filter { layerIndex($0).map(layers.contains) ?? false }
                #expect(view.names.filter { layerIndex($0) != nil } == expected)
            }
            #expect(layersSeen.keys.sorted() == Array(0..<sizes.reduce(0, +)))
            let outside = m.order.filter { layerIndex($0) == nil }
            for name in outside {
                let stages = m.tensors[name]!.stages
                let isHead = ["lm_head.weight", "model.norm.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
                              "ln_f.weight", "ln_f.bias"].contains(name) || name.contains("pooler")
                let isTiedEmbedding = ["model.embed_tokens.weight", "transformer.wte.weight", "wte.weight"].contains(name)
                    && !m.tensors.keys.contains("lm_head.weight") && fixture != "bert"
                if isTiedEmbedding {
                    #expect(stages == [0, lastStage], "\(name) is the tied LM head: first and last stage")
                } else {
                    #expect(stages == [isHead ? lastStage : 0], "\(name): stages \(stages)")
                }
            }
            // The bytes: pieces reassemble to the source, and --tp 1 gives the source back.
            #expect(try reassembleAll(dir + "/out") == (try sourceTensors(fixture)).mapValues(\.bytes))
        }
    }

    @Test("EP = TP: every expert of every layer whole on exactly one rank; 1 < EP < TP: split over its group",
          arguments: [(2, 2), (4, 4), (4, 2), (2, 1)])
    func expertsPlaced(tp: Int, ep: Int) throws {
        try withTempDir { dir in
            let m = try shardLayout("mixtral-4l", tp: tp, pp: 1, ep: ep, to: dir + "/out")
            let groupSize = tp / ep
            for (name, t) in m.tensors {
                guard let e = expertIndex(name), let layer = layerIndex(name) else {
                    #expect(t.pieces.count == tp, "\(name): non-expert tensors on every TP rank")
                    continue
                }
                if ep == 1 { #expect(t.pieces.count == tp); continue }
                let group = try #require(m.layout.experts[layer]?.firstIndex { $0.contains(e) })
                #expect(t.group == group)
                #expect(t.pieces.map(\.rank) == Array((group * groupSize)..<((group + 1) * groupSize)), "\(name)")
                if groupSize == 1 {
                    #expect(t.pieces[0].shape == t.shape, "\(name) must be whole")
                } else {
                    let covered = t.pieces.flatMap { $0.intervals.map { $0[1] - $0[0] } }.reduce(0, +)
                    #expect(covered == t.shape[t.rule.dim!], "\(name) split over exactly its group")
                }
            }
            // Contiguous blocks by default: 4 experts over EP groups.
            if ep > 1 { #expect(m.layout.experts[0] == ParallelLayout.contiguousPlacement(experts: 4, groups: ep)) }
            #expect(try reassembleAll(dir + "/out") == (try sourceTensors("mixtral-4l")).mapValues(\.bytes))
        }
    }

    @Test("an expert placement file places experts per layer; the loader learns which it holds")
    func customPlacement() throws {
        try withTempDir { dir in
            let json = #"{"default": [[0, 3], [1, 2]], "layers": {"2": [[2], [0, 1, 3]]}}"#
            let placement = try ExpertPlacement(json: try JSONValue.parse(Array(json.utf8)), origin: "placement.json")
            try shardLayout("mixtral-4l", tp: 2, pp: 2, ep: 2, placement: placement, to: dir + "/out")
            let set = try ShardSet(directory: dir + "/out")
            #expect(set.layout.experts[0] == [[0, 3], [1, 2]] && set.layout.experts[2] == [[2], [0, 1, 3]])
            let r3 = try set.rank(stage: 1, tp: 1)
            #expect(r3.rank == 3 && r3.layers == 2..<4)
            #expect(r3.experts == [2: [0, 1, 3], 3: [1, 2]])
            #expect(r3.names.contains("model.layers.2.block_sparse_moe.experts.3.w1.weight"))
            #expect(!r3.names.contains("model.layers.2.block_sparse_moe.experts.2.w1.weight"))
            #expect(!r3.names.contains("model.layers.0.self_attn.q_proj.weight"))
            expectShardKitError(caught { _ = try r3.tensor("model.layers.0.self_attn.q_proj.weight") }, .notFound,
                                ["rank 3 holds no piece", "held by ranks 0..<2"])
            let whole = try r3.tensor("model.layers.2.block_sparse_moe.experts.3.w2.weight")
            #expect(whole.shape == [64, 48])
        }
    }

    @Test("impossible layouts are refused with the numbers", arguments: [
        (LayoutRequest(tp: 1, pp: 5), ["5 pipeline stages for 4 layers", "more stages than layers"]),
        (LayoutRequest(tp: 1, pp: 2, stageSizes: [1, 2]), ["add up to 3", "4 layers"]),
        (LayoutRequest(tp: 1, pp: 2, stageSizes: [4, 0]), ["stage 1 has 0 layers"]),
        (LayoutRequest(tp: 1, pp: 2, stageSizes: [4]), ["1 stage sizes for 2 pipeline stages"]),
        (LayoutRequest(tp: 4, ep: 3), ["EP 3 does not divide TP 4"]),
        (LayoutRequest(tp: 8, ep: 8), ["4 experts cannot fill 8 EP groups"]),
        (LayoutRequest(tp: 2, ep: 2, placement: ExpertPlacement(fallback: [[0, 1], [1, 2, 3]])),
         ["expert 1 twice", "groups 0 and 1"]),
        (LayoutRequest(tp: 2, ep: 2, placement: ExpertPlacement(fallback: [[0, 1], [2]])),
         ["leaves out expert 3"]),
        (LayoutRequest(tp: 2, ep: 2, placement: ExpertPlacement(fallback: [[0, 1, 2, 3]])),
         ["placement has 1 groups, EP is 2"]),
        (LayoutRequest(tp: 2, ep: 2, placement: ExpertPlacement(fallback: nil, layers: [9: [[0], [1, 2, 3]]])),
         ["names layer 9, which has no experts"]),
        (LayoutRequest(tp: 1, ep: 1, placement: ExpertPlacement(fallback: [[0, 1, 2, 3]])),
         ["an expert placement needs EP > 1"]),
    ])
    func refused(request: LayoutRequest, words: [String]) throws {
        try withTempDir { dir in
            let ckpt = try loadCheckpoint("mixtral-4l")
            let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
            let e = caught {
                try Shard.run(checkpoint: ckpt, sourcePath: Fixtures.path("mixtral-4l"), rules: rules,
                              layout: request, output: dir + "/out")
            }
            let code: ShardKitError.Code = words.contains { $0.contains("needs EP") } ? .invalidArgument : .impossibleSplit
            expectShardKitError(e, code, words)
            #expect(!exists(dir + "/out"), "nothing written for a refused layout")
        }
    }

    @Test("EP on a dense model, and on fused expert tensors, is refused")
    func epNeedsPerExpertTensors() throws {
        try withTempDir { dir in
            let ckpt = try loadCheckpoint("llama-tied-3l")
            let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
            expectShardKitError(caught {
                try Shard.run(checkpoint: ckpt, sourcePath: "x", rules: rules, layout: LayoutRequest(tp: 2, ep: 2),
                              output: dir + "/out")
            }, .impossibleSplit, ["EP 2 needs a mixture-of-experts model"])
            let fused: [(name: String, dtype: DType, shape: [Int])] = [
                ("model.layers.0.mlp.experts.gate_up_proj", .f32, [4, 8, 16]),
                ("model.layers.0.mlp.experts.0.down_proj.weight", .f32, [8, 8]),
            ]
            expectShardKitError(caught {
                _ = try ShardPlan(tensors: fused, rules: [.replicated, .replicated], request: LayoutRequest(tp: 2, ep: 2),
                                  config: nil)
            }, .impossibleSplit, ["model.layers.0.mlp.experts.gate_up_proj", "every expert of its layer in one tensor"])
        }
    }

    @Test("reshard (2,2,1) → (4,1,1) equals shard --tp 4; (2,1,2) → (1,1,1) gives the source bytes")
    func reshardBetweenLayouts() throws {
        try withTempDir { dir in
            for fixture in ["mixtral-4l", "llama-tied-3l"] {
                try shardLayout(fixture, tp: 2, pp: 2, to: dir + "/\(fixture)-221")
                try Reshard.run(input: try ShardSet(directory: dir + "/\(fixture)-221"), tp: 4,
                                output: dir + "/\(fixture)-411")
                try shardFixture(fixture, tp: 4, to: dir + "/\(fixture)-tp4")
                for r in 0..<4 {
                    #expect(try readBytes(dir + "/\(fixture)-411/rank-\(r)/model.safetensors")
                            == (try readBytes(dir + "/\(fixture)-tp4/rank-\(r)/model.safetensors")), "\(fixture) rank \(r)")
                }
                let a = try readManifest(dir + "/\(fixture)-411"), b = try readManifest(dir + "/\(fixture)-tp4")
                #expect(a.version == 1 && a.tensors == b.tensors && a.layout == b.layout)
            }
            try shardLayout("mixtral-4l", tp: 2, ep: 2, to: dir + "/ep")
            try Reshard.run(input: try ShardSet(directory: dir + "/ep"), tp: 1, output: dir + "/one")
            #expect(try readBytes(dir + "/one/model.safetensors")
                    == (try readBytes(Fixtures.path("mixtral-4l") + "/model.safetensors")))
            // And between two non-trivial layouts: (2,2,2) → (4,1,2) → (1,3,1) → shard at (1,3,1).
            try shardLayout("mixtral-4l", tp: 2, pp: 2, ep: 2, to: dir + "/222")
            try Reshard.run(input: try ShardSet(directory: dir + "/222"), layout: LayoutRequest(tp: 4, ep: 2),
                            output: dir + "/412")
            try Reshard.run(input: try ShardSet(directory: dir + "/412"), layout: LayoutRequest(tp: 1, pp: 3),
                            output: dir + "/131")
            try shardLayout("mixtral-4l", tp: 1, pp: 3, to: dir + "/131-direct")
            for r in 0..<3 {
                #expect(try readBytes(dir + "/131/rank-\(r)/model.safetensors")
                        == (try readBytes(dir + "/131-direct/rank-\(r)/model.safetensors")))
            }
            #expect(try readManifest(dir + "/131").tensors == (try readManifest(dir + "/131-direct")).tensors)
        }
    }

    @Test("RankSlicer reads stage s, TP rank r straight from the checkpoint: the rank file's bytes")
    func slicerFromCheckpoint() throws {
        try withTempDir { dir in
            let request = LayoutRequest(tp: 2, pp: 2, ep: 2)
            try shardLayout("mixtral-4l", tp: 2, pp: 2, ep: 2, to: dir + "/out")
            let set = try ShardSet(directory: dir + "/out")
            let slicer = try RankSlicer(checkpoint: try loadCheckpoint("mixtral-4l"), layout: request)
            let fromSet = try RankSlicer(shards: set, layout: LayoutRequest(tp: 2, pp: 2, ep: 2))
            for w in 0..<4 {
                let view = try set.rank(w)
                for name in view.names {
                    let bytes = try view.tensor(name).bytes
                    #expect(try slicer.piece(name, rank: w).bytes == bytes, "\(name) rank \(w)")
                    #expect(try fromSet.piece(name, rank: w).bytes == bytes)
                }
            }
            expectShardKitError(caught { _ = try slicer.piece("lm_head.weight", rank: 0) }, .notFound,
                                ["rank 0 holds no piece of lm_head.weight", "held by ranks 2..<4"])
        }
    }

    @Test("manifest v2 is validated: a layer's tensor in the wrong stage, an expert in the wrong group, v2 keys in v1, coordinates")
    func manifestValidation() throws {
        try withTempDir { dir in
            try shardLayout("mixtral-4l", tp: 2, pp: 2, ep: 2, to: dir + "/set")
            let path = dir + "/set/manifest.json"
            let original = try readBytes(path)
            func edited(_ edit: (inout [String: Any]) -> Void) throws -> (any Error)? {
                var json = try JSONSerialization.jsonObject(with: Data(original)) as! [String: Any]
                edit(&json)
                try writeBytes(Array(try JSONSerialization.data(withJSONObject: json)), to: path)
                return caught { _ = try ShardSet(directory: dir + "/set") }
            }
            func tensor(_ json: inout [String: Any], _ name: String, _ edit: (inout [String: Any]) -> Void) {
                var tensors = json["tensors"] as! [String: Any]
                var t = tensors[name] as! [String: Any]
                edit(&t)
                tensors[name] = t
                json["tensors"] = tensors
            }
            let q = "model.layers.0.self_attn.q_proj.weight", expert = "model.layers.3.block_sparse_moe.experts.0.w1.weight"
            expectShardKitError(try edited { tensor(&$0, q) { $0["stages"] = [1] } }, .invalidManifest,
                                ["tensor \(q)", "layer 0 in stages [1]"])
            expectShardKitError(try edited { tensor(&$0, expert) { $0["ep_group"] = 1 } }, .invalidManifest,
                                ["expert 0 of layer 3 in EP group 1", "the placement says 0"])
            expectShardKitError(try edited { $0["version"] = 1 }, .invalidManifest, ["belongs to version 2"])
            expectShardKitError(try edited {
                var ranks = $0["ranks"] as! [[String: Any]]
                ranks[2]["tp"] = 1
                $0["ranks"] = ranks
            }, .invalidManifest, ["rank 2: coordinates pp 1, tp 1"])
            expectShardKitError(try edited { $0["experts"] = ["0": [[0, 1], [1, 2, 3]]] }, .invalidManifest,
                                ["expert 1 twice"])
            expectShardKitError(try edited { $0["ep"] = 3 }, .invalidManifest, ["EP 3 does not divide TP 2"])
            expectShardKitError(try edited { $0["stages"] = [["stage": 0, "layers": [0, 3]], ["stage": 1, "layers": [3, 4]]] },
                                .invalidManifest, ["layer 2 in stages [1]"])
            // Found by review: placements and stage tables checked against what the tensors name.
            expectShardKitError(try edited { $0["experts"] = ["0": [[0, 1], [2, 3]], "1": [[0, 1], [2, 3, 4]],
                                                               "2": [[0, 1], [2, 3]], "3": [[0, 1], [2, 3]]] },
                                .invalidManifest, ["the placement names expert 4; experts are 0..<4"])
            expectShardKitError(try edited {
                var experts = $0["experts"] as! [String: Any]
                experts["100000000"] = [[0], [1]]
                $0["experts"] = experts
            }, .invalidManifest, ["layer 100000000, whose tensors name no expert"])
            expectShardKitError(try edited { tensor(&$0, "model.norm.weight") { $0["stages"] = [0] } }, .invalidManifest,
                                ["belong to the last stage"])
            expectShardKitError(try edited {
                $0["stages"] = [["stage": 0, "layers": [0, 2]], ["stage": 1, "layers": [2, 4611686018427387904]]]
            }, .invalidManifest, ["stages hold layers 0..<4611686018427387904, the tensors name layers 0..<4"])
            try writeBytes(original, to: path)
            _ = try ShardSet(directory: dir + "/set")
            // Version 1 manifests carry no version 2 keys, per rank or per tensor either.
            try shardLayout("mixtral-4l", tp: 2, to: dir + "/v1")
            let v1 = dir + "/v1/manifest.json"
            var json = try JSONSerialization.jsonObject(with: Data(try readBytes(v1))) as! [String: Any]
            var ranks = json["ranks"] as! [[String: Any]]
            ranks[0]["pp"] = 0
            json["ranks"] = ranks
            try writeBytes(Array(try JSONSerialization.data(withJSONObject: json)), to: v1)
            expectShardKitError(caught { _ = try ShardSet(directory: dir + "/v1") }, .invalidManifest,
                                ["belong to version 2"])
        }
    }

    @Test("--ranks takes world ranks; parts finalize into the same manifest as a whole run")
    func worldRanksInParts() throws {
        try withTempDir { dir in
            let whole = try shardLayout("mixtral-4l", tp: 2, pp: 2, to: dir + "/whole")
            for part in [[3], [0, 2], [1]] {
                var options = ShardSetWriter.Options()
                options.ranks = part
                try shardLayout("mixtral-4l", tp: 2, pp: 2, to: dir + "/parts", options: options)
            }
            let merged = try Reshard.finalize(directory: dir + "/parts")
            #expect(merged.tensors == whole.tensors && merged.layout == whole.layout && merged.ranks == whole.ranks)
            for w in 0..<4 {
                #expect(try readBytes(dir + "/parts/rank-\(w)/model.safetensors")
                        == (try readBytes(dir + "/whole/rank-\(w)/model.safetensors")))
            }
        }
    }

    @Test("a part file whose pp × tp overflows is refused by finalize, not trapped on")
    func finalizeHugeLayout() throws {
        try withTempDir { dir in
            var options = ShardSetWriter.Options()
            options.ranks = [0]
            try shardLayout("mixtral-4l", tp: 2, pp: 2, to: dir + "/parts", options: options)
            let path = dir + "/parts/rank-0/part.json"
            var json = try JSONSerialization.jsonObject(with: Data(try readBytes(path))) as! [String: Any]
            json["pp"] = Int.max / 2 + 1
            try writeBytes(Array(try JSONSerialization.data(withJSONObject: json)), to: path)
            expectShardKitError(caught { _ = try Reshard.finalize(directory: dir + "/parts") }, .invalidManifest,
                                ["malformed"])
        }
    }

    @Test("layers past num_hidden_layers (multi-token prediction) go with the last stage")
    func mtpLayersGoLast() throws {
        let config = ModelConfig(json: try JSONValue.parse(Array(#"{"num_hidden_layers": 4}"#.utf8)))
        let names = ["model.embed_tokens.weight"] + (0..<5).map { "model.layers.\($0).mlp.down_proj.weight" }
            + ["model.norm.weight"]
        let plan = try ShardPlan(tensors: names.map { ($0, DType.f32, [8, 8]) }, rules: names.map { _ in .replicated },
                                 request: LayoutRequest(tp: 1, pp: 2), config: config)
        #expect(plan.layout.stageLayers == [0..<2, 2..<4])
        #expect(plan.tensor(named: "model.layers.4.mlp.down_proj.weight")?.stages == [1])
        #expect(plan.tensor(named: "model.layers.1.mlp.down_proj.weight")?.stages == [0])
    }
}
