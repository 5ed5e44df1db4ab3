import Foundation
import ShardKit
import Testing
@testable import ShardKitReference

/// The tiled, multi-threaded weight product against a plain triple loop in f64, for every storage
/// layout it handles, and bit-identical results whatever the number of workers.
@Suite("GemmEngine") struct GemmEngineTests {
    /// Deterministic values in [-1, 1), exactly representable in bf16.
    static func values(_ count: Int, seed: Int) -> [Float] {
        (0..<count).map { Float(bf16Rounded: Float((($0 &* 7919 &+ seed &* 104729) % 2003) - 1001) / 1001) }
    }

    static func storage(_ values: [Float], dtype: DType) throws -> PieceStorage {
        var raw: [UInt8] = []
        for v in values {
            switch dtype {
            case .f32: withUnsafeBytes(of: v.bitPattern.littleEndian) { raw += $0 }
            case .bf16: withUnsafeBytes(of: UInt16(v.bitPattern >> 16).littleEndian) { raw += $0 }
            default: Issue.record("unsupported dtype in test")
            }
        }
        return try PieceStorage(raw: raw, dtype: dtype, count: values.count, name: "w")
    }

    /// C = A · op(B) in f64; B is [n×k] when `transB`, else [k×n].
    static func naive(m: Int, n: Int, k: Int, a: [Float], b: [Float], transB: Bool) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for l in 0..<k { s += Double(a[i * k + l]) * Double(transB ? b[j * k + l] : b[l * n + j]) }
                c[i * n + j] = Float(s)
            }
        }
        return c
    }

    static func product(workers: Int, m: Int, n: Int, k: Int, a: [Float], b: PieceStorage, transB: Bool) -> [Float] {
        let engine = GemmEngine(workers: workers)
        var c = [Float](repeating: .nan, count: m * n)
        GemmEngine.withSingleThreadedBLAS {
            a.withUnsafeBufferPointer { a in
                c.withUnsafeMutableBufferPointer { engine.multiply(m: m, n: n, k: k, a: a.baseAddress!, b: b, transB: transB, c: $0.baseAddress!) }
            }
        }
        #expect(engine.flops == 2 * Double(m) * Double(n) * Double(k))
        return c
    }

    // Shapes: one tile; several tiles with a short last one; k past the tile size (one row per tile).
    @Test(arguments: [(16, 96, 64), (7, 1001, 300), (1, 5, GemmEngine.tileElements + 3)], [true, false])
    func matchesNaiveProductForEveryLayout(shape: (Int, Int, Int), transB: Bool) throws {
        let (m, n, k) = shape
        let a = Self.values(m * k, seed: 1), b = Self.values(n * k, seed: 2)
        let want = Self.naive(m: m, n: n, k: k, a: a, b: b, transB: transB)
        for dtype in [DType.f32, .bf16] {
            let storage = try Self.storage(b, dtype: dtype)
            let one = Self.product(workers: 1, m: m, n: n, k: k, a: a, b: storage, transB: transB)
            let scale = want.map { abs($0) }.max()!
            let err = zip(one, want).map { abs($0 - $1) }.max()!
            // f32 sums of up to 131K terms: rounding stays far below 1e-4; a misplaced element does not.
            #expect(err <= 1e-4 * scale, "\(dtype) transB=\(transB) \(shape): max error \(err) of \(scale)")
            for workers in [2, 3] {
                let many = Self.product(workers: workers, m: m, n: n, k: k, a: a, b: storage, transB: transB)
                #expect(many.map(\.bitPattern) == one.map(\.bitPattern), "\(workers) workers differ from one")
            }
        }
    }

    @Test func singleThreadedBLASInsideNestedScopes() {
        let threads = GemmEngine.withSingleThreadedBLAS {
            (GemmEngine.blasThreads, GemmEngine.withSingleThreadedBLAS { GemmEngine.blasThreads }, GemmEngine.blasThreads)
        }
        #expect(threads == (1, 1, 1))
        // (What it is restored to is not checked here: other tests may hold a scope concurrently.)
    }
}

private extension Float {
    /// `x` rounded to bf16 (so that f32 and bf16 storage hold the same values).
    init(bf16Rounded x: Float) { self = Widen.round(x, to: .bf16) }
}
