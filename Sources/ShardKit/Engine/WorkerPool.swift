import Foundation

/// Runs `count` independent items on a few threads, each thread with its own `CopyBuffers`
/// (`budget / workers` bytes). Each item returns a closure that records its result; the closures
/// run under a lock. The first error stops the remaining items and is rethrown.
enum ParallelWork {
    /// Shared state of one run; every access is under `lock`.
    private final class State: @unchecked Sendable {
        let lock = NSLock()
        var next = 0
        var failure: Error?
        let work: (Int, CopyBuffers) throws -> (() -> Void)
        init(_ work: @escaping (Int, CopyBuffers) throws -> (() -> Void)) { self.work = work }
    }

    static func forEach(count: Int, workers: Int, budget: Int,
                        _ body: @escaping (Int, CopyBuffers) throws -> (() -> Void)) throws {
        let n = max(1, min(workers, count))
        let state = State(body)
        let run: @Sendable (Int) -> Void = { _ in
            let buffers = CopyBuffers(budget: budget / n)
            while true {
                state.lock.lock()
                if state.failure != nil || state.next >= count { state.lock.unlock(); return }
                let i = state.next
                state.next += 1
                state.lock.unlock()
                do {
                    let record = try state.work(i, buffers)
                    state.lock.lock(); record(); state.lock.unlock()
                } catch {
                    state.lock.lock()
                    if state.failure == nil { state.failure = error }
                    state.lock.unlock()
                }
            }
        }
        if n == 1 { run(0) } else { DispatchQueue.concurrentPerform(iterations: n, execute: run) }
        if let failure = state.failure { throw failure }
    }
}

