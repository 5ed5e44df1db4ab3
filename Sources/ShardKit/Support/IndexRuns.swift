/// A list of indices as runs, for messages: `[0, 1, 2, 3, 8, 9]` → "0..<4, 8..<10" (at most `limit`
/// runs, then "…"; "none" for an empty list).
package func describeRuns(_ values: [Int], limit: Int = .max) -> String {
    var runs: [String] = []
    var i = 0
    while i < values.count {
        var j = i
        while j + 1 < values.count && values[j + 1] == values[j] + 1 { j += 1 }
        runs.append(i == j ? "\(values[i])" : "\(values[i])..<\(values[j] + 1)")
        i = j + 1
    }
    if runs.isEmpty { return "none" }
    return runs.count > limit ? runs.prefix(limit).joined(separator: ", ") + ", …" : runs.joined(separator: ", ")
}
