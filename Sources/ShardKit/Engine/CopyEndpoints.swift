/// Where a source piece's bytes come from.
public struct CopySource {
    /// The file, or a decoder of an encoded tensor in one (read front to back, once).
    public var file: ByteSource
    /// Offset of the piece's first byte in `file`.
    public var offset: Int
    public var layout: PieceLayout
    /// Checked once the piece has been read in full; a mismatch throws `checksumMismatch`.
    public var expectedCRC: UInt32?
    /// For messages: "rank 2 file rank-2/model.safetensors".
    public var label: String

    public init(file: ByteSource, offset: Int, layout: PieceLayout, expectedCRC: UInt32? = nil, label: String) {
        self.file = file; self.offset = offset; self.layout = layout; self.expectedCRC = expectedCRC; self.label = label
    }
}

/// Receives a destination piece's bytes in order.
public protocol PieceSink: AnyObject {
    func append(_ bytes: UnsafeRawBufferPointer) throws
    func appendZeros(_ count: Int) throws
}

public struct CopyDestination {
    public var layout: PieceLayout
    public var sink: PieceSink
    public init(layout: PieceLayout, sink: PieceSink) { self.layout = layout; self.sink = sink }
}

/// Reusable buffers for the copy engine; one per worker.
public final class CopyBuffers: @unchecked Sendable {
    public let budget: Int
    /// Target size of one unit of work (a read, its checksum, its writes), within the budget.
    public var unitBytes = 2 << 20
    var window: UnsafeMutableRawBufferPointer
    var staging: UnsafeMutableRawBufferPointer

    /// `budget` bytes split between the assembled window and the staging area for one source.
    public init(budget: Int = 32 << 20) {
        self.budget = max(budget, 4096)
        window = .allocate(byteCount: self.budget / 2, alignment: 64)
        staging = .allocate(byteCount: self.budget / 2, alignment: 64)
    }

    deinit {
        window.deallocate()
        staging.deallocate()
    }

    func ensure(window w: Int, staging s: Int) {
        if w > window.count { window.deallocate(); window = .allocate(byteCount: w, alignment: 64) }
        if s > staging.count { staging.deallocate(); staging = .allocate(byteCount: s, alignment: 64) }
    }
}

