import Foundation
import Testing
import ShardKit

@Suite("Concurrent runs into one output")
struct ConcurrencyTests {
    /// After each pair: no manifest, or a manifest whose set verifies; a run that exited 0 left a
    /// complete set; a refused run says the directory is in use.
    static func check(_ out: String, _ statuses: [Int], _ errors: [String], _ source: Checkpoint,
                      sourceLocation: SourceLocation = #_sourceLocation) throws {
        let hasManifest = exists(out + "/manifest.json")
        if statuses.contains(0) { #expect(hasManifest, "a run exited 0", sourceLocation: sourceLocation) }
        if hasManifest {
            let set = try ShardSet(directory: out)
            #expect(Verify.integrity(set).status == .pass, sourceLocation: sourceLocation)
            #expect(Verify.reconstruction(set, source: source).status == .pass, sourceLocation: sourceLocation)
        }
        for (s, e) in zip(statuses, errors) where s != 0 {
            #expect(s == 1 && e.contains("in use by another ShardKit run"), "\(e)", sourceLocation: sourceLocation)
        }
        #expect(!listFiles(out).contains { $0.hasSuffix(".tmp") }, sourceLocation: sourceLocation)
    }

    @Test("two shard --force runs into one OUT, started at offsets from 0 to 150 ms, never destroy each other")
    func twoRuns() throws {
        let source = try Checkpoint(path: Fixtures.path("mixtral"))
        try withTempDir { tmp in
            let out = tmp + "/out"
            for i in 0..<16 {
                let delay = String(format: "%.3f", Double(i) * 0.010)
                let r = try CLI.bash("""
                    run() { "$SHARDKIT" shard "\(Fixtures.path("mixtral"))" --tp $1 --out "\(out)" --force --no-sync \
                        >/dev/null 2>"\(tmp)/err$2"; echo $? >"\(tmp)/status$2"; }
                    run 2 a & sleep \(delay); run 4 b & wait
                    """)
                #expect(r.status == 0, "\(r)")
                let statuses = try ["a", "b"].map { Int(try String(contentsOfFile: tmp + "/status" + $0, encoding: .utf8)
                    .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1 }
                let errors = try ["a", "b"].map { try String(contentsOfFile: tmp + "/err" + $0, encoding: .utf8) }
                #expect(statuses.contains(0) || errors.allSatisfy { $0.contains("in use") }, "offset \(delay): \(errors)")
                try Self.check(out, statuses, errors, source)
            }
        }
    }
}
