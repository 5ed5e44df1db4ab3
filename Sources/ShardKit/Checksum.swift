import CZlib

/// CRC-32 (the zlib/PNG polynomial, as Python's `zlib.crc32`), updated as bytes pass.
public struct CRC32: Sendable, Equatable {
    public private(set) var value: UInt32 = 0
    public init() {}
    public init(value: UInt32) { self.value = value }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var p = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        var left = bytes.count
        var crc = UInt(value)
        while left > 0 {
            let n = min(left, Int(UInt32.max >> 1))
            crc = crc32(crc, p, uInt(n))
            p += n
            left -= n
        }
        value = UInt32(truncatingIfNeeded: crc)
    }

    public mutating func updateZeros(_ count: Int) {
        var left = count
        while left > 0 {
            let n = min(left, CRC32.zeros.count)
            CRC32.zeros.withUnsafeBytes { update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            left -= n
        }
    }

    static let zeros = [UInt8](repeating: 0, count: 64 * 1024)

    /// The manifest's spelling: 8 lowercase hex digits.
    public var hex: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }

    public static func parse(hex: String) -> UInt32? {
        guard hex.count == 8 else { return nil }
        return UInt32(hex, radix: 16)
    }
}
