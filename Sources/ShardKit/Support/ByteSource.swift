/// Positioned reads of a byte stream: a file (`ReadOnlyFile`), or the decoded bytes of a compressed
/// record or a chunked dataset inside one. The copy engine reads every source through this, front to
/// back; decoding sources are fastest read that way (a backward read restarts their decoder).
public protocol ByteSource: AnyObject, Sendable {
    /// The file the bytes come from, for messages.
    var path: String { get }
    /// Fills `buffer` with the stream's bytes at `offset`; reading past the end is an error.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws
}

extension ByteSource {
    /// Reads `count` bytes at `offset` into a new array.
    public func read(count: Int, at offset: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return bytes
    }
}
