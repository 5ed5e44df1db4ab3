/// Where one tensor lives inside a weights file, after validation.
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Absolute byte offset of the tensor's first byte in its file (for an encoded tensor: in the
    /// decoded stream; see `encoding`).
    public var offset: Int
    /// Number of bytes (elements times dtype size).
    public var byteCount: Int
    /// How the bytes are stored; `.raw` for safetensors, stored ZIP records and contiguous HDF5.
    public var encoding: TensorEncoding

    /// True when the bytes are `byteCount` bytes at `offset` of the file, as they are.
    public var isRaw: Bool { encoding == .raw }

    public var elementCount: Int { dtype.size == 0 ? 0 : byteCount / dtype.size }

    public init(name: String, dtype: DType, shape: [Int], offset: Int, byteCount: Int,
                encoding: TensorEncoding = .raw) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.offset = offset; self.byteCount = byteCount
        self.encoding = encoding
    }
}

