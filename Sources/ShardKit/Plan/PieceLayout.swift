/// A rank's share of one tensor: global intervals along the split dimension, in ascending order.
/// Intervals may extend past the tensor's true size (vocab padding): those indices read as zeros.
public struct PieceLayout: Sendable, Equatable, Hashable {
    public var segments: [Range<Int>]
    /// The piece's length along the split dimension (sum of the segments).
    public var length: Int { segments.reduce(0) { $0 + $1.count } }
    public init(_ segments: [Range<Int>]) { self.segments = segments }

    /// Local index (within the piece) of the first global index ≥ `global`.
    func localIndex(ofFirstAtOrAfter global: Int) -> Int {
        var local = 0
        for s in segments {
            if global <= s.lowerBound { return local }
            if global < s.upperBound { return local + (global - s.lowerBound) }
            local += s.count
        }
        return local
    }
}

