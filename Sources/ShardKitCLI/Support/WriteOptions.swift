import ArgumentParser
import Foundation
import ShardKit

/// Summary of a written shard set, for `--json` and the human report.
struct WriteSummary: Codable {
    var output: String
    var tp: Int
    var pp: Int
    var ep: Int
    var tensors: Int
    /// The ranks this run wrote (all of them unless `--ranks` was given).
    var ranksWritten: [Int]
    var bytesPerRank: [Int]
    var files: [String]
    var seconds: Double
    var bytesPerSecond: Double
    var partial: Bool

    init(output: String, manifest: Manifest, written: [Int]?, seconds: Double) {
        self.output = output
        tp = manifest.tp
        pp = manifest.layout.pp
        ep = manifest.layout.ep
        tensors = manifest.order.count
        ranksWritten = written ?? Array(0..<manifest.worldSize)
        var perRankBytes = [Int](repeating: 0, count: manifest.worldSize)
        for t in manifest.tensors.values {
            for p in t.pieces { perRankBytes[p.rank] += p.shape.reduce(t.dtype.size, *) }
        }
        bytesPerRank = perRankBytes
        files = ranksWritten.flatMap { manifest.ranks[$0].files }
        self.seconds = seconds
        let perRank = bytesPerRank
        let bytes = ranksWritten.reduce(0) { $0 + perRank[$1] }
        bytesPerSecond = seconds > 0 ? Double(bytes) / seconds : 0
        partial = written != nil
    }

    func print(json: Bool) throws {
        if json { try Terminal.printJSON(self); return }
        Swift.print("\(partial ? "wrote part of" : "wrote") \(output): tp \(tp)\(pp > 1 ? ", pp \(pp)" : "")"
                    + "\(ep > 1 ? ", ep \(ep)" : ""), \(tensors) tensors, \(files.count) rank files")
        for r in ranksWritten { Swift.print("  rank \(r): \(Terminal.bytes(bytesPerRank[r]))") }
        Swift.print(String(format: "  %.2fs, %@/s", seconds, Terminal.bytes(Int(bytesPerSecond))))
        if partial {
            Swift.print("  no manifest yet: run `shardkit reshard --finalize \(output)` once every rank is written")
        }
    }
}

/// Options of the commands that write a shard set.
struct WriteOptions: ParsableArguments {
    @Flag(name: .long, help: "Replace an existing output directory (only one ShardKit wrote).") var force = false
    @Option(name: .long, help: "Largest rank file in bytes (suffixes K, M, G allowed).") var maxFileSize: String?
    @Option(name: .long, help: ArgumentHelp("Write only these world ranks (e.g. 0,1 or 2-3; world rank = stage × TP "
        + "+ TP rank); finish with `reshard --finalize`."))
    var ranks: String?
    @Option(name: .long, help: "Tensors copied at once (default 2).") var workers: Int?
    @Flag(name: .long, help: ArgumentHelp("Skip fsync: faster, but a power loss soon after can leave a manifest "
                                          + "whose files never reached the disk."))
    var noSync = false

    func writerOptions() throws -> ShardSetWriter.Options {
        var options = ShardSetWriter.Options()
        options.force = force
        options.durable = !noSync
        options.ranks = try parseRanks(ranks)
        if let m = maxFileSize { options.maxFileSize = try parseSize(m) }
        if let w = workers {
            guard w >= 1 else { throw ValidationError("--workers must be at least 1") }
            options.workers = w
        }
        return options
    }
}

func parseRanks(_ text: String?) throws -> [Int]? {
    guard let text else { return nil }
    var ranks: [Int] = []
    for part in text.split(separator: ",") {
        // Empty pieces kept, so that "-1" or "1-" is refused rather than read as 1.
        let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
        if bounds.count == 2, let a = Int(bounds[0]), let b = Int(bounds[1]), a >= 0, a <= b, b <= ShardPlan.maxTP {
            ranks += Array(a...b)
        } else if bounds.count == 1, let a = Int(bounds[0]), a >= 0 {
            ranks.append(a)
        } else {
            throw ValidationError("--ranks takes a list like 0,1 or 2-3")
        }
    }
    return Array(Set(ranks)).sorted()
}

func parseSize(_ text: String) throws -> Int {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    var t = text.uppercased()
    if t.hasSuffix("B") { t.removeLast() }
    var factor = 1
    if let last = t.last, let f = units[last] { factor = f; t.removeLast() }
    guard let n = Int(t), n > 0, case (let bytes, false) = n.multipliedReportingOverflow(by: factor) else {
        throw ValidationError("--max-file-size: cannot read \"\(text)\"")
    }
    return bytes
}

