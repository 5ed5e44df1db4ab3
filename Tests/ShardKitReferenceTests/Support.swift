import Foundation
import ShardKit
@_exported import ShardKitTestSupport
@testable import ShardKitReference

func fixturePath(_ name: String) -> String { Fixtures.path(name) }

/// A fresh temporary directory path (not created).
func temporaryPath(_ tag: String) -> String {
    NSTemporaryDirectory() + "shardkit-reference-\(tag)-\(UUID().uuidString)"
}

/// Shards `fixture` with its preset into a temporary directory.
func shardFixture(_ fixture: String, tp: Int) throws -> (set: ShardSet, checkpoint: Checkpoint, directory: String) {
    try shardTemporary(fixturePath(fixture), tp: tp, tag: fixture)
}

/// Shards the checkpoint in `dir` with its preset into a temporary directory.
func shardTemporary(_ dir: String, tp: Int, tag: String = "checkpoint") throws
    -> (set: ShardSet, checkpoint: Checkpoint, directory: String) {
    let ckpt = try Checkpoint(path: dir)
    let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
    let out = temporaryPath("\(tag)-tp\(tp)")
    try Shard.run(checkpoint: ckpt, sourcePath: dir, rules: rules, tp: tp, output: out, options: ShardSetWriter.Options())
    return (try ShardSet(directory: out), ckpt, out)
}

func removeDirectory(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

/// Overwrites every rank's piece of `name` with a naive contiguous split of the full tensor along
/// `dim` (same piece sizes), and fixes the pieces' CRC-32s in manifest.json: a shard set whose bytes
/// are laid out wrongly while its manifest claims the right rule.
func corruptToContiguousSplit(_ set: ShardSet, checkpoint: Checkpoint, name: String) throws {
    guard let (file, info) = checkpoint.tensor(named: name) else { fatalError("no \(name)") }
    var manifest = set.manifest
    let record = manifest.tensors[name]!
    let dim = record.rule.dim!
    let full = try ReadOnlyFile(path: checkpoint.files[file].path).read(count: info.byteCount, at: info.offset)
    let es = info.dtype.size
    let outer = info.shape[..<dim].reduce(1, *), size = info.shape[dim], inner = info.shape[(dim + 1)...].reduce(1, *) * es
    var start = 0
    for r in 0..<set.tp {
        let piece = record.pieces[r]
        let len = piece.shape[dim]
        var bytes: [UInt8] = []
        for o in 0..<outer {
            let base = (o * size + start) * inner
            bytes += full[base..<(base + len * inner)]
        }
        start += len
        try overwritePiece(set, &manifest, name: name, rank: r, with: bytes)
    }
    try Data(manifest.encoded()).write(to: URL(fileURLWithPath: set.directory + "/" + Manifest.fileName))
}

/// Overwrites every rank's piece of `name` (split along dim 0) with the full tensor's rows `rows[r]`
/// (as many as the piece has) and fixes the CRC-32Cs: the bytes a wrong idea of the layout gives, under
/// a manifest that claims the right rule.
func corruptRows(_ set: ShardSet, checkpoint: Checkpoint, name: String, rows: [[Int]]) throws {
    guard let (file, info) = checkpoint.tensor(named: name) else { fatalError("no \(name)") }
    var manifest = set.manifest
    let full = try ReadOnlyFile(path: checkpoint.files[file].path).read(count: info.byteCount, at: info.offset)
    let rowBytes = info.byteCount / info.shape[0]
    for r in 0..<set.tp {
        let bytes = rows[r].flatMap { full[($0 * rowBytes)..<(($0 + 1) * rowBytes)] }
        try overwritePiece(set, &manifest, name: name, rank: r, with: bytes)
    }
    try Data(manifest.encoded()).write(to: URL(fileURLWithPath: set.directory + "/" + Manifest.fileName))
}

/// The bytes of rank `r`'s piece of `name` as stored.
func pieceBytes(_ set: ShardSet, name: String, rank r: Int) throws -> [UInt8] {
    let path = set.directory + "/" + set.manifest.tensors[name]!.pieces[r].file
    let info = try SafetensorsFile(path: path).tensor(named: name)!
    return try ReadOnlyFile(path: path).read(count: info.byteCount, at: info.offset)
}

/// Overwrites rank `r`'s piece of `name` in its file with `bytes` (same size) and records their CRC-32C
/// in `manifest` (the caller writes the manifest out): wrong bytes with matching checksums.
func overwritePiece(_ set: ShardSet, _ manifest: inout Manifest, name: String, rank r: Int, with bytes: [UInt8]) throws {
    let path = set.directory + "/" + manifest.tensors[name]!.pieces[r].file
    let location = try SafetensorsFile(path: path).tensor(named: name)!
    precondition(location.byteCount == bytes.count)
    let handle = FileHandle(forUpdatingAtPath: path)!
    try handle.seek(toOffset: UInt64(location.offset))
    try handle.write(contentsOf: Data(bytes))
    try handle.close()
    var crc = CRC32C()
    bytes.withUnsafeBytes { crc.update($0) }
    manifest.tensors[name]!.pieces[r].crc32c = crc.hex
}

/// Shards `fixture` at `tp` with its preset, except that the tensors in `overrides` get the given rules:
/// a shard set laid out the way a wrong splitter would, under a manifest that says so.
func shardOverriding(_ fixture: String, tp: Int,
                     _ overrides: (ShardPlan.Tensor) -> SplitRule?) throws -> (set: ShardSet, checkpoint: Checkpoint, directory: String) {
    let dir = fixturePath(fixture)
    let ckpt = try Checkpoint(path: dir)
    let right = try ShardPlan(checkpoint: ckpt, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: tp)
    let plan = try ShardPlan(tensors: right.tensors.map { ($0.name, $0.dtype, $0.shape) },
                             rules: right.tensors.map { overrides($0) ?? $0.rule }, tp: tp)
    let out = temporaryPath("\(fixture)-wrong-tp\(tp)")
    let sources = try CheckpointSources(ckpt)
    try ShardSetWriter(plan: plan, directory: out).write(
        source: Manifest.Source(path: dir, files: ckpt.files.map { ($0.path as NSString).lastPathComponent },
                                modelType: ckpt.config?.modelType, rules: "test overrides"),
        tool: .init(name: "shardkit", version: Shard.toolVersion, operation: "shard"),
        inputs: [dir], extraFiles: ckpt.auxiliaryFiles.map { (from: dir + "/" + $0, name: $0) },
        sources: { t in [try sources.source(for: t.name, geometry: t.geometry)] })
    return (try ShardSet(directory: out), ckpt, out)
}
