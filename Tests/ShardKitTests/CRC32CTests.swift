import Foundation
import Testing
@testable import ShardKit

@Suite("CRC-32C")
struct CRC32CTests {
    @Test("known answers: \"123456789\" → e3069283, and the iSCSI test vectors (RFC 3720 B.4)")
    func knownAnswers() {
        func crc(_ bytes: [UInt8]) -> UInt32 {
            var c = CRC32C()
            bytes.withUnsafeBytes { c.update($0) }
            return c.value
        }
        #expect(crc(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C(value: crc(Array("123456789".utf8))).hex == "e3069283")
        #expect(crc([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(crc([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(crc((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(crc((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
        #expect(crc([]) == 0)
    }

    @Test("the hardware path (three interleaved streams) equals the table at every length and alignment")
    func hardwareMatchesSoftware() {
        var rng = SystemRandomNumberGenerator()
        // Long enough for the 3×8192 and 3×256 blocks, with odd tails and offsets.
        let data = (0..<(3 * 8192 * 2 + 3 * 256 + 77)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        data.withUnsafeBytes { all in
            for offset in [0, 1, 3, 7] {
                for length in [0, 1, 7, 8, 9, 255, 256, 767, 768, 769, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 5, all.count - offset] {
                    let slice = UnsafeRawBufferPointer(rebasing: all[offset..<(offset + length)])
                    var c = CRC32C()
                    c.update(slice)
                    #expect(c.value == CRC32C.software(slice), "offset \(offset), length \(length)")
                    // Continuing a checksum piece by piece gives the same value.
                    var split = CRC32C()
                    split.update(UnsafeRawBufferPointer(rebasing: slice[0..<(length / 3)]))
                    split.update(UnsafeRawBufferPointer(rebasing: slice[(length / 3)...]))
                    #expect(split.value == c.value)
                }
            }
        }
    }

    @Test("checksums computed on many threads at once agree (the tables are set up once, under pthread_once)")
    func concurrentFirstUse() {
        final class Results: @unchecked Sendable {
            let values = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 16)
            deinit { values.deallocate() }
        }
        let results = Results()
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            var c = CRC32C()
            Array("123456789".utf8).withUnsafeBytes { c.update($0) }
            results.values[i] = c.value   // distinct elements; concurrentPerform returns after all
        }
        #expect(results.values.allSatisfy { $0 == 0xE306_9283 })
    }
}
