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
