import Foundation
import Testing
import ShardKitFuzzTargets

/// The repository root (this file is Tests/ShardKitFuzzTests/FuzzCorpusReplayTests.swift).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

/// The files of Fuzz/corpus/TARGET and Fuzz/crashes/TARGET.
private func fuzzInputs(_ target: String) -> [String] {
    ["corpus", "crashes"].flatMap { kind -> [String] in
        let dir = "\(repositoryRoot)/Fuzz/\(kind)/\(target)"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { "\(dir)/\($0)" }
    }
}

@Suite("Fuzz corpus replay")
struct FuzzCorpusReplayTests {
    @Test("every seed and every saved crash replays through its target without crashing",
          arguments: FuzzTargets.names)
    func replay(_ target: String) throws {
        let run = try #require(FuzzTargets.target(target))
        let files = fuzzInputs(target)
        #expect(!files.isEmpty, "Fuzz/corpus/\(target) has no seeds")
        for path in files {
            let data = try #require(FileManager.default.contents(atPath: path), "cannot read \(path)")
            data.withUnsafeBytes { run($0) }
        }
    }

    @Test("every directory under Fuzz/corpus and Fuzz/crashes names a target")
    func directoriesNameTargets() {
        for kind in ["corpus", "crashes"] {
            let dirs = (try? FileManager.default.contentsOfDirectory(atPath: "\(repositoryRoot)/Fuzz/\(kind)")) ?? []
            for d in dirs where !d.hasPrefix(".") && !d.hasSuffix(".md") {
                #expect(FuzzTargets.names.contains(d), "Fuzz/\(kind)/\(d) is not a fuzz target")
            }
        }
    }

    @Test("the internal parsers are reachable in test builds")
    func internalsReachable() { #expect(FuzzTargets.internalsReachable) }
}
