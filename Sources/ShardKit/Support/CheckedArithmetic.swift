/// Product of `values` times `factor`, or nil on overflow (or a negative value).
@inlinable
package func checkedProduct(_ values: [Int], times factor: Int = 1) -> Int? {
    var total = factor
    for v in values {
        guard v >= 0 else { return nil }
        let (p, o) = total.multipliedReportingOverflow(by: v)
        if o { return nil }
        total = p
    }
    return total
}

/// Sum of `values`, or nil on overflow (or a negative value).
@inlinable
package func checkedSum(_ values: [Int]) -> Int? {
    var total = 0
    for v in values {
        guard v >= 0 else { return nil }
        let (s, o) = total.addingReportingOverflow(v)
        if o { return nil }
        total = s
    }
    return total
}
