import Foundation
import Testing
import ShardKit
import ShardKitTestSupport

/// `--pp`, `--pp-layers`, `--ep`, `--expert-placement` and world ranks, through the command line.
@Suite("pipeline and expert parallelism (CLI)")
struct ParallelCLITests {
    /// Four processes at once, each writing its own world rank of a (2, 2, 1) layout, run by the
    /// Slurm job-array script of docs/deploy as four array tasks would, then `--finalize`: the same
    /// files and manifest as one whole run.
    @Test("four processes (the Slurm array script) write one world rank each at the same time, then --finalize")
    func fourProcessesThenFinalize() throws {
        try withTempDir { dir in
            let src = Fixtures.path("mixtral-4l")
            let script = Fixtures.repoRoot + "/docs/deploy/shard-slurm.sh"
            let r = try CLI.bash("""
                set -e
                export PATH="$(dirname "$SHARDKIT"):$PATH" TP=2 PP=2
                for w in 0 1 2 3; do
                  SLURM_ARRAY_TASK_ID=$w bash '\(script)' '\(src)' '\(dir)/parts' > '\(dir)/log-'$w 2>&1 &
                done
                fail=0
                for job in $(jobs -p); do wait $job || fail=1; done
                test $fail = 0
                "$SHARDKIT" reshard --finalize '\(dir)/parts'
                "$SHARDKIT" shard '\(src)' --tp 2 --pp 2 --out '\(dir)/whole' > /dev/null
                "$SHARDKIT" verify '\(dir)/parts' --source '\(src)' --reference '\(src)/reference.safetensors'
                """)
            #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
            #expect(r.stdout.contains("finalized \(dir)/parts: tp 2, pp 2"))
            #expect(r.stdout.contains("PASSED") && r.stdout.contains("stage 1 (ranks 2..<4, layers 2..<4)"))
            for w in 0..<4 {
                #expect(try readBytes("\(dir)/parts/rank-\(w)/model.safetensors")
                        == (try readBytes("\(dir)/whole/rank-\(w)/model.safetensors")))
                #expect(!exists("\(dir)/parts/rank-\(w)/part.json"))
            }
            let a = try ShardSet(directory: dir + "/parts").manifest, b = try ShardSet(directory: dir + "/whole").manifest
            #expect(a.tensors == b.tensors && a.ranks == b.ranks && a.layout == b.layout)
        }
    }

    /// Counted with strace: every byte returned by read(2)/pread(2) in a reshard that changes only the
    /// stages. Each tensor is read once, from one copy of its pieces.
    @Test("a reshard that changes only PP reads each input byte once")
    func reshardPPReadsOnce() throws {
        try withTempDir { dir in
            let src = Fixtures.path("mixtral-4l")
            #expect(try CLI.run(["shard", src, "--tp", "2", "--pp", "2", "--out", dir + "/in"]).status == 0)
            let m = try ShardSet(directory: dir + "/in").manifest
            let tensorBytes = m.tensors.values.reduce(0) { $0 + $1.shape.reduce($1.dtype.size, *) }
            let log = dir + "/trace"
            let r = try CLI.spawn("/usr/bin/env", ["strace", "-f", "-qq", "-o", log, "-e", "trace=read,pread64",
                                                   try CLI.binary(), "reshard", dir + "/in", "--tp", "2", "--pp", "4",
                                                   "--out", dir + "/out"])
            #expect(r.status == 0, "\(r.stderr)")
            var read = 0
            for line in try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n") {
                guard line.contains("read"), let eq = line.range(of: " = ", options: .backwards),
                      let n = Int(line[eq.upperBound...].prefix { $0.isNumber }) else { continue }
                read += n
            }
            // Tensors once, plus the headers, the manifest and the small files (config, tokenizer).
            let manifestBytes = try readBytes(dir + "/in/manifest.json").count
            #expect(read >= tensorBytes, "read \(read) < \(tensorBytes)")
            #expect(read <= tensorBytes + 2 * manifestBytes + 64 << 10, "read \(read) bytes for \(tensorBytes) of tensors")
            #expect(try ShardSet(directory: dir + "/out").layout.stageLayers == [0..<1, 1..<2, 2..<3, 3..<4])
        }
    }

    @Test("plan shows the grid: coordinates, layers, experts, bytes, imbalance")
    func planGrid() throws {
        let src = Fixtures.path("mixtral-4l")
        let text = try CLI.run(["plan", src, "--tp", "2", "--pp", "2", "--ep", "2", "--pp-layers", "3,1"])
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("plan for \(src) at tp 2, pp 2, ep 2"))
        #expect(text.stdout.contains("rank 0 (pp 0, tp 0): "))
        #expect(text.stdout.contains("layers 0..<3, experts [0, 1]"))
        #expect(text.stdout.contains("rank 3 (pp 1, tp 1): ") && text.stdout.contains("layers 3..<4, experts [2, 3]"))
        #expect(text.stdout.contains("imbalance"))
        let json = try CLI.run(["plan", src, "--tp", "2", "--pp", "2", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as! [String: Any]
        let grid = report["grid"] as! [[String: Any]]
        #expect(grid.map { $0["pp"] as! Int } == [0, 0, 1, 1] && grid.map { $0["tp"] as! Int } == [0, 1, 0, 1])
        #expect(grid.map { $0["layers"] as! [Int] } == [[0, 2], [0, 2], [2, 4], [2, 4]])
        let bytes = grid.map { $0["bytes"] as! Int }
        #expect(bytes == report["bytesPerRank"] as! [Int])
        let mean = Double(bytes.reduce(0, +)) / 4
        #expect(abs((report["imbalance"] as! Double) - Double(bytes.max()!) / mean) < 1e-9)
        let rows = report["tensors"] as! [[String: Any]]
        let head = rows.first { $0["name"] as! String == "lm_head.weight" }!
        #expect(head["ranks"] as! [Int] == [2, 3])
    }

    @Test("layout errors name the numbers", arguments: [
        (["--tp", "1", "--pp", "2", "--pp-layers", "3,2"], ["add up to 5", "4 layers"]),
        (["--tp", "1", "--pp", "6"], ["6 pipeline stages for 4 layers"]),
        (["--tp", "4", "--ep", "3"], ["EP 3 does not divide TP 4"]),
        (["--tp", "1", "--pp", "2", "--pp-layers", "2,x"], ["--pp-layers takes layer counts"]),
    ])
    func layoutErrors(args: [String], words: [String]) throws {
        try withTempDir { dir in
            let r = try CLI.run(["shard", Fixtures.path("mixtral-4l"), "--out", dir + "/out"] + args)
            #expect(r.status != 0)
            for w in words { #expect(r.stderr.contains(w), "\(r.stderr)") }
            #expect(!exists(dir + "/out"))
        }
    }

    @Test("an expert placement file, JSON or YAML")
    func placementFile() throws {
        try withTempDir { dir in
            try writeBytes(Array("default: [[0, 3], [1, 2]]\nlayers:\n  \"1\": [[1], [0, 2, 3]]\n".utf8),
                           to: dir + "/placement.yaml")
            let src = Fixtures.path("mixtral-4l")
            let r = try CLI.run(["shard", src, "--tp", "2", "--ep", "2", "--expert-placement", dir + "/placement.yaml",
                                 "--out", dir + "/out"])
            #expect(r.status == 0, "\(r.stderr)")
            let layout = try ShardSet(directory: dir + "/out").layout
            #expect(layout.experts[0] == [[0, 3], [1, 2]] && layout.experts[1] == [[1], [0, 2, 3]])
            let v = try CLI.run(["verify", dir + "/out", "--reference", src + "/reference.safetensors"])
            #expect(v.status == 0 && v.stdout.contains("(tp 2, ep 2)"), "\(v.stdout)")
            try writeBytes(Array("[[0, 3], [1, 3]]".utf8), to: dir + "/twice.json")
            let bad = try CLI.run(["shard", src, "--tp", "2", "--ep", "2", "--expert-placement", dir + "/twice.json",
                                   "--out", dir + "/bad"])
            expectCLIError(bad, ["expert 3 twice"])
        }
    }

    @Test("a layer past num_hidden_layers (multi-token prediction) goes with the last stage, and the manifest reads")
    func mtpLayer() throws {
        try withTempDir { dir in
            let names = ["model.embed_tokens.weight"] + (0..<3).map { "model.layers.\($0).mlp.down_proj.weight" }
                + ["model.norm.weight", "lm_head.weight"]
            try FileManager.default.createDirectory(atPath: dir + "/src", withIntermediateDirectories: true)
            try writeSafetensors(names.map { ($0, DType.f32, [4, 4], [UInt8](repeating: 1, count: 64)) },
                                 to: dir + "/src/model.safetensors")
            try writeBytes(Array(#"{"model_type": "x", "num_hidden_layers": 2}"#.utf8), to: dir + "/src/config.json")
            try writeBytes(Array(#"{"rules": [{"pattern": "**", "rule": "replicated"}]}"#.utf8), to: dir + "/rules.json")
            let r = try CLI.run(["shard", dir + "/src", "--tp", "1", "--pp", "2", "--rules", dir + "/rules.json",
                                 "--out", dir + "/out"])
            #expect(r.status == 0, "\(r.stderr)")
            let set = try ShardSet(directory: dir + "/out")
            #expect(set.layout.stageLayers == [0..<1, 1..<2])
            #expect(set.manifest.tensors["model.layers.2.mlp.down_proj.weight"]?.stages == [1])
        }
    }
}
