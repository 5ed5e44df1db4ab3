import CShardKitSupport

/// CRC-32C (Castagnoli), updated as bytes pass: the checksum of every piece in a manifest. The same
/// value as Python's `crc32c.crc32c(data)` (pip package `crc32c`) or `google_crc32c.value(data)`.
/// Computed with the CPU's CRC32 instruction (SSE4.2, ARMv8) where there is one.
public struct CRC32C: Sendable, Equatable {
    public private(set) var value: UInt32 = 0
    public init() {}
    public init(value: UInt32) { self.value = value }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        value = shardkit_crc32c(value, base, bytes.count)
    }

    public mutating func updateZeros(_ count: Int) {
        var left = count
        while left > 0 {
            let n = min(left, CRC32C.zeros.count)
            CRC32C.zeros.withUnsafeBytes { update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            left -= n
        }
    }

    static let zeros = [UInt8](repeating: 0, count: 64 * 1024)

    /// The same checksum computed with the table alone (for tests of the hardware path).
    package static func software(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return shardkit_crc32c_software(crc, base, bytes.count)
    }

    /// True when the hardware instruction is in use.
    public static var isHardwareAccelerated: Bool { shardkit_crc32c_is_hardware() != 0 }

    /// The manifest's spelling: 8 lowercase hex digits.
    public var hex: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }

    /// The value of 8 lowercase hex digits, nil for anything else.
    public static func parse(hex: String) -> UInt32? {
        var value: UInt32 = 0
        var count = 0
        for c in hex.utf8 {
            let digit: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = c - UInt8(ascii: "a") + 10
            default: return nil
            }
            count += 1
            guard count <= 8 else { return nil }
            value = value << 4 | UInt32(digit)
        }
        return count == 8 ? value : nil
    }
}
