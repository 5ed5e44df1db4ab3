import Foundation

/// Writes a shard set for a `ShardPlan`: rank files (each `name.tmp`, fsynced, renamed), carried-along
/// files, then `manifest.json` last. On any error everything it created is removed.
///
/// Layout: for tp > 1, `rank-R/model.safetensors` (or `rank-R/model-0000i-of-0000N.safetensors` with
/// an index when `maxFileSize` cuts it); for tp = 1, an ordinary Hugging Face checkpoint at the top.
public struct ShardSetWriter {
    public struct Options: Sendable {
        public var force = false
        /// Largest rank file, in bytes (a single tensor larger than this gets a file of its own).
        public var maxFileSize = 5_000_000_000
        /// Copy-engine memory budget.
        public var bufferBudget = 64 << 20
        /// Output ranks to write (nil: all). A partial run writes no manifest (see `finalize`).
        public var ranks: [Int]? = nil
        /// Tensors copied at once, each worker with its own share of the buffer budget.
        public var workers = 2
        /// fsync every file and directory before the manifest (crash safety). False (`--no-sync`)
        /// leaves the data to the kernel's writeback: a finished run is still complete, but a power
        /// loss soon after can leave a manifest whose files did not reach the disk.
        public var durable = true
        public init() {}
    }

    /// Where each piece goes: its file (index into `files[rank]`) and offset.
    struct FilePlan {
        var relativePath: String
        var tensorIndices: [Int]
        var layout: SafetensorsLayout
    }

    public let plan: ShardPlan
    public let directory: String
    public let options: Options

    public init(plan: ShardPlan, directory: String, options: Options = Options()) {
        self.plan = plan
        self.directory = directory
        var options = options
        // Asking for every rank is a whole run.
        if let r = options.ranks, Set(r) == Set(0..<plan.tp) { options.ranks = nil }
        self.options = options
    }

    /// The rank files of rank `r`, tensors assigned in plan order, a new file when `maxFileSize` would be passed.
    func filePlans(rank r: Int) throws -> [FilePlan] {
        var groups: [[Int]] = [[]]
        var size = 0
        for (i, t) in plan.tensors.enumerated() {
            let b = t.pieceBytes(rank: r)
            if !groups[groups.count - 1].isEmpty && size + b > options.maxFileSize {
                groups.append([])
                size = 0
            }
            groups[groups.count - 1].append(i)
            size += b
        }
        let prefix = plan.tp == 1 ? "" : "rank-\(r)/"
        var metadata = ["format": "pt"]
        if plan.tp > 1 { metadata["shardkit_rank"] = String(r); metadata["shardkit_tp"] = String(plan.tp) }
        return try groups.enumerated().map { (k, indices) in
            let name = groups.count == 1 ? "model.safetensors"
                : "model-\(ShardSetWriter.pad5(k + 1))-of-\(ShardSetWriter.pad5(groups.count)).safetensors"
            let layout = try SafetensorsLayout(
                tensors: indices.map { (plan.tensors[$0].name, plan.tensors[$0].dtype, plan.tensors[$0].pieceShape(rank: r)) },
                metadata: metadata)
            return FilePlan(relativePath: prefix + name, tensorIndices: indices, layout: layout)
        }
    }

    static func pad5(_ n: Int) -> String { let s = String(n); return String(repeating: "0", count: max(0, 5 - s.count)) + s }

    /// Prepares the output directory: refuses an existing one without `force`, and with `force` only
    /// replaces a directory that is empty or looks like ShardKit output.
    public static func prepare(directory: String, force: Bool, keepExistingRanks: Bool = false) throws {
        if FileSystem.exists(directory) {
            guard FileSystem.isDirectory(directory) else {
                throw ShardKitError(.outputExists, "\(directory): exists and is not a directory")
            }
            let entries = try FileSystem.list(directory)
            let ours = entries.contains(Manifest.fileName) || entries.contains { $0.hasPrefix("rank-") || $0.hasSuffix(".tmp") }
            // A partial run adds ranks to a directory of parts; it must not write into a finished shard
            // set (whose manifest would then vouch for rewritten files) nor into someone else's directory.
            if !entries.isEmpty && keepExistingRanks && !entries.contains(Manifest.fileName) {
                guard ours else {
                    throw ShardKitError(.outputExists, "\(directory): not a ShardKit output directory (no manifest.json or rank-*); refusing to write into it")
                }
            } else if !entries.isEmpty {
                guard force else {
                    throw ShardKitError(.outputExists, "\(directory): already exists; pass --force to replace it")
                }
                guard ours else {
                    throw ShardKitError(.outputExists, "\(directory): not a ShardKit output directory (no manifest.json or rank-*); refusing to replace it")
                }
                FileSystem.removeTree(directory)
            }
        }
        try FileSystem.makeDirectories(directory)
    }

    /// Writes the shard set. `sources(t)` gives the sources for tensor `t` of the plan.
    /// Returns the manifest (already written unless only some ranks were asked for).
    @discardableResult
    public func write(source: Manifest.Source, tool: Manifest.Tool, extraFiles: [(from: String, name: String)],
                      sources: @escaping @Sendable (ShardPlan.Tensor) throws -> [CopySource],
                      progress: ProgressHandler? = nil) throws -> Manifest {
        let ranks = options.ranks ?? Array(0..<plan.tp)
        let existed = FileSystem.exists(directory)
        try ShardSetWriter.prepare(directory: directory, force: options.force, keepExistingRanks: options.ranks != nil)
        var created: [String] = []
        do {
            let manifest = try writeAll(ranks: ranks, source: source, tool: tool, extraFiles: extraFiles,
                                        sources: sources, progress: progress, created: &created)
            return manifest
        } catch {
            if options.ranks == nil {
                FileSystem.removeTree(directory)
            } else {
                // Only what this run created: a run writing other ranks into the same directory at
                // the same time keeps its work. A directory this run made goes only if now empty.
                for p in created.reversed() { FileSystem.removeTree(p) }
                if !existed { _ = rmdir(directory) }
            }
            throw error
        }
    }

    private func writeAll(ranks: [Int], source: Manifest.Source, tool: Manifest.Tool, extraFiles: [(from: String, name: String)],
                          sources: @escaping @Sendable (ShardPlan.Tensor) throws -> [CopySource],
                          progress: ProgressHandler?, created: inout [String]) throws -> Manifest {
        for r in ranks where r < 0 || r >= plan.tp {
            throw ShardKitError(.notFound, "rank \(r) is out of range 0..<\(plan.tp)")
        }
        let files = try (0..<plan.tp).map { try filePlans(rank: $0) }
        let total = ranks.reduce(0) { $0 + plan.bytesPerRank[$1] }
        for r in ranks where plan.tp > 1 {
            let dir = FileSystem.join(directory, "rank-\(r)")
            if FileSystem.exists(dir) { FileSystem.removeTree(dir) }
            try FileSystem.makeDirectories(dir)
            created.append(dir)
        }
        // Which file and offset each (tensor, rank) piece goes to.
        var location = [[(file: Int, offset: Int)]](repeating: [], count: plan.tp)
        for r in 0..<plan.tp {
            location[r] = [(Int, Int)](repeating: (0, 0), count: plan.tensors.count)
            for (k, f) in files[r].enumerated() {
                for (j, ti) in f.tensorIndices.enumerated() { location[r][ti] = (k, f.layout.entries[j].offset) }
            }
        }
        // Every rank file is created (header first) before the copy starts, and committed (fsync,
        // rename) once all of its pieces are written.
        var outputs = [[OutputFile]](repeating: [], count: plan.tp)
        for r in ranks {
            for f in files[r] {
                let path = FileSystem.join(directory, f.relativePath)
                created.append(path)
                let out = try OutputFile(path: path, durable: options.durable)
                try f.layout.writeHeader(to: out)
                outputs[r].append(out)
            }
        }
        var checksums = [[String]](repeating: [String](repeating: "", count: plan.tensors.count), count: plan.tp)
        let sinkBuffer = max(64 << 10, min(1 << 20, options.bufferBudget / 64))
        let tracker = ProgressTracker(total: total, handler: progress)
        try ParallelWork.forEach(count: plan.tensors.count, workers: options.workers,
                                 budget: options.bufferBudget) { ti, buffers in
            let t = plan.tensors[ti]
            let sinks = ranks.map { r in
                (rank: r, sink: FileSink(file: outputs[r][location[r][ti].file], offset: location[r][ti].offset,
                                         count: t.pieceBytes(rank: r), bufferSize: sinkBuffer))
            }
            try CopyEngine.copy(tensor: t.name, geometry: t.geometry, sources: try sources(t),
                                destinations: sinks.map { CopyDestination(layout: t.layouts[$0.rank], sink: $0.sink) },
                                buffers: buffers) { tracker.add($0) }
            let hexes = try sinks.map { (r, s) -> String in
                try s.flush()
                guard s.isComplete else {
                    throw ShardKitError(.io, "\(s.file.temporaryPath): piece of \(t.name) for rank \(r) incomplete (internal error)")
                }
                return s.crc.hex
            }
            return { for (i, r) in ranks.enumerated() { checksums[r][ti] = hexes[i] } }
        }
        // fsync + rename every rank file; the fsyncs wait on the disk, so run them side by side.
        let all = ranks.flatMap { outputs[$0] }
        try ParallelWork.forEach(count: all.count, workers: min(8, all.count), budget: 4096) { i, _ in
            try all[i].commit()
            return {}
        }

        // Rank-level index files, so that each rank directory is an ordinary multi-file checkpoint.
        for r in ranks where files[r].count > 1 {
            var map: [(String, JSONValue)] = []
            for f in files[r] {
                for e in f.layout.entries { map.append((e.name, .string(f.relativePath.lastPathComponent))) }
            }
            let json = JSONValue.object([
                ("metadata", .object([("total_size", .int(plan.bytesPerRank[r]))])),
                ("weight_map", .object(map.sorted { $0.0 < $1.0 })),
            ])
            let dir = plan.tp == 1 ? directory : FileSystem.join(directory, "rank-\(r)")
            let path = FileSystem.join(dir, Checkpoint.indexName)
            created.append(path)
            try ShardSetWriter.writeSmallFile(Array(json.serialized.utf8), to: path, durable: options.durable)
        }
        var extraNames: [String] = []
        if options.ranks == nil || ranks.contains(0) {
            for (from, name) in extraFiles {
                let to = FileSystem.join(directory, name)
                created.append(to)
                try FileSystem.copySmallFile(from: from, to: to, durable: options.durable)
                extraNames.append(name)
            }
        } else {
            extraNames = extraFiles.map(\.name)
        }

        var tensors: [String: Manifest.Tensor] = [:]
        for (ti, t) in plan.tensors.enumerated() {
            let pieces = (0..<plan.tp).map { r in
                Manifest.Piece(rank: r, file: files[r][location[r][ti].file].relativePath, shape: t.pieceShape(rank: r),
                               intervals: t.layouts[r].segments.map { [$0.lowerBound, $0.upperBound] },
                               crc32c: ranks.contains(r) ? checksums[r][ti] : "")
            }
            tensors[t.name] = Manifest.Tensor(dtype: t.dtype, shape: t.shape, rule: t.rule, paddedSize: t.paddedSize, pieces: pieces)
        }
        var manifest = Manifest(tp: plan.tp, tool: tool, source: source,
                                ranks: (0..<plan.tp).map { Manifest.Rank(rank: $0, files: files[$0].map(\.relativePath)) },
                                extraFiles: extraNames.sorted(), tensors: tensors, order: plan.tensors.map(\.name))
        if let subset = options.ranks {
            // A partial run: record this part's pieces for `finalize` instead of the manifest.
            for r in subset {
                var part = manifest
                part.tensors = tensors.mapValues { var t = $0; t.pieces = [t.pieces[r]]; return t }
                let path = FileSystem.join(directory, "rank-\(r)/part.json")
                created.append(path)
                try ShardSetWriter.writeSmallFile(Array(try part.encoded()), to: path, durable: options.durable)
            }
            if options.durable { try FileSystem.syncDirectory(directory) }
            return manifest
        }
        try ShardSetWriter.writeManifest(&manifest, directory: directory, durable: options.durable)
        return manifest
    }

    /// Writes `manifest.json` through a temporary file, then fsyncs the directory.
    static func writeManifest(_ manifest: inout Manifest, directory: String, durable: Bool = true) throws {
        // The rank files' renames must be durable before the manifest that vouches for them.
        if durable {
            if manifest.tp > 1 { for r in 0..<manifest.tp { try FileSystem.syncDirectory(FileSystem.join(directory, "rank-\(r)")) } }
            try FileSystem.syncDirectory(directory)
        }
        try writeSmallFile(Array(try manifest.encoded()), to: FileSystem.join(directory, Manifest.fileName), durable: durable)
        if durable { try FileSystem.syncDirectory(directory) }
    }

    static func writeSmallFile(_ bytes: [UInt8], to path: String, durable: Bool = true) throws {
        let f = try OutputFile(path: path, durable: durable)
        try bytes.withUnsafeBytes { try f.write($0, at: 0) }
        try f.commit()
    }
}
