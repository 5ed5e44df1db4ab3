/// Equal values read from a file share one copy: a million tensors or pieces name a handful of
/// files, shapes and interval lists, so each is stored once rather than once per entry (up to
/// `limit` distinct values of each kind; past that, values are kept as they come).
package struct Interner {
    package init() {}
    private var strings: [String: String] = [:]
    private var ints: [[Int]: [Int]] = [:]
    private var intervals: [[[Int]]: [[Int]]] = [:]
    package static let limit = 1 << 16

    package mutating func string(_ s: String) -> String {
        if let known = strings[s] { return known }
        if strings.count < Interner.limit { strings[s] = s }
        return s
    }
    package mutating func ints(_ v: [Int]) -> [Int] {
        if let known = ints[v] { return known }
        if ints.count < Interner.limit { ints[v] = v }
        return v
    }
    package mutating func intervals(_ v: [[Int]]) -> [[Int]] {
        if let known = intervals[v] { return known }
        if intervals.count < Interner.limit { intervals[v] = v }
        return v
    }
}

