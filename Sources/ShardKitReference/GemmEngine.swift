import COpenBLAS
import Foundation
import ShardKit
import Synchronization

// MARK: - GEMM with accounting

/// Weight products `C = A · op(B)` through `cblas_sgemm`, with their flops and time counted.
///
/// The activations `A` have one row per token: 16 rows by default, far too few for one sgemm call to
/// reach square-matrix efficiency (a 16-row product is dominated by OpenBLAS packing the weight, and
/// its own threads split it badly). So a product is cut into tiles of whole output features of the
/// weight, small enough to stay in a core's L2 cache between widening and use; `workers` threads each
/// widen a tile and multiply it with a single-threaded sgemm, in the transposed form
/// `Cᵀ[tile] = B[tile] · Aᵀ`, which OpenBLAS runs much faster than `A · B[tile]ᵀ` when A is short.
/// Results do not depend on the number of workers: tile boundaries depend only on the shapes.
/// One engine runs one product at a time (its workers' buffers are reused): do not share an engine
/// between threads.
final class GemmEngine {
    /// Threads running products at once (each with single-threaded BLAS; see `withSingleThreadedBLAS`).
    let workers: Int
    /// Floating-point operations done in `cblas_sgemm`.
    var flops: Double { slots.reduce(0) { $0 + $1.flops } }
    /// Seconds inside `cblas_sgemm`, summed over the workers.
    var threadSeconds: Double { slots.reduce(0) { $0 + $1.seconds } }
    /// Seconds inside `cblas_sgemm` per worker (the report's `gemmSeconds`).
    var secondsPerWorker: Double { threadSeconds / Double(workers) }
    /// Wall seconds of the products (widening, sgemm and scattering, workers overlapping).
    private(set) var productSeconds = 0.0

    /// The sgemm rate with all workers running products: flops / (sgemm thread-seconds / workers),
    /// the figure comparable with a multi-threaded square sgemm on the same cores.
    var gflops: Double { threadSeconds > 0 ? flops / secondsPerWorker / 1e9 : 0 }
    /// The products' rate counting everything they do (widening included), per wall second.
    var productGFLOPS: Double { productSeconds > 0 ? flops / productSeconds / 1e9 : 0 }

    /// Most elements of B in one tile: 512 KiB of f32, half a core's L2 cache here.
    static let tileElements = 128 * 1024

    /// Weight rows (output features) per tile: about as many as A has rows (tokens), rounded up to a
    /// multiple of 8, and at most `tileElements`. Measured here at 16 tokens: 16-row tiles reach
    /// 160–180 GFLOP/s, 64-row tiles 150, 512 KiB tiles 115–150; at 64 and 256 tokens tiles of 64
    /// rows or 512 KiB are best and 16-row tiles lose 15–20% (OpenBLAS repacks Aᵀ for every call).
    static func rowsPerTile(m: Int, n: Int, k: Int) -> Int {
        let wanted = max(8, (m + 7) / 8 * 8)
        return max(1, min(n, wanted, tileElements / max(k, 1)))
    }

    /// One worker's buffers and counters. Buffers are 64-byte aligned (whole cache lines, aligned
    /// AVX-512 loads), and each worker's counters sit on their own cache line.
    private final class Worker {
        private(set) var tile = AlignedFloats()
        private(set) var transposedOut = AlignedFloats()
        var flops = 0.0
        var seconds = 0.0
        private let padding: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)

        func reserve(tile tileCount: Int, out outCount: Int) {
            if tile.capacity < tileCount { tile = AlignedFloats(capacity: tileCount) }
            if transposedOut.capacity < outCount { transposedOut = AlignedFloats(capacity: outCount) }
        }
    }
    private let slots: [Worker]

    init(workers: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.workers = max(1, workers)
        slots = (0..<self.workers).map { _ in Worker() }
    }

    /// OpenBLAS's current thread count per call.
    static var blasThreads: Int { Int(openblas_get_num_threads()) }

    /// Runs `body` with OpenBLAS using one thread per call (the engine's workers are the parallelism),
    /// then restores OpenBLAS's thread count. The setting is process-wide: overlapping scopes (from
    /// several threads) are counted, and the count is restored when the last one ends.
    static func withSingleThreadedBLAS<T>(_ body: () throws -> T) rethrows -> T {
        blasScopes.withLock { s in
            if s.depth == 0 { s.previous = openblas_get_num_threads(); openblas_set_num_threads(1) }
            s.depth += 1
        }
        defer {
            blasScopes.withLock { s in
                s.depth -= 1
                if s.depth == 0 { openblas_set_num_threads(s.previous) }
            }
        }
        return try body()
    }

    private static let blasScopes = Mutex<(depth: Int, previous: Int32)>((0, 1))

    /// C[m×n] = A[m×k] · op(B), all row-major, with B as stored (any float dtype): `transB`, B is
    /// `[n×k]` (an `[out, in]` weight); otherwise `[k×n]` (GPT-2's Conv1D). An f32 B is used in
    /// place; any other dtype is widened one tile at a time, so the f32 copy of a large weight never
    /// goes through main memory.
    func multiply(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: PieceStorage, transB: Bool,
                  c: UnsafeMutablePointer<Float>) {
        precondition(b.count == n * k, "weight \(b.name) has \(b.count) elements, expected \(n) × \(k)")
        if m == 0 || n == 0 { return }
        if k == 0 { c.initialize(repeating: 0, count: m * n); return }
        let start = ContinuousClock.now
        // Aᵀ [k×m], the right-hand side of every tile's product.
        let atBuffer = AlignedFloats(capacity: k * m)
        let at = atBuffer.pointer
        for i in 0..<m { for j in 0..<k { at[j * m + i] = a[i * k + j] } }
        let rowsPerTile = GemmEngine.rowsPerTile(m: m, n: n, k: k)
        let tiles = (n + rowsPerTile - 1) / rowsPerTile
        b.raw.withUnsafeBytes { raw in
            let job = TileJob(m: m, n: n, k: k, rowsPerTile: rowsPerTile, tiles: tiles, at: UnsafePointer(at), b: b,
                              f32: b.dtype == .f32 ? raw.baseAddress!.assumingMemoryBound(to: Float.self) : nil,
                              transB: transB, c: c, slots: slots)
            let used = min(workers, tiles)
            if used == 1 {
                job.run(worker: 0)
            } else {
                DispatchQueue.concurrentPerform(iterations: used) { job.run(worker: $0) }
            }
        }
        withExtendedLifetime(atBuffer) {}
        productSeconds += start.duration(to: .now).seconds
    }

    /// One product shared by the workers: each takes the next tile until none is left. Workers write
    /// disjoint columns of `c` and only their own slot.
    private struct TileJob: @unchecked Sendable {
        let m, n, k, rowsPerTile, tiles: Int
        let at: UnsafePointer<Float>
        let b: PieceStorage
        /// B itself when stored as f32 (used in place).
        let f32: UnsafePointer<Float>?
        let transB: Bool
        let c: UnsafeMutablePointer<Float>
        let slots: [Worker]
        let queue = TileQueue()

        func run(worker w: Int) {
            let slot = slots[w]
            slot.reserve(tile: f32 == nil ? rowsPerTile * k : 0, out: rowsPerTile * m)
            let tile = slot.tile.pointer, out = slot.transposedOut.pointer
            while true {
                let t = queue.take()
                if t >= tiles { return }
                let first = t * rowsPerTile, rows = min(rowsPerTile, n - first)
                do {
                    // op(B)[first ..< first + rows, 0 ..< k] as a pointer, its row stride and whether
                    // it is stored transposed.
                    let (tileA, lda, transA): (UnsafePointer<Float>, Int, Bool)
                    if transB {
                        if let f32 { (tileA, lda, transA) = (f32 + first * k, k, false) } else {
                            b.widen(from: first * k, count: rows * k, into: tile)
                            (tileA, lda, transA) = (UnsafePointer(tile), k, false)
                        }
                    } else if let f32 {
                        (tileA, lda, transA) = (f32 + first, n, true)
                    } else {
                        for j in 0..<k { b.widen(from: j * n + first, count: rows, into: tile + j * rows) }
                        (tileA, lda, transA) = (UnsafePointer(tile), rows, true)
                    }
                    let t0 = ContinuousClock.now
                    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, CblasNoTrans,
                                Int32(rows), Int32(m), Int32(k), 1, tileA, Int32(lda),
                                at, Int32(m), 0, out, Int32(m))
                    slot.seconds += t0.duration(to: .now).seconds
                    slot.flops += 2 * Double(rows) * Double(m) * Double(k)
                    for r in 0..<rows { for i in 0..<m { c[i * n + first + r] = out[r * m + i] } }
                }
            }
        }
    }
}

/// A 64-byte-aligned buffer of floats, freed with its owner.
final class AlignedFloats {
    let pointer: UnsafeMutablePointer<Float>
    let capacity: Int

    init(capacity: Int = 0) {
        self.capacity = capacity
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(capacity, 1) * 4, alignment: 64)
            .initializeMemory(as: Float.self, repeating: 0, count: max(capacity, 1))
    }

    deinit { pointer.deallocate() }
}

/// Hands out tile numbers 0, 1, 2, ... to worker threads.
private final class TileQueue: Sendable {
    private let next = Mutex(0)
    func take() -> Int { next.withLock { i in defer { i += 1 }; return i } }
}


extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

extension ReferenceForward {
    /// GFLOP/s of `cblas_sgemm` on square n×n f32 matrices on this machine (best of a few runs), the
    /// yardstick for the forward pass's `gemmGFLOPS`.
    public static func sgemmThroughput(n: Int) -> Double {
        precondition(n > 0)
        let a = (0..<(n * n)).map { Float(($0 * 7919) % 1013) / 1013 - 0.5 }
        let b = (0..<(n * n)).map { Float(($0 * 104729) % 997) / 997 - 0.5 }
        var c = [Float](repeating: 0, count: n * n)
        let flops = 2 * Double(n) * Double(n) * Double(n)
        var best = Double.infinity
        var runs = 0
        let deadline = ContinuousClock.now + .seconds(2)
        repeat {
            let t0 = ContinuousClock.now
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n),
                        1, a, Int32(n), b, Int32(n), 0, &c, Int32(n))
            best = min(best, t0.duration(to: .now).seconds)
            runs += 1
        } while runs < 3 || (runs < 20 && ContinuousClock.now < deadline)
        return flops / max(best, 1e-12) / 1e9
    }
}
