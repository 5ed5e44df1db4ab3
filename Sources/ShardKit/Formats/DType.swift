/// The element types of the safetensors format. Sharding never converts between them: bytes move.
public enum DType: String, CaseIterable, Sendable, Codable {
    case bool = "BOOL"
    case u8 = "U8", i8 = "I8"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2", f8e8m0 = "F8_E8M0"
    case i16 = "I16", u16 = "U16", f16 = "F16", bf16 = "BF16"
    case i32 = "I32", u32 = "U32", f32 = "F32"
    case i64 = "I64", u64 = "U64", f64 = "F64"
    case c64 = "C64"

    /// Size of one element in bytes.
    public var size: Int {
        switch self {
        case .bool, .u8, .i8, .f8e4m3, .f8e5m2, .f8e8m0: return 1
        case .i16, .u16, .f16, .bf16: return 2
        case .i32, .u32, .f32: return 4
        case .i64, .u64, .f64, .c64: return 8
        }
    }

    /// True for the floating-point types the reference forward pass can widen to f32.
    public var isFloatingPoint: Bool {
        switch self {
        case .f8e4m3, .f8e5m2, .f16, .bf16, .f32, .f64: return true
        default: return false
        }
    }
}

