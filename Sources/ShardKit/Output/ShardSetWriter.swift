import Foundation

/// Writes a shard set for a `ShardPlan`: rank files (each `name.tmp`, fsynced, renamed), carried-along
/// files, then `manifest.json` last. On any error everything it created is removed.
///
/// Layout: with more than one world rank, `rank-W/model.safetensors` (or
/// `rank-W/model-0000i-of-0000N.safetensors` with an index when `maxFileSize` cuts it) for each world
/// rank W = stage · tp + TP rank; with one, an ordinary Hugging Face checkpoint at the top.
public struct ShardSetWriter {
    public struct Options: Sendable {
        public var force = false
        /// Largest rank file, in bytes (a single tensor larger than this gets a file of its own).
        public var maxFileSize = 5_000_000_000
        /// Copy-engine memory budget.
        public var bufferBudget = 64 << 20
        /// Output world ranks to write (nil: all). A partial run writes no manifest (see `finalize`).
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
        if let r = options.ranks, Set(r) == Set(0..<plan.worldSize) { options.ranks = nil }
        self.options = options
    }

    /// The rank files of world rank `r`, the tensors it holds assigned in plan order, a new file when
    /// `maxFileSize` would be passed.
    func filePlans(rank r: Int) throws -> [FilePlan] {
        var groups: [[Int]] = [[]]
        var size = 0
        for (i, t) in plan.tensors.enumerated() where t.layout(rank: r) != nil {
            let b = t.pieceBytes(rank: r)
            if !groups[groups.count - 1].isEmpty && size + b > options.maxFileSize {
                groups.append([])
                size = 0
            }
            groups[groups.count - 1].append(i)
            size += b
        }
        let prefix = plan.worldSize == 1 ? "" : "rank-\(r)/"
        var metadata = ["format": "pt"]
        if plan.worldSize > 1 { metadata["shardkit_rank"] = String(r); metadata["shardkit_tp"] = String(plan.tp) }
        if !plan.layout.isTensorParallelOnly {
            let (stage, tpRank) = plan.layout.coordinates(of: r)
            metadata["shardkit_pp"] = String(plan.layout.pp)
            metadata["shardkit_pp_rank"] = String(stage)
            metadata["shardkit_tp_rank"] = String(tpRank)
        }
        return try groups.enumerated().map { (k, indices) in
            let name = groups.count == 1 ? "model.safetensors"
                : "model-\(ShardSetWriter.pad5(k + 1))-of-\(ShardSetWriter.pad5(groups.count)).safetensors"
            let layout = try SafetensorsLayout(
                tensors: indices.map {
                    (plan.tensors[$0].name, plan.tensors[$0].dtype, plan.tensors[$0].pieceShape(rank: r))
                },
                metadata: metadata)
            return FilePlan(relativePath: prefix + name, tensorIndices: indices, layout: layout)
        }
    }

    static func pad5(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }

    /// Writes the shard set. `sources(t)` gives the sources for tensor `t` of the plan; `inputs` are
    /// the files and directories the run reads, which the output may not be, contain or lie inside.
    /// `extraFiles` are copied beside the ranks, `generatedFiles` written there (a converted config.json).
    /// Returns the manifest (already written unless only some ranks were asked for).
    @discardableResult
    public func write(source: Manifest.Source, tool: Manifest.Tool, inputs: [String],
                      extraFiles: [(from: String, name: String)], generatedFiles: [(name: String, bytes: [UInt8])] = [],
                      sources: @escaping @Sendable (ShardPlan.Tensor) throws -> [CopySource],
                      progress: ProgressHandler? = nil) throws -> Manifest {
        let ranks = options.ranks ?? Array(0..<plan.worldSize)
        for r in ranks where r < 0 || r >= plan.worldSize {
            throw ShardKitError(.notFound, "rank \(r) is out of range 0..<\(plan.worldSize)")
        }
        let files = try (0..<plan.worldSize).map { try filePlans(rank: $0) }
        let output = try OutputDirectory(path: directory, inputs: inputs, force: options.force, ranks: options.ranks)
        do {
            let run = Run(writer: self, output: output, ranks: ranks, files: files)
            let outputs = try run.createRankFiles()
            let checksums = try run.copyTensors(into: outputs, sources: sources, progress: progress)
            try run.commit(outputs)
            try run.writeRankIndexes()
            let extraNames = try run.copyExtraFiles(extraFiles, generated: generatedFiles)
            var manifest = run.manifest(source: source, tool: tool, extraFiles: extraNames, checksums: checksums)
            if let subset = options.ranks {
                try run.writeParts(of: manifest, ranks: subset)
            } else {
                try ShardSetWriter.writeManifest(&manifest, directory: directory, durable: options.durable)
            }
            output.release()
            return manifest
        } catch {
            output.abandon()
            throw error
        }
    }

    /// One run of the writer: its output directory, the ranks it writes and their file plans.
    private struct Run {
        let writer: ShardSetWriter
        let output: OutputDirectory
        let ranks: [Int]
        let files: [[FilePlan]]
        var plan: ShardPlan { writer.plan }
        var options: Options { writer.options }
        /// Which file and offset each (tensor, rank) piece goes to: `location[rank][tensor]` (unset
        /// for a tensor the rank does not hold).
        let location: [[(file: Int, offset: Int)]]

        init(writer: ShardSetWriter, output: OutputDirectory, ranks: [Int], files: [[FilePlan]]) {
            self.writer = writer
            self.output = output
            self.ranks = ranks
            self.files = files
            var location = [[(file: Int, offset: Int)]](repeating: [], count: writer.plan.worldSize)
            for r in 0..<writer.plan.worldSize {
                location[r] = [(Int, Int)](repeating: (0, 0), count: writer.plan.tensors.count)
                for (k, f) in files[r].enumerated() {
                    for (j, ti) in f.tensorIndices.enumerated() { location[r][ti] = (k, f.layout.entries[j].offset) }
                }
            }
            self.location = location
        }

        /// Phase 1: every rank file is created (header first) before the copy starts.
        func createRankFiles() throws -> [[OutputFile]] {
            if plan.worldSize > 1 { for r in ranks { _ = try output.makeFreshDirectory("rank-\(r)") } }
            var outputs = [[OutputFile]](repeating: [], count: plan.worldSize)
            for r in ranks {
                for f in files[r] {
                    let path = Path.join(output.path, f.relativePath)
                    output.track(path)
                    let out = try OutputFile(path: path, durable: options.durable)
                    try f.layout.writeHeader(to: out)
                    outputs[r].append(out)
                }
            }
            return outputs
        }

        /// Phase 2: every tensor copied to its pieces, `workers` tensors at a time; returns each
        /// piece's CRC-32C as `checksums[rank][tensor]`.
        func copyTensors(into outputs: [[OutputFile]], sources: @escaping (ShardPlan.Tensor) throws -> [CopySource],
                         progress: ProgressHandler?) throws -> [[UInt32]] {
            let tensorCount = plan.tensors.count
            var checksums = [[UInt32]](repeating: [], count: plan.worldSize)
            for r in ranks { checksums[r] = [UInt32](repeating: 0, count: tensorCount) }
            let sinkBuffer = max(64 << 10, min(1 << 20, options.bufferBudget / 64))
            let tracker = ProgressTracker(total: ranks.reduce(0) { $0 + plan.bytesPerRank[$1] }, handler: progress)
            let budget = options.bufferBudget
            try WorkerPool.forEach(count: tensorCount, workers: options.workers,
                                   makeState: { CopyBuffers(budget: budget / $0) }) { ti, buffers in
                let t = plan.tensors[ti]
                let held = ranks.filter { t.layout(rank: $0) != nil }
                let sinks = held.map { r in
                    FileSink(file: outputs[r][location[r][ti].file], offset: location[r][ti].offset,
                             count: t.pieceBytes(rank: r), bufferSize: sinkBuffer)
                }
                try CopyEngine.copy(tensor: t.name, geometry: t.geometry, sources: try sources(t),
                                    destinations: zip(held, sinks).map {
                                        CopyDestination(layout: t.layout(rank: $0)!, sink: $1)
                                    },
                                    buffers: buffers) { tracker.add($0) }
                let crcs = try zip(held, sinks).map { (r, s) -> UInt32 in
                    try s.flush()
                    guard s.isComplete else {
                        throw ShardKitError(.io, "\(s.file.temporaryPath): piece of \(t.name) for rank \(r) "
                                                 + "incomplete (internal error)")
                    }
                    return s.crc.value
                }
                return { for (i, r) in held.enumerated() { checksums[r][ti] = crcs[i] } }
            }
            return checksums
        }

        /// Phase 3: fsync and rename every rank file; the fsyncs wait on the disk, so they run side by side.
        func commit(_ outputs: [[OutputFile]]) throws {
            let all = ranks.flatMap { outputs[$0] }
            try WorkerPool.forEach(count: all.count, workers: min(8, all.count)) { i in
                try all[i].commit()
                return {}
            }
        }

        /// Phase 4: rank-level index files, so that each rank directory is an ordinary multi-file checkpoint.
        func writeRankIndexes() throws {
            for r in ranks where files[r].count > 1 {
                var map: [(tensor: String, file: String)] = []
                for f in files[r] {
                    for e in f.layout.entries { map.append((e.name, Path.name(f.relativePath))) }
                }
                let dir = plan.worldSize == 1 ? output.path : Path.join(output.path, "rank-\(r)")
                let path = Path.join(dir, HFIndex.safetensorsName)
                output.track(path)
                try FileSystem.writeSmallFile(HFIndex.serialized(weightMap: map, totalSize: plan.bytesPerRank[r]),
                                              to: path, durable: options.durable)
            }
        }

        /// Phase 5: the carried-along files (written with rank 0); returns their names.
        func copyExtraFiles(_ extraFiles: [(from: String, name: String)],
                            generated: [(name: String, bytes: [UInt8])]) throws -> [String] {
            if options.ranks == nil || ranks.contains(0) {
                for (from, name) in extraFiles {
                    let to = Path.join(output.path, name)
                    output.track(to)
                    try FileSystem.copySmallFile(from: from, to: to, durable: options.durable)
                }
                for (name, bytes) in generated {
                    let to = Path.join(output.path, name)
                    output.track(to)
                    try FileSystem.writeSmallFile(bytes, to: to, durable: options.durable)
                }
            }
            return (extraFiles.map(\.name) + generated.map(\.name)).sorted()
        }

        /// Phase 6: the manifest of the whole set (pieces of ranks not written here have no checksum).
        func manifest(source: Manifest.Source, tool: Manifest.Tool, extraFiles: [String],
                      checksums: [[UInt32]]) -> Manifest {
            var tensors: [String: Manifest.Tensor] = [:]
            tensors.reserveCapacity(plan.tensors.count)
            var shared = Interner()
            let written = Set(ranks)
            for (ti, t) in plan.tensors.enumerated() {
                let pieces = t.holders.enumerated().map { k, r in
                    Manifest.Piece(rank: r, file: files[r][location[r][ti].file].relativePath,
                                   shape: shared.ints(t.pieceShape(rank: r)),
                                   intervals: shared.intervals(t.layouts[k % t.layouts.count].segments.map {
                                       [$0.lowerBound, $0.upperBound]
                                   }),
                                   crc32c: written.contains(r) ? CRC32C(value: checksums[r][ti]).hex : "")
                }
                tensors[t.name] = Manifest.Tensor(dtype: t.dtype, shape: t.shape, rule: t.rule,
                                                  paddedSize: t.paddedSize, stages: shared.ints(t.stages),
                                                  group: t.group, pieces: pieces)
            }
            let layout = plan.layout
            return Manifest(layout: layout, tool: tool, source: source,
                            ranks: (0..<plan.worldSize).map {
                                let (stage, r) = layout.coordinates(of: $0)
                                return Manifest.Rank(rank: $0, pp: stage, tp: r, files: files[$0].map(\.relativePath))
                            },
                            extraFiles: extraFiles, tensors: tensors, order: plan.tensors.map(\.name))
        }

        /// Phase 7 of a partial run: each rank's part of the manifest, for `finalize`.
        func writeParts(of manifest: Manifest, ranks subset: [Int]) throws {
            for r in subset {
                var part = manifest
                part.tensors = manifest.tensors.mapValues {
                    var t = $0
                    t.pieces = t.pieces.filter { $0.rank == r }
                    return t
                }
                let path = Path.join(output.path, "rank-\(r)/part.json")
                output.track(path)
                try FileSystem.writeSmallFile(try part.encoded(), to: path, durable: options.durable)
            }
            if options.durable { try FileSystem.syncDirectory(output.path) }
        }
    }

    /// Writes `manifest.json` through a temporary file, then fsyncs the directory.
    static func writeManifest(_ manifest: inout Manifest, directory: String, durable: Bool = true) throws {
        // The rank files' renames must be durable before the manifest that vouches for them.
        if durable {
            if manifest.worldSize > 1 {
                for r in 0..<manifest.worldSize { try FileSystem.syncDirectory(Path.join(directory, "rank-\(r)")) }
            }
            try FileSystem.syncDirectory(directory)
        }
        let file = try OutputFile(path: Path.join(directory, Manifest.fileName), durable: durable)
        var offset = 0
        try manifest.encode { piece in
            try piece.withUnsafeBytes { try file.write($0, at: offset) }
            offset += piece.count
        }
        try file.commit()
        if durable { try FileSystem.syncDirectory(directory) }
    }
}
