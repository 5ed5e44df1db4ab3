/// Equal values read from a file share one copy: a million tensors or pieces name a handful of
/// files, shapes and interval lists, so each is stored once rather than once per entry (up to
/// `limit` distinct values of each kind; past that, values are kept as they come).
package struct Interner {
    package init() {}
    private var strings: [String: String] = [:]
    private var ints: [[Int]: [Int]] = [:]
    private var intervals: [[[Int]]: [[Int]]] = [:]
    // The last value of each kind: neighbours usually repeat it, and comparing is cheaper than hashing.
    private var lastString = "", lastInts: [Int] = [], lastIntervals: [[Int]] = []
    package static let limit = 1 << 16

    package mutating func string(_ s: String) -> String {
        if s == lastString { return lastString }
        lastString = Interner.shared(s, in: &strings)
        return lastString
    }
    package mutating func ints(_ v: [Int]) -> [Int] {
        if v == lastInts { return lastInts }
        lastInts = Interner.shared(v, in: &ints)
        return lastInts
    }
    package mutating func intervals(_ v: [[Int]]) -> [[Int]] {
        if v == lastIntervals { return lastIntervals }
        lastIntervals = Interner.shared(v, in: &intervals)
        return lastIntervals
    }

    private static func shared<T: Hashable>(_ v: T, in table: inout [T: T]) -> T {
        if let known = table[v] { return known }
        if table.count < limit { table[v] = v }
        return v
    }
}
