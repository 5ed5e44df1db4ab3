import Foundation

/// A shard set on disk: its validated manifest and directory. Open a rank with `rank(_:)`.
public struct ShardSet: Sendable {
    public let directory: String
    public let manifest: Manifest
    /// Rank files already opened and validated, by relative path (each file's header is parsed once
    /// however many checks read it).
    private let opened = OpenedFiles()

    private final class OpenedFiles: @unchecked Sendable {
        let lock = NSLock()
        var files: [String: SafetensorsFile] = [:]
    }

    /// Reads and validates `directory/manifest.json`.
    public init(directory: String) throws {
        self.directory = directory
        self.manifest = try Manifest.read(directory: directory)
    }

    /// The TP degree (ranks per pipeline stage).
    public var tp: Int { manifest.tp }
    /// Number of world ranks (stages × TP).
    public var worldSize: Int { manifest.worldSize }
    /// Stages, TP, EP, each stage's layers and the expert placement.
    public var layout: ParallelLayout { manifest.layout }

    /// Opens world rank `r`'s files (memory-mapped) and checks that each piece the manifest lists
    /// for it is there with the right dtype and shape.
    public func rank(_ r: Int) throws -> RankView { try RankView(set: self, rank: r) }

    /// Opens TP rank `tp` of pipeline stage `stage`.
    public func rank(stage: Int, tp r: Int) throws -> RankView {
        guard stage >= 0 && stage < layout.pp, r >= 0 && r < tp else {
            throw ShardKitError(.notFound, "stage \(stage), TP rank \(r) is outside \(layout.pp) stages × TP \(tp)")
        }
        return try rank(layout.worldRank(stage: stage, tp: r))
    }

    /// The validated safetensors files of world rank `r`, keyed by relative path.
    public func rankFiles(_ r: Int) throws -> [String: SafetensorsFile] {
        guard r >= 0 && r < worldSize else {
            throw ShardKitError(.notFound, "rank \(r) out of range 0..<\(worldSize)")
        }
        var result: [String: SafetensorsFile] = [:]
        for f in manifest.ranks[r].files {
            let path = try member(f)
            guard FileSystem.exists(path) else {
                throw ShardKitError(.invalidManifest, "\(path): named by manifest.json for rank \(r) but missing")
            }
            result[f] = try rankFile(f)
        }
        return result
    }

    /// The rank file `relative` (a path the manifest names), opened and validated once.
    public func rankFile(_ relative: String) throws -> SafetensorsFile {
        opened.lock.lock()
        if let known = opened.files[relative] { opened.lock.unlock(); return known }
        opened.lock.unlock()
        let file = try SafetensorsFile(path: try member(relative))
        opened.lock.lock()
        opened.files[relative] = file
        opened.lock.unlock()
        return file
    }

    /// The path of `relative`, a file the manifest names, checked to resolve inside the directory: a
    /// symbolic link out of the set (ShardKit never writes one) is refused, not read.
    public func member(_ relative: String) throws -> String {
        let path = Path.join(directory, relative)
        guard let real = Path.resolved(path) else { return path }   // missing: the caller says so
        guard let home = Path.resolved(directory), Path.contains(home, real), real != home else {
            throw ShardKitError(.invalidManifest,
                                "\(path): resolves to \(real), outside the shard set; refusing to read it")
        }
        return path
    }

    /// Where rank `r`'s piece of `name` lives, checked against the manifest.
    public func pieceLocation(_ name: String, rank r: Int, files: [String: SafetensorsFile]) throws -> TensorInfo {
        try pieceLocation(name, rank: r, in: files[try piece(name, rank: r).file])
    }

    /// World rank `r`'s piece of `name` in the manifest; throws when the rank holds none.
    public func piece(_ name: String, rank r: Int) throws -> Manifest.Piece {
        guard let t = manifest.tensors[name] else { throw noTensor(name) }
        guard let piece = t.piece(rank: r) else {
            throw ShardKitError(.notFound, "rank \(r) holds no piece of \(name) (held by ranks "
                                + "\(describeRuns(t.pieces.map(\.rank))))")
        }
        return piece
    }

    /// Where rank `r`'s piece of `name` lives in `file` (the rank file the manifest names for it,
    /// nil when it could not be opened), checked against the manifest.
    public func pieceLocation(_ name: String, rank r: Int, in file: SafetensorsFile?) throws -> TensorInfo {
        let t = manifest.tensors[name]!, piece = try self.piece(name, rank: r)
        func bad(_ message: String) -> ShardKitError {
            ShardKitError(.invalidManifest, "\(Path.join(directory, piece.file)): \(message)")
        }
        guard let file, let info = file.tensor(named: name) else {
            throw bad("has no tensor \(name) (the manifest says rank \(r) holds it there)")
        }
        guard info.dtype == t.dtype, info.shape == piece.shape else {
            throw bad("tensor \(name) is \(info.dtype.rawValue) \(info.shape), "
                      + "the manifest says \(t.dtype.rawValue) \(piece.shape)")
        }
        return info
    }

    /// Copy sources for the pieces of one copy of `name` (for reshard, reassembly and verification):
    /// the first stage's that holds it. `files[r]` are world rank r's open files by relative path.
    public func sources(for name: String, files: [[String: (SafetensorsFile, ReadOnlyFile)]],
                        checkCRC: Bool = true) throws -> [CopySource] {
        guard let t = manifest.tensors[name] else { throw noTensor(name) }
        let ways = manifest.holders(of: t).ways
        return try t.pieces.prefix(ways).map { piece in
            let r = piece.rank
            guard let (sf, handle) = files[r][piece.file] else {
                throw ShardKitError(.invalidManifest, "rank \(r) file \(piece.file) not open")
            }
            let info = try pieceLocation(name, rank: r, in: sf)
            return CopySource(file: handle, offset: info.offset, layout: manifest.layout(of: piece),
                              expectedCRC: checkCRC ? CRC32C.parse(hex: piece.crc32c) : nil,
                              label: "rank \(r) file \(Path.join(directory, piece.file))")
        }
    }

    /// Opens every world rank's files for `sources(for:files:)`.
    public func openAllRanks() throws -> [[String: (SafetensorsFile, ReadOnlyFile)]] {
        try (0..<worldSize).map { try openRank($0) }
    }

    /// Rank `r`'s files, validated and opened for reading, by relative path.
    public func openRank(_ r: Int) throws -> [String: (SafetensorsFile, ReadOnlyFile)] {
        try rankFiles(r).mapValues { ($0, try ReadOnlyFile(path: $0.path)) }
    }

    /// Reads the whole tensor `name`, reassembled from the ranks through the copy engine (padding
    /// dropped), checking the pieces' checksums on the way.
    public func reassemble(_ name: String, files: [[String: (SafetensorsFile, ReadOnlyFile)]], into sink: PieceSink,
                           buffers: CopyBuffers) throws {
        guard let t = manifest.tensors[name] else { throw noTensor(name) }
        let g = try TensorGeometry(shape: t.shape, elementSize: t.dtype.size, dim: t.rule.dim, tensor: name)
        try CopyEngine.copy(tensor: name, geometry: g, sources: try sources(for: name, files: files),
                            destinations: [CopyDestination(layout: PieceLayout([0..<g.size]), sink: sink)],
                            buffers: buffers)
    }

    /// The plan that cuts this set's tensors (their names, shapes and rules) for the layout `request`
    /// asks for, with vocab rules padded for `vocabMultiple` (nil: as recorded). The set's config.json,
    /// when it has one, says whether the LM head is tied to the embedding.
    /// `keepPadding`: intermediate padding (`--pad-intermediate`) is kept (recomputed for the new degree),
    /// else dropped.
    public func plan(for request: LayoutRequest, vocabMultiple: Int? = nil,
                     keepPadding: Bool = true) throws -> ShardPlan {
        let m = manifest
        let list = m.order.map { (name: $0, dtype: m.tensors[$0]!.dtype, shape: m.tensors[$0]!.shape) }
        let rules = m.order.map { name -> SplitRule in
            let rule = vocabMultiple.map(m.tensors[name]!.rule.withVocabMultiple) ?? m.tensors[name]!.rule
            return keepPadding ? rule : rule.withoutPadding
        }
        let config = m.extraFiles.contains("config.json") ? try ModelConfig(path: try member("config.json")) : nil
        return try ShardPlan(tensors: list, rules: rules, request: request, config: config)
    }

    /// The error for a tensor the manifest does not list.
    func noTensor(_ name: String) -> ShardKitError {
        ShardKitError(.notFound, "no tensor \(name) in \(directory)")
    }
}

