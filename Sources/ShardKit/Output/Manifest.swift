/// `manifest.json`: what a shard set holds, rank by rank (docs/manifest.md, docs/manifest.schema.json).
/// Written last: a directory without it is an unfinished run.
public struct Manifest: Sendable, Equatable {
    public static let fileName = "manifest.json"
    public static let formatName = "shardkit-manifest"

    public struct Source: Sendable, Equatable {
        /// The checkpoint the shards were cut from (as given on the command line).
        public var path: String
        public var files: [String]
        public var modelType: String?
        /// The rule set used: a preset name, a rules file, or both.
        public var rules: String
        public init(path: String, files: [String], modelType: String?, rules: String) {
            self.path = path; self.files = files; self.modelType = modelType; self.rules = rules
        }
    }

    public struct Tool: Sendable, Equatable {
        public var name: String
        public var version: String
        /// "shard" or "reshard" (a run finalized from parts records the operation of its parts).
        public var operation: String
        public init(name: String, version: String, operation: String) {
            self.name = name; self.version = version; self.operation = operation
        }
    }

    public struct Rank: Sendable, Equatable {
        /// The world rank (stage · tp + TP rank).
        public var rank: Int
        /// Its pipeline stage and TP rank within the stage.
        public var pp: Int
        public var tp: Int
        public var files: [String]
        public init(rank: Int, pp: Int, tp: Int, files: [String]) {
            self.rank = rank; self.pp = pp; self.tp = tp; self.files = files
        }
    }

    public struct Piece: Sendable, Equatable {
        public var rank: Int
        /// The rank file holding the piece, relative to the manifest's directory.
        public var file: String
        /// The piece's shape (the global shape with the split dimension replaced by the piece's length).
        public var shape: [Int]
        /// Global `[start, end)` intervals along the split dimension, ascending; indices at or past the
        /// true size are zero padding.
        public var intervals: [[Int]]
        /// CRC-32C of the piece's bytes, 8 lowercase hex digits.
        public var crc32c: String
    }

    public struct Tensor: Sendable, Equatable {
        public var dtype: DType
        public var shape: [Int]
        public var rule: SplitRule
        /// Present when the split dimension is padded (vocab rules): its padded size.
        public var paddedSize: Int?
        /// The pipeline stages holding the tensor (two for an embedding tied to the LM head).
        public var stages: [Int] = [0]
        /// The expert-parallel group holding it (an expert's tensor with EP > 1).
        public var group: Int? = nil
        /// One piece per holding world rank, in rank order.
        public var pieces: [Piece]

        /// World rank `w`'s piece, nil when `w` holds none.
        public func piece(rank w: Int) -> Piece? {
            sortedPosition(of: w, count: pieces.count) { pieces[$0].rank }.map { pieces[$0] }
        }
    }

    public var format: String = Manifest.formatName
    /// 1 for plain tensor parallelism (readable by every ShardKit), 2 with pipeline stages or EP.
    public var version: Int
    /// Stages, TP degree, EP groups, each stage's layers and the expert placement.
    public var layout: ParallelLayout
    public var tp: Int {
        get { layout.tp }
        set { layout.tp = newValue }
    }
    /// Number of world ranks (stages × TP).
    public var worldSize: Int { layout.worldSize }
    public var checksum: String = "crc32c"
    public var tool: Tool
    public var source: Source
    public var ranks: [Rank]
    /// Non-weight files copied into the directory (config.json, tokenizer files).
    public var extraFiles: [String]
    public var tensors: [String: Tensor]
    /// Tensor names in the order they were written (the source's order).
    public var order: [String]


    public init(layout: ParallelLayout, tool: Tool, source: Source, ranks: [Rank], extraFiles: [String],
                tensors: [String: Tensor], order: [String]) {
        self.layout = layout; self.tool = tool; self.source = source; self.ranks = ranks
        self.extraFiles = extraFiles; self.tensors = tensors; self.order = order
        self.version = layout.isTensorParallelOnly ? 1 : 2
    }

    /// Largest manifest (or part file) read: ~4 KB per tensor for a million tensors, with room to spare.
    public static let maxBytes = 4 << 30

    /// Reads and validates `directory/manifest.json`: structure, paths, and every piece's intervals
    /// against its rule (a manifest is untrusted input).
    public static func read(directory: String) throws -> Manifest {
        let path = Path.join(directory, fileName)
        guard FileSystem.exists(path) else {
            // A run's traces: rank directories, its lock file, temporary files.
            let unfinished = FileSystem.isDirectory(directory) && ((try? FileSystem.list(directory)) ?? []).contains {
                $0.hasPrefix("rank-") || $0.hasPrefix(".shardkit") || $0.hasSuffix(".tmp")
            }
            let parts = unfinished && ((try? FileSystem.list(directory)) ?? []).contains {
                $0.hasPrefix("rank-") && FileSystem.exists(Path.join(directory, "\($0)/part.json"))
            }
            if parts {
                throw ShardKitError(.invalidManifest, "\(directory): no manifest.json: ranks written in parts",
                                    remedy: .finalize(directory: directory))
            }
            guard FileSystem.entryExists(directory) else {
                throw ShardKitError(.notFound, "\(directory): no such directory")
            }
            let empty = FileSystem.isDirectory(directory) && ((try? FileSystem.list(directory)) ?? []).isEmpty
            throw ShardKitError(.invalidManifest, unfinished
                ? "\(directory): no manifest.json: unfinished run (shard it again, replacing the directory)"
                : empty ? "\(directory): no manifest.json: an empty directory (an unfinished run, or not a shard set)"
                : "\(directory): no manifest.json: not a ShardKit shard set")
        }
        let file = try ReadOnlyFile(path: path)
        let manifest = try Manifest(json: try file.readAll(limit: Manifest.maxBytes, what: "a manifest"), path: path)
        try manifest.validate(path: path)
        return manifest
    }

    /// Checks everything that can be checked without opening the rank files.
    public func validate(path: String) throws {
        func bad(_ m: String) -> ShardKitError { ShardKitError(.invalidManifest, "\(path): \(m)") }
        guard format == Manifest.formatName else {
            throw bad("format is \"\(format)\", expected \"\(Manifest.formatName)\"")
        }
        guard version == 1 || version == 2 else {
            throw bad("version \(version) is not supported (this ShardKit reads versions 1 and 2)")
        }
        guard checksum == "crc32c" else { throw bad("checksum \"\(checksum)\" is not supported") }
        guard tp >= 1 else { throw bad("tp must be at least 1") }
        if version == 1 && !layout.isTensorParallelOnly {
            throw bad("version 1 describes tensor parallelism only (pp \(layout.pp), ep \(layout.ep))")
        }
        do { try layout.validate(layers: nil) } catch let e as ShardKitError { throw bad(e.message) }
        let world = layout.worldSize
        // Counts first: a huge "tp" must be refused, not materialized as 0..<tp.
        guard ranks.count == world, ranks.enumerated().allSatisfy({ $0.offset == $0.element.rank }) else {
            throw bad("ranks must list 0..<\(world) in order")
        }
        for r in ranks where (r.pp, r.tp) != layout.coordinates(of: r.rank) {
            throw bad("rank \(r.rank): coordinates pp \(r.pp), tp \(r.tp); expected \(layout.coordinates(of: r.rank))")
        }
        try checkAgainstNames(path: path)
        var rankFiles: [Set<String>] = []
        for r in ranks {
            for f in r.files where !Manifest.isSafeRelativePath(f) {
                throw bad("rank \(r.rank) file \"\(f)\" is not a relative path inside the directory")
            }
            rankFiles.append(Set(r.files))
        }
        for f in extraFiles where !Manifest.isSafeRelativePath(f) {
            throw bad("extra file \"\(f)\" is not a relative path inside the directory")
        }
        // Extra files are copied into a reshard's output after its rank files: one must never land on
        // a rank file, an index or the manifest (which must be written last, by ShardKit).
        let allRankFiles = rankFiles.reduce(into: Set<String>()) { $0.formUnion($1) }
        for f in extraFiles where allRankFiles.contains(f) || f == Manifest.fileName || f.hasPrefix("rank-")
            || Path.name(f) == Checkpoint.indexName || f.hasSuffix(".safetensors") {
            throw bad("extra file \"\(f)\" would overwrite a rank file, an index or the manifest")
        }
        guard Set(order) == Set(tensors.keys), order.count == tensors.count else {
            throw bad("\"order\" must list every tensor once")
        }
        // Readers add up piece sizes (progress, totals): the sum over every piece must fit in an Int.
        var allPieceBytes = 0
        var layoutsOf = [Int: RuleLayouts]()
        for name in order {
            let t = tensors[name]!
            func badTensor(_ m: String) -> ShardKitError { bad("tensor \(name): \(m)") }
            guard t.shape.allSatisfy({ $0 >= 0 }), checkedProduct(t.shape, times: t.dtype.size) != nil else {
                throw badTensor("invalid shape \(t.shape)")
            }
            try checkPlacement(of: t, name: name, badTensor)
            let (holders, ways) = layout.holders(stages: t.stages, group: t.group)
            guard t.pieces.count == holders.count, zip(t.pieces, holders).allSatisfy({ $0.rank == $1 }) else {
                throw badTensor("pieces must be ranks \(describeRuns(holders)) in order")
            }
            let size = t.rule.dim.map { $0 < t.shape.count ? t.shape[$0] : -1 } ?? (t.shape.first ?? 1)
            guard size >= 0 else { throw badTensor("rule dim \(t.rule.dim!) outside shape \(t.shape)") }
            let padded = t.rule.paddedSize(size, ranks: ways)
            guard t.paddedSize == (padded != size ? padded : nil) else {
                throw badTensor("padded_size \(t.paddedSize.map(String.init) ?? "null") "
                                + "disagrees with the rule (\(padded))")
            }
            let expectedLayouts: [PieceLayout]
            do {
                expectedLayouts = try layoutsOf[ways, default: RuleLayouts(ranks: ways)](
                    t.rule, size: t.shape.isEmpty ? 1 : size, tensor: name)
            } catch let e as ShardKitError { throw bad(e.message) }
            for (k, p) in t.pieces.enumerated() {
                guard rankFiles[p.rank].contains(p.file) else {
                    throw badTensor("rank \(p.rank) piece names file \(p.file), not one of the rank's files")
                }
                let expected = expectedLayouts[k % ways]
                guard p.intervals == expected.segments.map({ [$0.lowerBound, $0.upperBound] }) else {
                    throw badTensor("rank \(p.rank) intervals \(p.intervals) are not what rule \(t.rule.kindName) "
                                    + "gives (\(expected.segments.map { [$0.lowerBound, $0.upperBound] }))")
                }
                var shape = t.shape
                if let d = t.rule.dim { shape[d] = expected.length }
                guard p.shape == shape else { throw badTensor("rank \(p.rank) shape \(p.shape), expected \(shape)") }
                guard let bytes = checkedProduct(shape, times: t.dtype.size),
                      case (let sum, false) = allPieceBytes.addingReportingOverflow(bytes) else {
                    throw badTensor("piece sizes overflow")
                }
                allPieceBytes = sum
                guard CRC32C.parse(hex: p.crc32c) != nil else {
                    throw badTensor("rank \(p.rank) crc32c \"\(p.crc32c)\" is not 8 hex digits")
                }
            }
        }
    }

    /// The stage table and the expert placement against what the tensor names say: the stages hold
    /// no layer past the last one named (layers past the table, multi-token prediction, are the last
    /// stage's), and every MoE layer's placement places exactly the experts its tensors name.
    private func checkAgainstNames(path: String) throws {
        func bad(_ m: String) -> ShardKitError { ShardKitError(.invalidManifest, "\(path): \(m)") }
        guard !layout.isTensorParallelOnly else { return }
        var named = 0
        var experts: [Int: Int] = [:]
        for name in order {
            let role = TensorRole.of(name)
            guard let layer = role.layer else { continue }
            named = max(named, layer + 1)
            if let e = role.expert { experts[layer] = max(experts[layer] ?? 0, e + 1) }
        }
        if let end = layout.stageLayers.last?.upperBound, end > named {
            throw bad("stages hold layers 0..<\(end), the tensors name layers 0..<\(named)")
        }
        guard layout.ep > 1 else { return }
        for (layer, groups) in layout.experts {
            guard let n = experts[layer] else {
                throw bad("experts: the placement names layer \(layer), whose tensors name no expert")
            }
            do {
                try ParallelLayout.checkPlacement(groups, experts: n, layer: layer, ep: layout.ep)
            } catch let e as ShardKitError { throw bad("experts: \(e.message)") }
        }
        if let layer = experts.keys.sorted().first(where: { layout.experts[$0] == nil }) {
            throw bad("experts: layer \(layer) has expert tensors but no placement")
        }
    }

    /// A tensor's stages and EP group against the layout and against what its name says (a layer's
    /// tensor lies in that layer's stage; an expert's, with EP > 1, in that expert's group).
    private func checkPlacement(of t: Tensor, name: String, _ badTensor: (String) -> ShardKitError) throws {
        guard !t.stages.isEmpty, zip(t.stages, t.stages.dropFirst()).allSatisfy({ $0 < $1 }),
              t.stages.allSatisfy({ $0 >= 0 && $0 < layout.pp }) else {
            throw badTensor("stages \(t.stages) must be ascending stages of 0..<\(layout.pp)")
        }
        if let g = t.group, layout.ep == 1 || g < 0 || g >= layout.ep {
            throw badTensor("ep_group \(g) with EP \(layout.ep)")
        }
        if layout.isTensorParallelOnly { return }
        let role = TensorRole.of(name)
        if let layer = role.layer {
            // A layer past the stage table (DeepSeek-V3's multi-token-prediction layers) is the last stage's.
            let beyond = layer >= (layout.stageLayers.last?.upperBound ?? Int.max)
            if !layout.stageLayers.isEmpty, t.stages != [beyond ? layout.pp - 1 : layout.stage(ofLayer: layer) ?? -1] {
                throw badTensor("a tensor of layer \(layer) in stages \(t.stages); the stage table puts the layer in "
                                + "\(layout.stage(ofLayer: layer).map(String.init) ?? "no stage")")
            }
            if layout.ep > 1, let e = role.expert, t.group != layout.group(ofExpert: e, layer: layer) {
                throw badTensor("expert \(e) of layer \(layer) in EP group \(t.group.map(String.init) ?? "none"), "
                    + "the placement says \(layout.group(ofExpert: e, layer: layer).map(String.init) ?? "none")")
            }
        }
        if t.group != nil && role.expert == nil { throw badTensor("ep_group on a tensor that is not an expert's") }
        // Outside the layers: the last stage's modules there, the rest with the first (an embedding tied
        // to the head with the last too).
        let last = layout.pp - 1
        switch role {
        case .last where t.stages != [last]:
            throw badTensor("stages \(t.stages): the final norm and head belong to the last stage, \(last)")
        case .first where t.stages != [0] && t.stages != [0, last]:
            throw badTensor("stages \(t.stages): a tensor before the layers belongs to stage 0 (and, tied to the "
                            + "head, to stage \(last))")
        default: break
        }
    }

    static func isSafeRelativePath(_ p: String) -> Bool {
        !p.isEmpty && !p.hasPrefix("/") && !p.split(separator: "/", omittingEmptySubsequences: false).contains {
            $0 == ".." || $0 == "." || $0.isEmpty
        }
    }

    /// The piece layout of `piece`, from its intervals.
    public func layout(of piece: Piece) -> PieceLayout {
        PieceLayout(piece.intervals.map { $0[0]..<$0[1] })
    }

    /// The world ranks holding `tensor` and how many of them one copy is split over.
    public func holders(of tensor: Tensor) -> (ranks: [Int], ways: Int) {
        layout.holders(stages: tensor.stages, group: tensor.group)
    }
}

