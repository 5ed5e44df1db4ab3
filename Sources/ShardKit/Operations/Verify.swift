/// The byte-level checks of `shardkit verify`: integrity (files, structure, checksums) and exact
/// reconstruction against the source checkpoint. The numeric checks live in ShardKitReference.
public enum Verify {
    /// The outcome of a check.
    public enum Status: String, Codable, Sendable {
        case pass, fail, skipped
    }

    public struct Check: Codable, Sendable {
        public var name: String
        public var status: Status
        public var detail: String
        public var failures: [String]

        public init(name: String, status: Status, detail: String, failures: [String]) {
            self.name = name; self.status = status; self.detail = detail; self.failures = failures
        }
    }

    /// Every file the manifest names exists and is valid safetensors; every piece is where the
    /// manifest says with the right dtype and shape; every piece's CRC-32 matches.
    public static func integrity(_ set: ShardSet, progress: ProgressHandler? = nil) -> Check {
        var failures: [String] = []
        let m = set.manifest
        var files: [[String: (SafetensorsFile, ReadOnlyFile)]] = []
        for r in 0..<m.worldSize {
            var open: [String: (SafetensorsFile, ReadOnlyFile)] = [:]
            for f in m.ranks[r].files {
                do {
                    let sf = try set.rankFile(f)
                    open[f] = (sf, try ReadOnlyFile(path: sf.path))
                } catch { failures.append("\(error)") }
            }
            files.append(open)
        }
        for f in m.extraFiles {
            do {
                let path = try set.member(f)
                if !FileSystem.exists(path) { failures.append("\(path): listed in extra_files but missing") }
            } catch { failures.append("\(error)") }
        }
        let buffers = CopyBuffers(budget: 16 << 20)
        let total = m.order.reduce(0) { acc, n in
            let t = m.tensors[n]!
            return acc + t.pieces.reduce(0) { $0 + (checkedProduct($1.shape, times: t.dtype.size) ?? 0) }
        }
        var done = 0
        var pieces = 0
        for name in m.order {
            let t = m.tensors[name]!
            for piece in t.pieces {
                let r = piece.rank
                guard let (sf, handle) = files[r][piece.file] else { continue }
                do {
                    let info = try set.pieceLocation(name, rank: r, in: sf)
                    let layout = m.layout(of: piece)
                    let g = try TensorGeometry(shape: t.shape, elementSize: t.dtype.size, dim: t.rule.dim, tensor: name)
                    let source = CopySource(file: handle, offset: info.offset, layout: layout,
                                            expectedCRC: CRC32C.parse(hex: piece.crc32c),
                                            label: "rank \(r) file \(sf.path)")
                    // Reading the piece through the copy engine into a sink that discards checks its CRC.
                    let kept = layout.segments.map { $0.clamped(to: 0..<g.size) }.filter { !$0.isEmpty }
                    try CopyEngine.copy(tensor: name, geometry: g, sources: [source],
                                        destinations: [CopyDestination(layout: PieceLayout(kept), sink: DiscardSink())],
                                        buffers: buffers)
                    try requireFullRead(source, geometry: g, tensor: name)
                    pieces += 1
                } catch { failures.append("\(error)") }
                done += checkedProduct(piece.shape, times: t.dtype.size) ?? 0
                progress?(done, total)
            }
        }
        let fileCount = m.ranks.reduce(0) { $0 + $1.files.count }
        return Check(name: "integrity", status: failures.isEmpty ? .pass : .fail,
                     detail: "\(pieces) of \(m.tensors.values.reduce(0) { $0 + $1.pieces.count }) pieces in "
                        + "\(fileCount) files checked (crc32c)",
                     failures: failures)
    }

    /// A piece made only of padding is never chosen as a source by the copy engine; check its CRC here.
    private static func requireFullRead(_ s: CopySource, geometry g: TensorGeometry, tensor: String) throws {
        guard s.layout.segments.allSatisfy({ $0.lowerBound >= g.size }), let expected = s.expectedCRC else { return }
        var crc = CRC32C()
        let count = g.byteCount(of: s.layout)
        let bytes = try s.file.read(count: count, at: s.offset)
        bytes.withUnsafeBytes { crc.update($0) }
        if crc.value != expected {
            throw CopyEngine.checksumMismatch(s, tensor: tensor, crc: crc, expected: expected)
        }
    }

    /// Every rank's piece equals, byte for byte, the slice of the source tensor that its intervals name
    /// (padding included, which must be zeros). Together the pieces cover every tensor, so this proves
    /// that reassembly gives the source back.
    public static func reconstruction(_ set: ShardSet, source: Checkpoint,
                                      progress: ProgressHandler? = nil) -> Check {
        var failures: [String] = []
        let m = set.manifest
        let sourceNames = Set(source.tensors.map(\.info.name))
        for name in sourceNames.subtracting(m.order).sorted() {
            failures.append("tensor \(name) is in the source but not in the shard set")
        }
        let buffers = CopyBuffers(budget: 16 << 20)
        var handles: [Int: ReadOnlyFile] = [:]
        var rankFiles: [[String: (SafetensorsFile, ReadOnlyFile)]] = []
        for r in 0..<m.worldSize {
            do { rankFiles.append(try set.openRank(r)) } catch {
                failures.append("\(error)")
                rankFiles.append([:])
            }
        }
        let scratch = ComparingSink.Scratch()
        var compared = 0
        let total = m.order.reduce(0) { $0 + (source.tensor(named: $1)?.info.byteCount ?? 0) }
        var done = 0
        for name in m.order {
            let t = m.tensors[name]!
            guard let (fi, info) = source.tensor(named: name) else {
                failures.append("tensor \(name) is not in the source")
                continue
            }
            guard info.dtype == t.dtype, info.shape == t.shape else {
                failures.append("tensor \(name): source is \(info.dtype.rawValue) \(info.shape), "
                                + "the manifest says \(t.dtype.rawValue) \(t.shape)")
                continue
            }
            do {
                if handles[fi] == nil { handles[fi] = try ReadOnlyFile(path: source.files[fi].path) }
                let g = try TensorGeometry(shape: t.shape, elementSize: t.dtype.size, dim: t.rule.dim, tensor: name)
                var sinks: [(Int, ComparingSink)] = []
                // Every copy of every piece (a tied embedding's on two stages) is compared.
                for p in t.pieces {
                    let open = rankFiles[p.rank][p.file]
                    let piece = try set.pieceLocation(name, rank: p.rank, in: open?.0)
                    guard let file = open?.1 else {
                        throw ShardKitError(.invalidManifest, "rank \(p.rank) file \(p.file) not open")
                    }
                    sinks.append((p.rank, ComparingSink(file: file, offset: piece.offset, scratch: scratch)))
                }
                try CopyEngine.copy(tensor: name, geometry: g,
                                    sources: [CopySource.whole(info, geometry: g, file: handles[fi]!)],
                                    destinations: zip(t.pieces, sinks).map {
                                        CopyDestination(layout: m.layout(of: $0), sink: $1.1)
                                    },
                                    buffers: buffers)
                for (r, s) in sinks {
                    if let at = s.firstMismatch {
                        failures.append("tensor \(name): rank \(r) piece differs from the source at byte \(at) "
                                        + "of the piece (\(t.piece(rank: r)?.file ?? "?"))")
                    }
                }
                compared += 1
            } catch { failures.append("\(error)") }
            done += info.byteCount
            progress?(done, total)
        }
        return Check(name: "reconstruction", status: failures.isEmpty ? .pass : .fail,
                     detail: "\(compared) of \(m.order.count) tensors compared byte for byte with \(source.directory)",
                     failures: failures)
    }
}

/// Drops the bytes (used when only the reading matters, e.g. checksum checks).
public final class DiscardSink: PieceSink {
    public init() {}
    public func append(_ bytes: UnsafeRawBufferPointer) throws {}
    public func appendZeros(_ count: Int) throws {}
}
