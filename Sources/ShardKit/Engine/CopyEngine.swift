/// The one copy mechanism of ShardKit: fill destination pieces of a tensor from source pieces by
/// global index ranges along the split dimension.
///
/// A tensor of shape `[d0 … dn]` split along `k` is seen as `[outer, size, inner]` with
/// `outer = d0·…·d(k-1)` and `inner = d(k+1)·…·dn · dtype size` bytes. A piece holds, for every outer
/// row, the bytes of its global intervals (`PieceLayout`) in order. Shard, reshard, reassembly,
/// verification and loader slicing are all this one operation with different sources and sinks.
///
/// Memory is bounded by `bufferBudget`: work proceeds in units of several whole outer rows, or of one
/// row cut into windows along the split dimension when a row is larger than the budget. Every source
/// that is used is read exactly once, front to back, so its checksum is verified on the way.
public enum CopyEngine {
    /// Fills every destination from the sources. Each destination's global intervals (below
    /// `geometry.size`) must be covered by some source; the first source covering a range is used.
    /// `progress` is told how many destination bytes each step produced.
    public static func copy(tensor: String, geometry g: TensorGeometry, sources: [CopySource],
                            destinations: [CopyDestination], buffers: CopyBuffers,
                            progress: ((Int) -> Void)? = nil) throws {
        let used = try chooseSources(tensor: tensor, size: g.size, sources: sources, destinations: destinations)
        let chosen = used.map { sources[$0] }
        var crcs = [CRC32C](repeating: CRC32C(), count: chosen.count)
        var extent = g.size
        for s in chosen { extent = max(extent, s.layout.segments.last?.upperBound ?? 0) }
        for d in destinations { extent = max(extent, d.layout.segments.last?.upperBound ?? 0) }
        let plan = CopyUnitPlan(geometry: g, extent: extent, longestSource: chosen.map(\.layout.length).max() ?? 0,
                                unitBytes: min(buffers.budget / 2, buffers.unitBytes))
        for u in plan {
            try gather(g, chosen, &crcs, buffers, rows: u.rows, window: u.window)
            let produced = try emit(g, destinations, buffers, rows: u.rows, window: u.window)
            progress?(produced)
        }
        try verify(crcs, chosen, tensor)
    }

    private static func verify(_ crcs: [CRC32C], _ chosen: [CopySource], _ tensor: String) throws {
        for (c, s) in zip(crcs, chosen) {
            if let expected = s.expectedCRC, expected != c.value {
                throw checksumMismatch(s, tensor: tensor, crc: c, expected: expected)
            }
        }
    }

    /// The error for source `s` of `tensor`, whose bytes have checksum `crc` where `expected` is recorded.
    static func checksumMismatch(_ s: CopySource, tensor: String, crc: CRC32C, expected: UInt32) -> ShardKitError {
        ShardKitError(.checksumMismatch, "\(s.label): tensor \(tensor) has crc32c \(crc.hex), "
                                         + "the manifest says \(CRC32C(value: expected).hex)")
    }

    /// Indices of the sources that will be read: for each needed global range, the first source
    /// covering it. Throws when a destination range is covered by no source.
    static func chooseSources(tensor: String, size: Int, sources: [CopySource],
                              destinations: [CopyDestination]) throws -> [Int] {
        var needed: [Range<Int>] = []
        for d in destinations {
            for s in d.layout.segments where s.lowerBound < size {
                needed.append(s.lowerBound..<min(s.upperBound, size))
            }
        }
        needed.sort { $0.lowerBound < $1.lowerBound }
        var chosen = Set<Int>()
        for var range in needed {
            while !range.isEmpty {
                var advanced = false
                for (i, src) in sources.enumerated() {
                    if let seg = src.layout.segments.first(where: { $0.contains(range.lowerBound) }) {
                        chosen.insert(i)
                        range = min(seg.upperBound, range.upperBound)..<range.upperBound
                        advanced = true
                        break
                    }
                }
                guard advanced else {
                    throw ShardKitError(.invalidManifest,
                        "tensor \(tensor): no source holds index \(range.lowerBound) of its split dimension")
                }
            }
        }
        return chosen.sorted()
    }

    /// The read step of a unit: each source's bytes of rows `rows` × global window `window`, read in
    /// order (checksummed as they pass) and placed in global index order in the buffers' window.
    private static func gather(_ g: TensorGeometry, _ sources: [CopySource], _ crcs: inout [CRC32C],
                               _ buffers: CopyBuffers, rows: Range<Int>, window: Range<Int>) throws {
        let inner = g.inner
        // The assembled window covers global [window.lower, min(window.upper, size)) for each row.
        let wLow = window.lowerBound
        let wLen = max(0, min(window.upperBound, g.size) - wLow)
        let wRow = wLen * inner
        var maxStage = 0
        for s in sources {
            let a = s.layout.localIndex(ofFirstAtOrAfter: window.lowerBound)
            let b = s.layout.localIndex(ofFirstAtOrAfter: window.upperBound)
            maxStage = max(maxStage, (b - a) * inner * rows.count)
        }
        buffers.ensure(window: wRow * rows.count, staging: maxStage)
        let W = buffers.window

        for (si, s) in sources.enumerated() {
            let L = s.layout.length
            let a = s.layout.localIndex(ofFirstAtOrAfter: window.lowerBound)
            let b = s.layout.localIndex(ofFirstAtOrAfter: window.upperBound)
            if a == b { continue }
            // Local bytes of this unit: contiguous, as the window is a contiguous global range and the
            // rows are either several whole rows (full window) or one row.
            let start = (rows.lowerBound * L + a) * inner
            let count = rows.count == 1 ? (b - a) * inner : rows.count * L * inner
            let isWhole = s.layout.segments.count == 1 && s.layout.segments[0] == 0..<g.size
            if isWhole && wLen == b - a {
                // The source's local layout is the window's: read straight into it.
                let dst = UnsafeMutableRawBufferPointer(rebasing: W[0..<count])
                try s.file.read(into: dst, at: s.offset + start)
                crcs[si].update(UnsafeRawBufferPointer(dst))
                continue
            }
            if rows.count == 1 {
                // One row: each segment's part of the window is contiguous both in the file and in W,
                // so read it straight into place (padding past the true size into staging, for the
                // checksum only). Segments ascend, so the source is still read in order.
                var local = rows.lowerBound * L
                for seg in s.layout.segments {
                    let lo = max(seg.lowerBound, window.lowerBound), hi = min(seg.upperBound, window.upperBound)
                    if lo < hi {
                        let at = s.offset + (local + lo - seg.lowerBound) * inner
                        let dataHi = max(lo, min(hi, g.size))
                        if lo < dataHi {
                            let dst = UnsafeMutableRawBufferPointer(
                                rebasing: W[((lo - wLow) * inner)..<((dataHi - wLow) * inner)])
                            try s.file.read(into: dst, at: at)
                            crcs[si].update(UnsafeRawBufferPointer(dst))
                        }
                        if dataHi < hi {
                            let pad = UnsafeMutableRawBufferPointer(
                                rebasing: buffers.staging[0..<((hi - dataHi) * inner)])
                            try s.file.read(into: pad, at: at + (dataHi - lo) * inner)
                            crcs[si].update(UnsafeRawBufferPointer(pad))
                        }
                    }
                    local += seg.count
                }
                continue
            }
            let stage = UnsafeMutableRawBufferPointer(rebasing: buffers.staging[0..<count])
            try s.file.read(into: stage, at: s.offset + start)
            crcs[si].update(UnsafeRawBufferPointer(stage))
            // Scatter each segment's part of the window into W.
            for (ri, _) in rows.enumerated() {
                var local = 0
                let rowBase = ri * L * inner
                for seg in s.layout.segments {
                    let lo = max(seg.lowerBound, wLow), hi = min(seg.upperBound, wLow + wLen)
                    if lo < hi {
                        let from = rowBase + (local + lo - seg.lowerBound) * inner
                        let to = ri * wRow + (lo - wLow) * inner
                        (W.baseAddress! + to).copyMemory(from: stage.baseAddress! + from, byteCount: (hi - lo) * inner)
                    }
                    local += seg.count
                }
            }
        }
    }

    /// The write step of a unit: each destination gets, in order, its intervals' bytes from the
    /// window (adjacent runs coalesced, across rows too) and zeros for padding. Returns the bytes
    /// produced.
    private static func emit(_ g: TensorGeometry, _ destinations: [CopyDestination], _ buffers: CopyBuffers,
                             rows: Range<Int>, window: Range<Int>) throws -> Int {
        let inner = g.inner, wLow = window.lowerBound
        let wRow = max(0, min(window.upperBound, g.size) - wLow) * inner
        let W = buffers.window
        var produced = 0
        for d in destinations {
            // Coalesce adjacent pieces of the window (across rows too) into one append.
            var runStart = -1, runEnd = -1
            for ri in 0..<rows.count {
                func flush() throws {
                    if runStart >= 0 {
                        try d.sink.append(UnsafeRawBufferPointer(rebasing: W[runStart..<runEnd]))
                        produced += runEnd - runStart
                        runStart = -1
                    }
                }
                for seg in d.layout.segments {
                    let lo = max(seg.lowerBound, window.lowerBound), hi = min(seg.upperBound, window.upperBound)
                    guard lo < hi else { continue }
                    let dataHi = min(hi, g.size)
                    if lo < dataHi {
                        let from = ri * wRow + (lo - wLow) * inner, to = ri * wRow + (dataHi - wLow) * inner
                        if runEnd == from { runEnd = to } else { try flush(); runStart = from; runEnd = to }
                    }
                    if dataHi < hi {
                        try flush()
                        let zeros = (hi - max(lo, dataHi)) * inner
                        try d.sink.appendZeros(zeros)
                        produced += zeros
                    }
                }
            }
            if runStart >= 0 {
                try d.sink.append(UnsafeRawBufferPointer(rebasing: W[runStart..<runEnd]))
                produced += runEnd - runStart
            }
        }
        return produced
    }
}


/// How one tensor's copy is cut into units of work: pure arithmetic over the geometry. A unit is
/// several whole outer rows when a row (`max(size, longest source piece) · inner` bytes) fits in
/// `unitBytes`, else one row cut into windows along the split dimension; so each source's part of a
/// unit is one contiguous byte range. Units come in file order, which is what lets every source be
/// read once, front to back.
struct CopyUnitPlan: Sequence {
    struct Unit: Equatable {
        var rows: Range<Int>
        /// Global indices of the split dimension (up to `extent`, padding included).
        var window: Range<Int>
    }

    let outer: Int
    let extent: Int
    /// Rows per unit (whole-row units), or 0 for windowed units.
    let rowsPerUnit: Int
    /// Indices per window (windowed units).
    let span: Int

    /// `extent`: the largest global index any source or destination reaches (past `size` with padding).
    init(geometry g: TensorGeometry, extent: Int, longestSource: Int, unitBytes: Int) {
        // No bytes to move (a zero-sized dimension): no units, rather than `outer` rows of nothing.
        let empty = g.outer == 0 || extent == 0 || g.inner == 0
        outer = empty ? 0 : g.outer
        self.extent = extent
        let rowBytes = Swift.max(g.size, longestSource) * g.inner
        if rowBytes <= unitBytes {
            rowsPerUnit = Swift.max(1, unitBytes / Swift.max(rowBytes, 1))
            span = extent
        } else {
            rowsPerUnit = 0
            span = Swift.max(1, unitBytes / Swift.max(g.inner, 1))
        }
    }

    struct Iterator: IteratorProtocol {
        let plan: CopyUnitPlan
        var row = 0
        var windowStart = 0

        mutating func next() -> Unit? {
            guard row < plan.outer else { return nil }
            if plan.rowsPerUnit > 0 {
                let end = Swift.min(plan.outer, row + plan.rowsPerUnit)
                defer { row = end }
                return Unit(rows: row..<end, window: 0..<plan.extent)
            }
            let end = Swift.min(plan.extent, windowStart + plan.span)
            let unit = Unit(rows: row..<(row + 1), window: windowStart..<end)
            if end >= plan.extent { row += 1; windowStart = 0 } else { windowStart = end }
            return unit
        }
    }

    func makeIterator() -> Iterator { Iterator(plan: self) }
}
