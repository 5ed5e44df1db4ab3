import Foundation
import Testing
import ShardKit
@testable import ShardKitCLI

/// Llama's layout as a rules file (no preset, no extends), JSON and YAML spellings of the same thing.
let llamaRulesJSON = #"""
{"rules": [
  {"pattern": "model.embed_tokens.weight", "rule": "vocab", "dim": 0},
  {"pattern": "lm_head.weight", "rule": "vocab", "dim": 0},
  {"pattern": "model.norm.weight", "rule": "replicated"},
  {"pattern": "model.layers.*.{input_layernorm,post_attention_layernorm}.weight", "rule": "replicated"},
  {"pattern": "model.layers.*.self_attn.q_proj.weight", "rule": "heads", "dim": 0, "heads": "num_attention_heads"},
  {"pattern": "model.layers.*.self_attn.{k_proj,v_proj}.weight", "rule": "kv_heads", "dim": 0, "heads": "num_key_value_heads"},
  {"pattern": "model.layers.*.self_attn.o_proj.weight", "rule": "out_projection", "dim": 1, "heads": 8},
  {"pattern": "model.layers.*.mlp.{gate_proj,up_proj}.weight", "rule": "column", "dim": 0},
  {"pattern": "model.layers.*.mlp.down_proj.weight", "rule": "row", "dim": 1}
]}
"""#

let llamaRulesYAML = """
# Llama, spelled out
rules:
  - pattern: model.embed_tokens.weight
    rule: vocab
    dim: 0
  - {pattern: lm_head.weight, rule: vocab, dim: 0}
  - pattern: model.norm.weight
    rule: replicated
  - pattern: "model.layers.*.{input_layernorm,post_attention_layernorm}.weight"
    rule: replicated
  - pattern: "model.layers.*.self_attn.q_proj.weight"
    rule: heads
    dim: 0
    heads: num_attention_heads
  - pattern: "model.layers.*.self_attn.{k_proj,v_proj}.weight"
    rule: kv_heads
    dim: 0
    heads: num_key_value_heads
  - pattern: "model.layers.*.self_attn.o_proj.weight"
    rule: out_projection
    dim: 1
    heads: 8
  - pattern: "model.layers.*.mlp.{gate_proj,up_proj}.weight"
    rule: column
    dim: 0
  - pattern: "model.layers.*.mlp.down_proj.weight"
    rule: row
    dim: 1
"""

/// Same file list and bytes for every file but manifest.json; manifests equal apart from provenance.
func expectSameShardSet(_ a: String, _ b: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let fa = listFiles(a).filter { $0 != "manifest.json" }
    #expect(fa == listFiles(b).filter { $0 != "manifest.json" }, sourceLocation: sourceLocation)
    for f in fa where exists(b + "/" + f) {
        #expect(same(try readBytes(a + "/" + f), try readBytes(b + "/" + f)), "\(f) differs", sourceLocation: sourceLocation)
    }
    var ma = try ShardSet(directory: a).manifest
    let mb = try ShardSet(directory: b).manifest
    ma.tool = mb.tool
    ma.source = mb.source
    #expect(ma == mb, "manifests differ", sourceLocation: sourceLocation)
}

@Suite("CLI rules files")
struct CLIRulesTests {
    @Test("RulesLoader reads the YAML spelling into the same value as the JSON one")
    func yamlEqualsJSON() throws {
        try withTempDir { tmp in
            try llamaRulesJSON.write(toFile: tmp + "/r.json", atomically: true, encoding: .utf8)
            try llamaRulesYAML.write(toFile: tmp + "/r.yaml", atomically: true, encoding: .utf8)
            #expect(try RulesLoader.load(path: tmp + "/r.yaml") == RulesLoader.load(path: tmp + "/r.json"))
        }
    }

    @Test("a rules file alone (JSON and YAML) shards llama-gqa into the preset's bytes", arguments: [2, 8])
    func rulesMatchPreset(_ tp: Int) throws {
        try withTempDir { tmp in
            try llamaRulesJSON.write(toFile: tmp + "/rules.json", atomically: true, encoding: .utf8)
            try llamaRulesYAML.write(toFile: tmp + "/rules.yaml", atomically: true, encoding: .utf8)
            let ckpt = Fixtures.path("llama-gqa")
            #expect(try CLI.run(["shard", ckpt, "--tp", "\(tp)", "--out", tmp + "/preset"]).status == 0)
            for ext in ["json", "yaml"] {
                let out = tmp + "/\(ext)"
                let r = try CLI.run(["shard", ckpt, "--tp", "\(tp)", "--out", out, "--rules", tmp + "/rules.\(ext)"])
                #expect(r.status == 0, "\(r)")
                try expectSameShardSet(out, tmp + "/preset")
                #expect(try ShardSet(directory: out).manifest.source.rules == tmp + "/rules.\(ext)")
            }
        }
    }

    @Test("wrong rules are refused before anything is written", arguments: [
        ("matches-nothing.yaml", """
            extends: llama
            rules:
              - {pattern: "model.layers.*.self_attn.qkv.weight", rule: column}
            """, ["@file", "entry 1", "model.layers.*.self_attn.qkv.weight", "matches no tensor"]),
        ("unmatched-tensor.json", llamaRulesJSON.replacingOccurrences(
            of: #"{"pattern": "lm_head.weight", "rule": "vocab", "dim": 0},"#, with: ""),
         ["tensor lm_head.weight", "matches no rule"]),
        ("fused-sizes.yaml", """
            extends: phi3
            rules:
              - pattern: "model.layers.*.mlp.gate_up_proj.weight"
                rule: fused
                parts:
                  - {rule: even, size: 96}
                  - {rule: even, size: 64}
            """, ["gate_up_proj.weight", "add up to 160", "192"]),
        ("unknown-kind.yaml", """
            rules:
              - {pattern: "**", rule: sideways}
            """, ["@file", "entry 1", "unknown rule \"sideways\""]),
        ("duplicate-key.yaml", """
            rules:
              - {pattern: "**", rule: replicated, rule: column}
            """, ["@file", "duplicate", "rule"]),
        ("not-yaml.yaml", "rules: [unclosed\n", ["@file", "not valid YAML"]),
        ("not-json.json", #"{"rules": [}"#, ["@file", "not valid JSON"]),
    ] as [(String, String, [String])])
    func wrongRules(_ name: String, _ text: String, _ words: [String]) throws {
        try withTempDir { tmp in
            let path = tmp + "/" + name
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let fixture = name.hasPrefix("fused") ? "phi3" : "llama-gqa"
            let out = tmp + "/out"
            let r = try CLI.run(["shard", Fixtures.path(fixture), "--tp", "2", "--out", out, "--rules", path])
            expectCLIError(r, words.map { $0 == "@file" ? path : $0 })
            #expect(!exists(out))
        }
    }
}

@Suite("plan command")
struct PlanCommandTests {
    /// Files and sizes of a directory, to show it was not touched.
    func snapshot(_ dir: String) throws -> [String: Int] {
        var s: [String: Int] = [:]
        for f in listFiles(dir) {
            let a = try FileManager.default.attributesOfItem(atPath: dir + "/" + f)
            s[f] = (a[.size] as! Int) &* 31 &+ Int((a[.modificationDate] as! Date).timeIntervalSince1970 * 1000)
        }
        return s
    }

    @Test("human output lists each tensor's rule and shapes, then totals; writes nothing")
    func human() throws {
        try withTempDir { cwd in
            let before = try snapshot(Fixtures.path("phi3"))
            let r = try CLI.run(["plan", Fixtures.path("phi3"), "--tp", "4"], cwd: cwd)
            #expect(r.status == 0, "\(r)")
            #expect(listFiles(cwd).isEmpty)
            #expect(try snapshot(Fixtures.path("phi3")) == before)
            let lines = r.stdout.split(separator: "\n").map(String.init)
            #expect(lines.first?.contains("tp 4") == true && lines.first?.contains("preset phi3") == true)
            let tensors = try checkpointTensors(Fixtures.path("phi3"))
            for name in tensors.keys {
                #expect(lines.contains { $0.hasPrefix(name + " ") }, "no line for \(name)")
            }
            func line(_ name: String) -> String { lines.first { $0.hasPrefix(name + " ") } ?? "" }
            #expect(line("model.layers.0.self_attn.qkv_proj.weight").contains("fused(dim 0, parts [64, 16, 16])"))
            // Columns: tensor, dtype, shape, rule, rank 0 shape, rank 0 bytes.
            #expect(lines.count > 1 && lines[1].split(separator: " ", omittingEmptySubsequences: true).starts(with: ["tensor", "dtype", "shape", "rule", "rank", "0", "shape"]))
            func column(_ name: String, _ header: String) -> String {
                guard lines.count > 1, let at = lines[1].range(of: header) else { return "" }
                let l = line(name)
                let start = lines[1].distance(from: lines[1].startIndex, to: at.lowerBound)
                return String(l.dropFirst(start).prefix { $0 != " " })
            }
            #expect(column("model.layers.0.self_attn.qkv_proj.weight", "rank 0 shape") == "[32,")  // 16 q + 8 k + 8 v rows
            #expect(line("model.layers.0.self_attn.qkv_proj.weight").contains("[32, 64]   "))
            #expect(line("model.layers.1.mlp.gate_up_proj.weight").contains("[48, 64]   "))
            #expect(line("model.layers.1.mlp.down_proj.weight").contains("row(dim 1)") && line("model.layers.1.mlp.down_proj.weight").contains("[64, 24]"))
            #expect(line("model.layers.0.self_attn.o_proj.weight").contains("out_projection(dim 1, 8 heads)"))
            #expect(line("model.norm.weight").contains("replicated"))
            #expect(line("lm_head.weight").contains("vocab(dim 0)"))
            #expect(lines.contains("totals:"))
            for rank in 0..<4 { #expect(lines.contains { $0.hasPrefix("  rank \(rank): ") }) }
            #expect(lines.last?.contains("source:") == true)
        }
    }

    @Test("--json parses; per-rank bytes add up and match the shapes", arguments: [("qwen2-bias", 4), ("gpt2", 8), ("mixtral", 2)])
    func json(_ fixture: String, _ tp: Int) throws {
        try withTempDir { cwd in
            let r = try CLI.run(["plan", Fixtures.path(fixture), "--tp", "\(tp)", "--json"], cwd: cwd)
            #expect(r.status == 0, "\(r)")
            #expect(listFiles(cwd).isEmpty)
            let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            #expect(json["tp"] as? Int == tp)
            let rows = try #require(json["tensors"] as? [[String: Any]])
            let source = try checkpointTensors(Fixtures.path(fixture))
            #expect(Set(rows.map { $0["name"] as! String }) == Set(source.keys))
            var sums = [Int](repeating: 0, count: tp)
            var padding = 0
            for row in rows {
                let name = row["name"] as! String
                let shapes = row["rankShapes"] as! [[Int]]
                let bytes = row["rankBytes"] as! [Int]
                #expect(row["shape"] as? [Int] == source[name]!.shape)
                #expect(shapes.count == tp && bytes.count == tp)
                for k in 0..<tp {
                    #expect(bytes[k] == shapes[k].reduce(4, *), "\(name) rank \(k)")  // all fixtures here are F32
                    sums[k] += bytes[k]
                }
                let rule = row["rule"] as! [String: Any]
                if rule["kind"] as? String == "vocab" { padding += bytes.reduce(0, +) - source[name]!.bytes.count }
                if rule["kind"] as? String == "replicated" { #expect(Set(shapes.map { $0 }).count == 1 && shapes[0] == source[name]!.shape) }
            }
            #expect(json["bytesPerRank"] as? [Int] == sums)
            let sourceBytes = source.values.reduce(0) { $0 + $1.bytes.count }
            #expect(json["sourceBytes"] as? Int == sourceBytes)
            if fixture == "qwen2-bias" { #expect(padding == 2 * 3 * 64 * 4) }  // 253 → 256 rows, embed and lm_head
            if fixture == "gpt2" { #expect(padding == 7 * 64 * 4) }  // 257 → 264 rows
        }
    }

    @Test("plan refuses an impossible split like shard does")
    func refuses() throws {
        expectCLIError(try CLI.run(["plan", Fixtures.path("gemma"), "--tp", "8"]), ["4 heads", "8 ranks"])
    }
}

@Suite("shard and reshard commands")
struct ShardCommandTests {
    @Test("--json summary parses; extra files are carried into OUT")
    func summaryAndExtras() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let r = try CLI.run(["shard", Fixtures.path("llama-bf16-sharded"), "--tp", "4", "--out", out, "--json"])
            #expect(r.status == 0, "\(r)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            #expect(json["tp"] as? Int == 4)
            #expect(json["output"] as? String == out)
            #expect(json["tensors"] as? Int == 21)
            #expect(json["partial"] as? Bool == false)
            #expect(json["files"] as? [String] == (0..<4).map { "rank-\($0)/model.safetensors" })
            let perRank = try #require(json["bytesPerRank"] as? [Int])
            let manifest = try ShardSet(directory: out).manifest
            for k in 0..<4 {
                let expected = manifest.order.reduce(0) { $0 + manifest.tensors[$1]!.pieces[k].shape.reduce(2, *) }  // BF16
                #expect(perRank[k] == expected)
            }
            #expect(json["seconds"] is Double || json["seconds"] is Int)
            for f in ["config.json", "generation_config.json", "tokenizer_config.json"] {
                #expect(same(try readBytes(out + "/" + f), try readBytes(Fixtures.path("llama-bf16-sharded/" + f))), "\(f)")
            }
            #expect(manifest.extraFiles == ["config.json", "generation_config.json", "tokenizer_config.json"])
            #expect(!exists(out + "/reference.safetensors") && !exists(out + "/model.safetensors.index.json"))
            // The human summary too.
            let h = try CLI.run(["shard", Fixtures.path("bert"), "--tp", "2", "--out", tmp + "/bert"])
            #expect(h.stdout.contains("wrote \(tmp)/bert: tp 2, 39 tensors, 2 rank files"), "\(h)")
        }
    }

    @Test("--max-file-size cuts rank files with a per-rank index and round trips", arguments: [1, 2])
    func maxFileSize(_ tp: Int) throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let limit = 40 * 1024
            let r = try CLI.run(["shard", Fixtures.path("mixtral"), "--tp", "\(tp)", "--out", out, "--max-file-size", "40K"])
            #expect(r.status == 0, "\(r)")
            let source = try checkpointTensors(Fixtures.path("mixtral"))
            let set = try ShardSet(directory: out)
            for k in 0..<tp {
                let prefix = tp == 1 ? "" : "rank-\(k)/"
                let files = set.manifest.ranks[k].files
                #expect(files.count > 3, "\(files)")
                #expect(files.allSatisfy { $0.hasPrefix(prefix + "model-") && $0.hasSuffix("-of-\(String(format: "%05d", files.count)).safetensors") })
                let dir = tp == 1 ? out : out + "/rank-\(k)"
                #expect(exists(dir + "/model.safetensors.index.json"))
                // Each file stays under the limit unless it holds a single tensor.
                for f in files {
                    let sf = try SafetensorsFile(path: out + "/" + f)
                    let data = sf.tensors.reduce(0) { $0 + $1.byteCount }
                    #expect(data <= limit || sf.tensors.count == 1, "\(f): \(data) bytes")
                }
                // The rank directory is an ordinary multi-file checkpoint.
                let rank = try checkpointTensors(dir)
                #expect(rank.count == source.count)
                if tp == 1 {
                    #expect(rank.mapValues(\.bytes) == source.mapValues(\.bytes))
                }
            }
            // Reassembly through the manifest gives the source back.
            let files = try set.openAllRanks()
            let buffers = CopyBuffers(budget: 1 << 16)
            for name in set.manifest.order {
                let sink = MemorySink()
                try set.reassemble(name, files: files, into: sink, buffers: buffers)
                #expect(same(sink.bytes, source[name]!.bytes), "\(name)")
            }
            let v = try CLI.run(["verify", out, "--source", Fixtures.path("mixtral"), "--no-numerics"])
            #expect(v.status == 0, "\(v)")
            // Resharding the cut set gives the same bytes as sharding directly.
            let re = tmp + "/re"
            #expect(try CLI.run(["reshard", out, "--tp", "4", "--out", re]).status == 0)
            #expect(try CLI.run(["shard", Fixtures.path("mixtral"), "--tp", "4", "--out", tmp + "/direct"]).status == 0)
            try expectSameShardSet(re, tmp + "/direct")
        }
    }

    @Test("reshard --ranks in parts, then --finalize, equals a full reshard; finalize refuses a missing rank")
    func reshardParts() throws {
        try withTempDir { tmp in
            let input = tmp + "/in"
            #expect(try CLI.run(["shard", Fixtures.path("gpt2"), "--tp", "2", "--out", input]).status == 0)
            #expect(try CLI.run(["reshard", input, "--tp", "8", "--out", tmp + "/full"]).status == 0)
            let parts = tmp + "/parts"
            let p1 = try CLI.run(["reshard", input, "--tp", "8", "--out", parts, "--ranks", "0-3,7", "--json"])
            #expect(p1.status == 0, "\(p1)")
            let json = try JSONSerialization.jsonObject(with: Data(p1.stdout.utf8)) as? [String: Any]
            #expect(json?["partial"] as? Bool == true)
            expectCLIError(try CLI.run(["reshard", "--finalize", parts]), ["rank 4", "missing"])
            #expect(!exists(parts + "/manifest.json"))
            #expect(try CLI.run(["reshard", input, "--tp", "8", "--out", parts, "--ranks", "4-6"]).status == 0)
            let fin = try CLI.run(["reshard", "--finalize", parts])
            #expect(fin.status == 0, "\(fin)")
            try expectSameShardSet(parts, tmp + "/full")
            // M = 1 through the CLI: an ordinary checkpoint equal to the source.
            #expect(try CLI.run(["reshard", parts, "--tp", "1", "--out", tmp + "/one"]).status == 0)
            #expect(exists(tmp + "/one/model.safetensors") && exists(tmp + "/one/config.json"))
            #expect(try checkpointTensors(tmp + "/one").mapValues(\.bytes) == checkpointTensors(Fixtures.path("gpt2")).mapValues(\.bytes))
        }
    }

    /// The code blocks of docs/rules.md's "Extending a preset" section, as files.
    static func extendExamples() throws -> [(suffix: String, text: String)] {
        let doc = try String(contentsOfFile: Fixtures.repoRoot + "/docs/rules.md", encoding: .utf8)
        let section = try #require(doc.components(separatedBy: "## Extending a preset").dropFirst().first?
            .components(separatedBy: "\n## ").first)
        var blocks: [(String, String)] = []
        let parts = section.components(separatedBy: "```")
        for i in stride(from: 1, to: parts.count, by: 2) {
            let lines = parts[i].split(separator: "\n", omittingEmptySubsequences: false)
            let language = lines.first.map(String.init) ?? ""
            blocks.append((language == "json" ? ".json" : ".yaml", lines.dropFirst().joined(separator: "\n")))
        }
        return blocks
    }

    @Test("docs/rules.md's extends examples run: each shards its fixture; Phi-3's explicit fused rules and gpt-oss's pairs give the preset's bytes")
    func docExtendExamples() throws {
        let examples = try Self.extendExamples()
        #expect(examples.count == 3)
        try withTempDir { dir in
            for (n, example) in examples.enumerated() {
                let fixture = example.text.contains("phi3") ? "phi3" : example.text.contains("gpt_oss") ? "gpt-oss" : "llama-gqa"
                let rules = dir + "/example-\(n)" + example.suffix
                try writeBytes(Array(example.text.utf8), to: rules)
                let r = try CLI.run(["shard", Fixtures.path(fixture), "--tp", "2", "--rules", rules, "--out", dir + "/out-\(n)"])
                #expect(r.status == 0, "example \(n): \(r)")
                if fixture != "llama-gqa" {
                    #expect(try CLI.run(["shard", Fixtures.path(fixture), "--tp", "2", "--out", dir + "/preset-\(n)"]).status == 0)
                    for rank in 0..<2 {
                        let name = "/rank-\(rank)/model.safetensors"
                        #expect(same(try readBytes(dir + "/out-\(n)" + name), try readBytes(dir + "/preset-\(n)" + name)))
                    }
                }
            }
        }
    }

    @Test("extends: llama works for a model without some of llama's tensors (every tensor still needs a rule)")
    func extendsWithoutAllPresetTensors() throws {
        try withTempDir { dir in
            // llama-gqa without its MLP: gate_proj, up_proj and down_proj gone.
            let source = try Checkpoint(path: Fixtures.path("llama-gqa"))
            let kept = source.tensors.filter { !$0.info.name.contains(".mlp.") }
            var header = "{", offset = 0, data: [UInt8] = []
            let file = try ReadOnlyFile(path: source.files[0].path)
            for (i, t) in kept.enumerated() {
                header += (i == 0 ? "" : ",") + "\"\(t.info.name)\":{\"dtype\":\"F32\",\"shape\":\(t.info.shape),"
                    + "\"data_offsets\":[\(offset),\(offset + t.info.byteCount)]}"
                offset += t.info.byteCount
                data += try file.read(count: t.info.byteCount, at: t.info.offset)
            }
            header += "}"
            var h = Array(header.utf8)
            while h.count % 8 != 0 { h.append(0x20) }
            try FileManager.default.createDirectory(atPath: dir + "/m", withIntermediateDirectories: true)
            try writeBytes(withUnsafeBytes(of: UInt64(h.count).littleEndian, Array.init) + h + data,
                           to: dir + "/m/model.safetensors")
            try FileManager.default.copyItem(atPath: Fixtures.path("llama-gqa/config.json"), toPath: dir + "/m/config.json")
            try writeBytes(Array("extends: llama\nrules:\n  - {pattern: \"lm_head.weight\", rule: replicated}\n".utf8),
                           to: dir + "/r.yaml")
            let r = try CLI.run(["shard", dir + "/m", "--tp", "2", "--rules", dir + "/r.yaml", "--out", dir + "/out"])
            #expect(r.status == 0, "\(r)")
            // The preset alone still says what is missing.
            let preset = try CLI.run(["shard", dir + "/m", "--tp", "2", "--out", dir + "/out2"])
            #expect(preset.status != 0 && preset.stderr.contains("gate_proj"), "\(preset)")
        }
    }
}
