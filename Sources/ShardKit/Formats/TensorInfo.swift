/// Where one tensor lives inside a safetensors file, after validation.
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Absolute byte offset of the tensor's first byte in its file.
    public var offset: Int
    /// Number of bytes (elements times dtype size).
    public var byteCount: Int

    public var elementCount: Int { dtype.size == 0 ? 0 : byteCount / dtype.size }

    public init(name: String, dtype: DType, shape: [Int], offset: Int, byteCount: Int) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.offset = offset; self.byteCount = byteCount
    }
}

