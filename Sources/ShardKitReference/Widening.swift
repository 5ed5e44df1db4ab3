import Foundation
import ShardKit

// MARK: - Widening to f32

enum Widen {
    static let e4m3: [Float] = (0..<256).map { decodeFP8(UInt8($0), expBits: 4, manBits: 3, bias: 7, fn: true) }
    static let e5m2: [Float] = (0..<256).map { decodeFP8(UInt8($0), expBits: 5, manBits: 2, bias: 15, fn: false) }

    static func decodeFP8(_ b: UInt8, expBits: Int, manBits: Int, bias: Int, fn: Bool) -> Float {
        let sign: Float = (b & 0x80) != 0 ? -1 : 1
        let e = Int((b >> UInt8(manBits)) & UInt8((1 << expBits) - 1))
        let m = Int(b & UInt8((1 << manBits) - 1))
        let maxE = (1 << expBits) - 1
        if fn {
            if e == maxE && m == (1 << manBits) - 1 { return .nan }    // E4M3FN: only S.1111.111 is NaN, no inf
        } else if e == maxE {
            return m == 0 ? sign * .infinity : .nan
        }
        let frac = Float(m) / Float(1 << manBits)
        if e == 0 { return sign * frac * Float(pow(2.0, Double(1 - bias))) }
        return sign * (1 + frac) * Float(pow(2.0, Double(e - bias)))
    }

    /// `count` elements of `dtype` at `bytes`, widened to f32 (bf16: bits << 16; f16 via Float16;
    /// fp8 via tables; f64 narrowed).
    static func canWiden(_ dtype: DType) -> Bool {
        [.f32, .bf16, .f16, .f64, .f8e4m3, .f8e5m2, .f8e8m0].contains(dtype)
    }

    /// `bytes` bytes of tensor `name` do not hold `count` elements of `dtype`.
    static func sizeMismatch(_ name: String, bytes: Int, count: Int, dtype: DType) -> ShardKitError {
        ShardKitError(.verificationFailed, "tensor \(name): \(bytes) bytes for \(count) \(dtype.rawValue) elements")
    }

    /// Tensor `name`'s `dtype` is one `canWiden` rejects.
    static func unreadable(_ name: String, dtype: DType) -> ShardKitError {
        ShardKitError(.verificationFailed, "tensor \(name): dtype \(dtype.rawValue) is not a floating-point type "
            + "the reference forward pass can read")
    }

    static func toFloat(_ bytes: UnsafeRawBufferPointer, dtype: DType, count: Int, name: String) throws -> [Float] {
        if count == 0 { return [] }
        return try [Float](unsafeUninitializedCapacity: count) { out, n in
            try toFloat(bytes, dtype: dtype, count: count, into: out.baseAddress!, name: name)
            n = count
        }
    }

    /// Widens `count` elements of `dtype` from `bytes` into `out`.
    static func toFloat(_ bytes: UnsafeRawBufferPointer, dtype: DType, count: Int,
                        into out: UnsafeMutablePointer<Float>, name: String) throws {
        guard bytes.count == count * dtype.size else {
            throw sizeMismatch(name, bytes: bytes.count, count: count, dtype: dtype)
        }
        if count == 0 { return }
        do {
            let p = bytes.baseAddress!
            switch dtype {
            case .f32:
                memcpy(out, p, count * 4)
            case .bf16:
                for i in 0..<count {
                    out[i] = Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
                }
            case .f16:
                for i in 0..<count {
                    out[i] = Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                }
            case .f64:
                for i in 0..<count { out[i] = Float(p.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
            case .f8e4m3:
                let t = e4m3
                for i in 0..<count { out[i] = t[Int(p.load(fromByteOffset: i, as: UInt8.self))] }
            case .f8e5m2:
                let t = e5m2
                for i in 0..<count { out[i] = t[Int(p.load(fromByteOffset: i, as: UInt8.self))] }
            case .f8e8m0:
                for i in 0..<count {
                    let b = p.load(fromByteOffset: i, as: UInt8.self)
                    out[i] = b == 0xFF ? .nan : Float(pow(2.0, Double(Int(b) - 127)))
                }
            default:
                throw unreadable(name, dtype: dtype)
            }
        }
    }

    /// `x` rounded to `dtype` and back (the precision a model running in that dtype computes with).
    static func round(_ x: Float, to dtype: DType) -> Float {
        switch dtype {
        case .bf16:
            let bits = x.bitPattern
            let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)      // round to nearest even
            return Float(bitPattern: rounded & 0xFFFF_0000)
        case .f16: return Float(Float16(x))
        default: return x
        }
    }
}

