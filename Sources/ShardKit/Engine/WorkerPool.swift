import Foundation

/// Runs `count` independent items on a few threads. Each thread makes its own state once (e.g. its
/// copy buffers) with `makeState(workers)`, where `workers` is the number of threads that run. Each
/// item returns a closure that records its result; the closures run under a lock. The first error
/// stops the remaining items and is rethrown.
enum WorkerPool {
    /// Shared state of one run; every access is under `lock`.
    private final class Queue<State>: @unchecked Sendable {
        let lock = NSLock()
        var next = 0
        var failure: Error?
        let work: (Int, State) throws -> (() -> Void)
        let makeState: (Int) -> State
        init(_ work: @escaping (Int, State) throws -> (() -> Void), makeState: @escaping (Int) -> State) {
            self.work = work
            self.makeState = makeState
        }

        /// The next item's index, or nil when all are taken or one failed.
        func take(count: Int) -> Int? {
            lock.lock()
            defer { lock.unlock() }
            if failure != nil || next >= count { return nil }
            next += 1
            return next - 1
        }
    }

    static func forEach<State>(count: Int, workers: Int, makeState: @escaping (_ workers: Int) -> State,
                               _ body: @escaping (Int, State) throws -> (() -> Void)) throws {
        let n = max(1, min(workers, count))
        let queue = Queue<State>(body, makeState: makeState)
        let run: @Sendable (Int) -> Void = { _ in
            let state = queue.makeState(n)
            while let i = queue.take(count: count) {
                do {
                    let record = try queue.work(i, state)
                    queue.lock.lock(); record(); queue.lock.unlock()
                } catch {
                    queue.lock.lock()
                    if queue.failure == nil { queue.failure = error }
                    queue.lock.unlock()
                }
            }
        }
        if n == 1 { run(0) } else { DispatchQueue.concurrentPerform(iterations: n, execute: run) }
        if let failure = queue.failure { throw failure }
    }

    /// Items that need no per-thread state.
    static func forEach(count: Int, workers: Int, _ body: @escaping (Int) throws -> (() -> Void)) throws {
        try forEach(count: count, workers: workers, makeState: { _ in () }) { i, _ in try body(i) }
    }
}
