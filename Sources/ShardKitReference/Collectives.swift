import Foundation
import ShardKit

/// The simulated collectives between the ranks of a TP forward pass.
extension TPContext {
    /// Sum over ranks (in rank order); every rank receives the sum.
    func allReduce(_ outs: [Act], what: String) throws -> [Act] {
        var sum = outs[0]
        for r in 1..<max(outs.count, 1) {
            guard outs[r].labels == sum.labels, outs[r].rows == sum.rows else {
                throw ShardKitError(.verificationFailed, "\(what): rank \(r)'s partial sum covers output features "
                    + "\(describe(outs[r].labels)), rank 0's \(describe(sum.labels)); they cannot be all-reduced")
            }
            sum += outs[r]
        }
        return Array(repeating: sum, count: outs.count)
    }

    /// All-gather along features: every rank receives features `0..<size` (labels at or past `size` are
    /// padding and dropped), keeping its own values for the features it holds (so a replicated piece is
    /// checked on every rank) and taking the others from the first rank that holds them. Throws when
    /// some feature is on no rank.
    func allGather(_ outs: [Act], size: Int, what: String) throws -> [Act] {
        let rows = outs[0].rows
        guard outs.allSatisfy({ $0.rows == rows }) else {
            throw ShardKitError(.verificationFailed, "\(what): ranks differ in row count")
        }
        var data = [Float](repeating: 0, count: rows * size)
        var seen = [Bool](repeating: false, count: size)
        for o in outs {
            for (j, l) in o.labels.enumerated() where l < size && !seen[l] {
                seen[l] = true
                for i in 0..<rows { data[i * size + l] = o.data[i * o.cols + j] }
            }
        }
        if let missing = seen.firstIndex(of: false) {
            throw ShardKitError(.verificationFailed, "\(what): output feature \(missing) is on no rank")
        }
        return outs.map { o in
            var own = data
            for (j, l) in o.labels.enumerated() where l < size {
                for i in 0..<rows { own[i * size + l] = o.data[i * o.cols + j] }
            }
            return Act(rows: rows, labels: Array(0..<size), data: own)
        }
    }
}
