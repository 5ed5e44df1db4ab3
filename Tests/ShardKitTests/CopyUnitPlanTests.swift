import Testing
@testable import ShardKit

@Suite("Copy unit plan")
struct CopyUnitPlanTests {
    /// Every (row, index) of `outer × extent` appears in exactly one unit, in file order.
    static func covers(_ plan: CopyUnitPlan, outer: Int, extent: Int) -> Bool {
        var expected = (row: 0, index: 0)
        for u in plan {
            for r in u.rows {
                guard r == expected.row, u.window.lowerBound == (u.rows.count > 1 ? 0 : expected.index) else { return false }
                expected = u.window.upperBound == extent ? (r + 1, 0) : (r, u.window.upperBound)
            }
        }
        return expected == (outer, 0)
    }

    @Test("whole rows when a row fits, windows of one row otherwise; every byte once, in order, within the unit size",
          arguments: [(7, 10, 4, 64), (7, 10, 4, 40), (7, 10, 4, 39), (3, 1000, 2, 100), (1, 5, 1, 1), (4, 6, 8, 1000)])
    func coverage(outer: Int, size: Int, inner: Int, unitBytes: Int) {
        for extent in [size, size + 3] {   // padding past the true size
            let plan = CopyUnitPlan(geometry: TensorGeometry(outer: outer, size: size, inner: inner), extent: extent,
                                    longestSource: size, unitBytes: unitBytes)
            #expect(Self.covers(plan, outer: outer, extent: extent))
            let fits = max(size, size) * inner <= unitBytes
            for u in plan {
                if fits {
                    #expect(u.window == 0..<extent)
                    #expect(u.rows.count * size * inner <= unitBytes)
                } else {
                    #expect(u.rows.count == 1)
                    #expect(u.window.count * inner <= max(unitBytes, inner))
                }
            }
        }
    }

    @Test("a longer source piece (replicated KV head, padding) decides whether a row fits")
    func longestSource() {
        let g = TensorGeometry(outer: 4, size: 8, inner: 2)
        #expect(CopyUnitPlan(geometry: g, extent: 8, longestSource: 8, unitBytes: 16).rowsPerUnit == 1)
        #expect(CopyUnitPlan(geometry: g, extent: 8, longestSource: 9, unitBytes: 16).rowsPerUnit == 0)
    }

    @Test("nothing to move gives no units (not `outer` units of nothing)")
    func empty() {
        #expect(Array(CopyUnitPlan(geometry: TensorGeometry(outer: 1 << 40, size: 0, inner: 4), extent: 0,
                                   longestSource: 0, unitBytes: 1 << 20)).isEmpty)
        #expect(Array(CopyUnitPlan(geometry: TensorGeometry(outer: 0, size: 5, inner: 4), extent: 5,
                                   longestSource: 5, unitBytes: 1 << 20)).isEmpty)
    }
}
