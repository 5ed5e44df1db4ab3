/// A tensor split along one dimension, seen as `[outer, size, inner]`.
public struct TensorGeometry: Sendable, Equatable {
    public var outer: Int
    /// True size of the split dimension (indices at or past it are padding, read as zeros).
    public var size: Int
    /// Bytes per index of the split dimension.
    public var inner: Int

    /// The geometry of `shape` (elements of `elementSize` bytes) split along `dim` (nil: along 0,
    /// which is how a replicated tensor is copied whole). Throws on arithmetic overflow.
    public init(shape: [Int], elementSize: Int, dim: Int?, tensor: String) throws {
        let k = dim ?? 0
        if shape.isEmpty {
            // A scalar has no dimension to split (`dim` must be nil, or a piece shape would index []).
            guard dim == nil else {
                throw ShardKitError(.impossibleSplit, "tensor \(tensor): a scalar cannot be split along dim \(k)")
            }
            outer = 1; size = 1; inner = elementSize
            return
        }
        guard k < shape.count, let o = checkedProduct(Array(shape[..<k])),
              let i = checkedProduct(Array(shape[(k + 1)...]), times: elementSize),
              checkedProduct(shape, times: elementSize) != nil else {
            throw ShardKitError(.impossibleSplit, "tensor \(tensor): shape \(shape) cannot be split along dim \(k)")
        }
        outer = o; size = shape[k]; inner = i
    }

    public init(outer: Int, size: Int, inner: Int) {
        self.outer = outer; self.size = size; self.inner = inner
    }

    /// Bytes of a piece with `layout`.
    public func byteCount(of layout: PieceLayout) -> Int { outer * layout.length * inner }
}

