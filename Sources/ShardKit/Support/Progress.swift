import Foundation

/// Progress of a long operation: bytes produced so far out of the total.
public typealias ProgressHandler = @Sendable (_ done: Int, _ total: Int) -> Void

/// Sums progress from several workers and reports it to a handler.
final class ProgressTracker: @unchecked Sendable {
    let total: Int
    let handler: ProgressHandler?
    private var done = 0
    private let lock = NSLock()

    init(total: Int, handler: ProgressHandler?) {
        self.total = total
        self.handler = handler
    }

    func add(_ n: Int) {
        guard let handler else { return }
        lock.lock()
        done += n
        handler(done, total)
        lock.unlock()
    }
}
