import Foundation
import ShardKit

/// Progress on standard error when it is a terminal: bytes, rate, time left.
enum Terminal {
    static let isTTY = isatty(2) != 0
    nonisolated(unsafe) static var lastDraw = 0.0
    nonisolated(unsafe) static var start = 0.0
    nonisolated(unsafe) static var drawn = false

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func progress(label: String) -> ProgressHandler? {
        guard isTTY else { return nil }
        start = now()
        lastDraw = 0
        return { done, total in
            let t = now()
            guard t - lastDraw > 0.1 || done == total else { return }
            lastDraw = t
            let elapsed = t - start
            let rate = elapsed > 0 ? Double(done) / elapsed : 0
            let left = rate > 0 ? Double(total - done) / rate : 0
            let pct = total > 0 ? 100.0 * Double(done) / Double(total) : 100
            let line = String(format: "\r%@ %5.1f%%  %@ / %@  %@/s  %@ left ", label, pct,
                              bytes(done), bytes(total), bytes(Int(rate)), duration(left))
            FileHandle.standardError.write(Data(line.utf8))
            drawn = true
        }
    }

    static func clearProgress() {
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)); drawn = false }
    }

    static func bytes(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
    }

    static func duration(_ s: Double) -> String {
        s < 60 ? String(format: "%.0fs", s) : String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60)
    }

    static func printJSON(_ value: some Encodable) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        print(String(decoding: try e.encode(value), as: UTF8.self))
    }
}

