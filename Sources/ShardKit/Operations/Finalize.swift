extension Reshard {
    /// Completes a shard set written in parts (`--ranks`): merges every `rank-R/part.json` into
    /// `manifest.json`. Refuses while any rank's part is missing, and while a run still writes into
    /// the directory (it holds the directory's lock exclusively, as a whole run does).
    @discardableResult
    public static func finalize(directory: String) throws -> Manifest {
        guard FileSystem.isDirectory(directory) else {
            throw ShardKitError(.invalidManifest, "\(directory): not a directory")
        }
        let lock = try FileLock(path: Path.join(directory, OutputDirectory.lockName), exclusive: true, what: directory)
        defer { lock.release() }
        let entries = try FileSystem.list(directory)
        guard !entries.contains(Manifest.fileName) else {
            throw ShardKitError(.outputExists, "\(directory): already has manifest.json")
        }
        let partNames = entries.filter {
            $0.hasPrefix("rank-") && FileSystem.exists(Path.join(directory, "\($0)/part.json"))
        }
        guard let first = partNames.first else {
            throw ShardKitError(.invalidManifest, "\(directory): no rank-*/part.json to finalize")
        }
        func readPart(_ dir: String) throws -> Manifest {
            let path = Path.join(directory, "\(dir)/part.json")
            let f = try ReadOnlyFile(path: path)
            return try Manifest(json: try f.readAll(limit: Manifest.maxBytes, what: "a part file"), path: path)
        }
        func badPart(_ dir: String, _ message: String) -> ShardKitError {
            ShardKitError(.invalidManifest, "\(directory)/\(dir)/part.json: \(message)")
        }
        var merged = try readPart(first)
        // A part is untrusted until merged and validated: check what the merge below indexes by (the
        // world size with overflow-checked arithmetic, before anything is sized by it).
        let (product, overflow) = merged.tp.multipliedReportingOverflow(by: merged.layout.pp)
        guard merged.tp >= 1, merged.layout.pp >= 1, !overflow, product <= ParallelLayout.maxWorldSize,
              merged.ranks.count == product,
              merged.order.count == merged.tensors.count, Set(merged.order) == Set(merged.tensors.keys) else {
            throw badPart(first, "malformed (tp, pp, ranks or order do not agree)")
        }
        let world = product
        var parts: [Manifest] = []
        for r in 0..<world {
            guard FileSystem.exists(Path.join(directory, "rank-\(r)/part.json")) else {
                throw ShardKitError(.invalidManifest,
                                    "\(directory): rank \(r) of \(world) is missing (no rank-\(r)/part.json)",
                                    remedy: .writeRank(r))
            }
            let p = try readPart("rank-\(r)")
            guard p.layout == merged.layout, p.order == merged.order, p.source == merged.source else {
                throw badPart("rank-\(r)", "belongs to a different run")
            }
            parts.append(p)
        }
        // Each part holds the pieces of its own rank; the merged tensor takes them in rank order.
        for name in merged.order {
            var t = merged.tensors[name]!
            t.pieces = try (0..<world).flatMap { r -> [Manifest.Piece] in
                guard let pt = parts[r].tensors[name], pt.dtype == t.dtype, pt.shape == t.shape, pt.rule == t.rule,
                      pt.stages == t.stages, pt.group == t.group, pt.pieces.count <= 1,
                      pt.pieces.allSatisfy({ $0.rank == r }) else {
                    throw badPart("rank-\(r)", "tensor \(name) disagrees with the other parts")
                }
                return pt.pieces
            }
            merged.tensors[name] = t
        }
        for r in 0..<world {
            for f in merged.ranks[r].files where !FileSystem.exists(Path.join(directory, f)) {
                throw ShardKitError(.invalidManifest, "\(directory): rank \(r) file \(f) is missing")
            }
        }
        for f in merged.extraFiles where !FileSystem.exists(Path.join(directory, f)) {
            throw ShardKitError(.invalidManifest, "\(directory): \(f) is missing (it is written with rank 0)")
        }
        try merged.validate(path: Path.join(directory, Manifest.fileName))
        try ShardSetWriter.writeManifest(&merged, directory: directory)
        for r in 0..<world { FileSystem.removeTree(Path.join(directory, "rank-\(r)/part.json")) }
        return merged
    }
}
