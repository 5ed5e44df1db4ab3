/// The position of `key` among `count` keys in ascending order (`keyAt(i)` is the i-th), nil when
/// absent: a binary search.
package func sortedPosition(of key: Int, count: Int, keyAt: (Int) -> Int) -> Int? {
    var lo = 0, hi = count
    while lo < hi {
        let mid = (lo + hi) / 2
        if keyAt(mid) < key { lo = mid + 1 } else { hi = mid }
    }
    return lo < count && keyAt(lo) == key ? lo : nil
}
