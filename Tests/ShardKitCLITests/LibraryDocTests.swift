import Foundation
import Testing

/// docs/library.md shows Examples/LoaderExample/main.swift verbatim, and the example runs.
@Suite struct LibraryDocTests {
    static let root = URL(fileURLWithPath: Fixtures.repoRoot)

    @Test func docShowsTheExampleVerbatim() throws {
        let example = try String(contentsOf: Self.root.appendingPathComponent("Examples/LoaderExample/main.swift"), encoding: .utf8)
        let doc = try String(contentsOf: Self.root.appendingPathComponent("docs/library.md"), encoding: .utf8)
        #expect(doc.contains("```swift\n" + example + "```"))
    }

    @Test func exampleRunsAgainstARealShardSet() throws {
        let bin = Self.root.appendingPathComponent(".build/debug")
        let shardkit = bin.appendingPathComponent("shardkit").path
        let example = bin.appendingPathComponent("LoaderExample").path
        try #require(FileManager.default.isExecutableFile(atPath: shardkit) && FileManager.default.isExecutableFile(atPath: example),
                     "build the products first (scripts/test.sh does)")
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("loader-example-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let fixture = Self.root.appendingPathComponent("fixtures/llama-gqa").path
        #expect(try run(shardkit, ["shard", fixture, "--tp", "4", "--out", out]).status == 0)
        for rank in 0..<4 {
            let r = try run(example, [out, fixture, String(rank)])
            #expect(r.status == 0)
            #expect(r.output.contains("21 of 21 tensors identical to the shard files"))
            #expect(r.output.contains("rank \(rank) of 4: 21 tensors"))
        }
        // Pipeline stages and expert parallelism: world ranks, each rank's layers and experts.
        let moe = Self.root.appendingPathComponent("fixtures/mixtral-4l").path
        let layered = out + "-pp"
        defer { try? FileManager.default.removeItem(atPath: layered) }
        #expect(try run(shardkit, ["shard", moe, "--tp", "2", "--pp", "2", "--ep", "2", "--out", layered]).status == 0)
        for rank in 0..<4 {
            let r = try run(example, [layered, moe, String(rank)])
            #expect(r.status == 0, "\(r.output)")
            // Stage 0: the embedding and 2 layers of 13 tensors; stage 1: 2 layers, final norm, LM head.
            let count = rank < 2 ? 27 : 28
            #expect(r.output.contains("rank \(rank) of 4: \(count) tensors"))
            #expect(r.output.contains("\(count) of \(count) tensors identical to the shard files"))
            let experts = rank % 2 == 0 ? "[0, 1]" : "[2, 3]"
            let layers = rank < 2 ? "layers 0..<2, experts [\"layer 0: \(experts)\", \"layer 1: \(experts)\"]"
                : "layers 2..<4, experts [\"layer 2: \(experts)\", \"layer 3: \(experts)\"]"
            #expect(r.output.contains("stage \(rank / 2), TP rank \(rank % 2): \(layers)"), "\(r.output)")
        }
    }

    func run(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
