import ArgumentParser
import Foundation
import ShardKit
import ShardKitHDF5
import Yams

@main
struct ShardKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shardkit",
        abstract: "Cut model checkpoints into tensor-parallel shards, reshard them, and prove them right.",
        version: Shard.toolVersion,
        subcommands: [ShardCommand.self, PlanCommand.self, ReshardCommand.self, VerifyCommand.self, HDF5InspectCommand.self])

    static func main() {
        // A file-size limit (ulimit -f) then fails the write with EFBIG, reported and cleaned up,
        // instead of killing the process.
        signal(SIGXFSZ, SIG_IGN)
        main(nil as [String]?)
    }

    /// Runs `body`, turning a ShardKitError into a one-line message and exit status 1.
    static func guarded<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as ShardKitError {
            Terminal.clearProgress()
            // One line, even when a wrapped error (e.g. a YAML parser's) spans several.
            let line = e.message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
            FileHandle.standardError.write(Data("error: \(line)\n".utf8))
            throw ExitCode(1)
        }
    }
}

/// The weights formats beyond safetensors and PyTorch: HDF5, whose structure libhdf5 reads in a child
/// process (this executable's hidden `hdf5-inspect`), so that a malformed file that crashes libhdf5
/// is an error message, not a crash.
let inputFormats: [WeightsFileFormat] = {
    // This executable: on Linux /proc/self/exe itself (exec resolves it to the running binary, even
    // if the file was replaced); elsewhere the absolute path Foundation reports. Never a path
    // resolved against the current directory.
    #if os(Linux)
    let me = "/proc/self/exe"
    #else
    let me = Bundle.main.executablePath ?? "/usr/local/bin/shardkit"
    #endif
    return [HDF5Format(inspector: [me, "hdf5-inspect", "--"])]
}()

/// `shardkit hdf5-inspect FILE` (hidden): prints an HDF5 file's tensors as JSON, for `inputFormats`.
/// Runs under resource limits, as it parses an untrusted file with libhdf5.
struct HDF5InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hdf5-inspect", abstract: "List an HDF5 file's datasets as JSON (used by shard/plan/verify).",
        shouldDisplay: false)
    @Argument var file: String

    func run() throws {
        var memory = rlimit(rlim_cur: 8 << 30, rlim_max: 8 << 30)
        setrlimit(Int32(RLIMIT_AS.rawValue), &memory)
        var cpu = rlimit(rlim_cur: 600, rlim_max: 600)
        setrlimit(Int32(RLIMIT_CPU.rawValue), &cpu)
        print(HDF5Format.inspectionReport(path: file))
    }
}

/// Options shared by the commands that read a checkpoint and choose rules.
struct RuleOptions: ParsableArguments {
    @Option(name: .long, help: "Rules file (JSON or YAML) that overrides or replaces the preset (docs/rules.md).")
    var rules: String?

    func load(for checkpoint: Checkpoint) throws -> RuleSet {
        guard let rules else { return try ShardPlan.rules(for: checkpoint, rulesFile: nil) }
        return try ShardPlan.rules(for: checkpoint, rulesFile: (try RulesLoader.load(path: rules), rules))
    }
}

/// Reads a rules file as JSON (the core's strict parser) or YAML (Yams), into a JSONValue.
enum RulesLoader {
    static func load(path: String) throws -> JSONValue {
        let file = try ReadOnlyFile(path: path)
        let bytes = try file.read(count: file.size, at: 0)
        if path.hasSuffix(".json") {
            do { return try JSONValue.parse(bytes) } catch {
                throw ShardKitError(.invalidRules, "\(path): not valid JSON: \(error)")
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ShardKitError(.invalidRules, "\(path): not UTF-8 text")
        }
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw ShardKitError(.invalidRules, "\(path): not valid YAML: \(error)")
        }
        guard let node else { throw ShardKitError(.invalidRules, "\(path): empty rules file") }
        return try convert(node, path: path)
    }

    static func convert(_ node: Node, path: String) throws -> JSONValue {
        switch node {
        case .scalar(let s):
            if s.style == .plain {
                if let i = Int(s.string) { return .int(i) }
                switch s.string {
                case "true": return .bool(true)
                case "false": return .bool(false)
                case "null", "~": return .null
                default: break
                }
                if let d = Double(s.string) { return .double(d) }
            }
            return .string(s.string)
        case .sequence(let seq):
            return .array(try seq.map { try convert($0, path: path) })
        case .mapping(let map):
            var members: [(String, JSONValue)] = []
            for (k, v) in map {
                guard case .scalar(let key) = k else { throw ShardKitError(.invalidRules, "\(path): mapping keys must be strings") }
                if members.contains(where: { $0.0 == key.string }) {
                    throw ShardKitError(.invalidRules, "\(path): duplicate key \"\(key.string)\"")
                }
                members.append((key.string, try convert(v, path: path)))
            }
            return .object(members)
        case .alias:
            throw ShardKitError(.invalidRules, "\(path): YAML aliases are not supported")
        }
    }
}

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

/// Summary of a written shard set, for `--json` and the human report.
struct WriteSummary: Codable {
    var output: String
    var tp: Int
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
        tensors = manifest.order.count
        ranksWritten = written ?? Array(0..<manifest.tp)
        bytesPerRank = (0..<manifest.tp).map { r in
            manifest.order.reduce(0) { acc, name in
                let t = manifest.tensors[name]!
                return acc + t.pieces[r].shape.reduce(t.dtype.size, *)
            }
        }
        files = ranksWritten.flatMap { manifest.ranks[$0].files }
        self.seconds = seconds
        let perRank = bytesPerRank
        let bytes = ranksWritten.reduce(0) { $0 + perRank[$1] }
        bytesPerSecond = seconds > 0 ? Double(bytes) / seconds : 0
        partial = written != nil
    }

    func print(json: Bool) throws {
        if json { try Terminal.printJSON(self); return }
        Swift.print("\(partial ? "wrote part of" : "wrote") \(output): tp \(tp), \(tensors) tensors, \(files.count) rank files")
        for r in ranksWritten { Swift.print("  rank \(r): \(Terminal.bytes(bytesPerRank[r]))") }
        Swift.print(String(format: "  %.2fs, %@/s", seconds, Terminal.bytes(Int(bytesPerSecond))))
        if partial { Swift.print("  no manifest yet: run `shardkit reshard --finalize \(output)` once every rank is written") }
    }
}

/// Options of the commands that write a shard set.
struct WriteOptions: ParsableArguments {
    @Flag(name: .long, help: "Replace an existing output directory (only one ShardKit wrote).") var force = false
    @Option(name: .long, help: "Largest rank file in bytes (suffixes K, M, G allowed).") var maxFileSize: String?
    @Option(name: .long, help: "Write only these ranks (e.g. 0,1 or 2-3); finish with `reshard --finalize`.") var ranks: String?
    @Option(name: .long, help: "Tensors copied at once (default 2).") var workers: Int?
    @Flag(name: .long, help: "Skip fsync: faster, but a power loss soon after can leave a manifest whose files never reached the disk.")
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

struct ShardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shard", abstract: "Cut a full checkpoint into per-rank shard files plus manifest.json.")

    @Argument(help: "Checkpoint directory (model.safetensors, pytorch_model.bin, their HF index, or model.h5) or one weights file (.safetensors, a torch.save .bin/.pt, or .h5); see docs/formats.md.")
    var source: String
    @Option(name: .long, help: "Tensor-parallel degree.") var tp: Int
    @Option(name: .long, help: "Output directory.") var out: String
    @OptionGroup var ruleOptions: RuleOptions
    @OptionGroup var writeOptions: WriteOptions
    @Flag(name: .long, help: "Print a machine-readable summary.") var json = false

    func run() throws {
        try ShardKitCommand.guarded {
            let checkpoint = try Checkpoint(path: source, formats: inputFormats)
            let rules = try ruleOptions.load(for: checkpoint)
            let options = try writeOptions.writerOptions()
            let t0 = Terminal.now()
            let manifest = try Shard.run(checkpoint: checkpoint, sourcePath: source, rules: rules, tp: tp, output: out,
                                         options: options, progress: Terminal.progress(label: "shard"))
            Terminal.clearProgress()
            try WriteSummary(output: out, manifest: manifest, written: options.ranks, seconds: Terminal.now() - t0).print(json: json)
        }
    }
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

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Dry run: print each tensor's rule and every rank's shape and bytes; writes nothing.")

    @Argument(help: "Checkpoint directory or weights file (.safetensors, a torch.save .bin/.pt, or .h5).") var source: String
    @Option(name: .long, help: "Tensor-parallel degree.") var tp: Int
    @OptionGroup var ruleOptions: RuleOptions
    @Flag(name: .long, help: "Print JSON.") var json = false

    struct Row: Codable {
        var name: String, dtype: String, shape: [Int], rule: SplitRule, rankShapes: [[Int]], rankBytes: [Int], intervals: [[[Int]]]
    }
    struct Report: Codable { var tp: Int; var rules: String; var tensors: [Row]; var bytesPerRank: [Int]; var sourceBytes: Int }

    func run() throws {
        try ShardKitCommand.guarded {
            let checkpoint = try Checkpoint(path: source, formats: inputFormats)
            let rules = try ruleOptions.load(for: checkpoint)
            let plan = try ShardPlan(checkpoint: checkpoint, rules: rules, tp: tp)
            let rows = plan.tensors.map { t in
                Row(name: t.name, dtype: t.dtype.rawValue, shape: t.shape, rule: t.rule,
                    rankShapes: (0..<tp).map { t.pieceShape(rank: $0) }, rankBytes: (0..<tp).map { t.pieceBytes(rank: $0) },
                    intervals: t.layouts.map { $0.segments.map { [$0.lowerBound, $0.upperBound] } })
            }
            let report = Report(tp: tp, rules: rules.name, tensors: rows, bytesPerRank: plan.bytesPerRank, sourceBytes: checkpoint.totalBytes)
            if json { try Terminal.printJSON(report); return }
            print("plan for \(source) at tp \(tp) (\(rules.name))")
            // One aligned row per tensor; "rank 0" columns, with "…" where other ranks differ.
            let table = [["tensor", "dtype", "shape", "rule", "rank 0 shape", "rank 0 bytes"]] + rows.map { r in
                [ShardKitError.printable(r.name), r.dtype, "\(r.shape)", describe(r.rule),
                 "\(r.rankShapes[0])\(Set(r.rankShapes).count > 1 ? "…" : "")", Terminal.bytes(r.rankBytes[0])]
            }
            let widths = (0..<6).map { c in table.map { $0[c].count }.max() ?? 0 }
            for line in table {
                print(zip(line, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
            print("totals:")
            for (i, b) in plan.bytesPerRank.enumerated() { print("  rank \(i): \(Terminal.bytes(b))") }
            print("  source: \(Terminal.bytes(checkpoint.totalBytes)), all ranks: \(Terminal.bytes(plan.bytesPerRank.reduce(0, +)))")
        }
    }

    func describe(_ rule: SplitRule) -> String {
        switch rule {
        case .replicated: return "replicated"
        case .column(let d), .row(let d), .vocab(let d): return "\(rule.kindName)(dim \(d))"
        case .heads(let d, let h), .kvHeads(let d, let h), .outProjection(let d, let h): return "\(rule.kindName)(dim \(d), \(h) heads)"
        case .fused(let d, let parts): return "fused(dim \(d), parts \(parts.map(\.size)))"
        }
    }
}

struct ReshardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reshard", abstract: "Convert a shard set to another TP degree by copying overlaps.")

    @Argument(help: "Input shard set directory (or, with --finalize, the directory to finalize).") var input: String
    @Option(name: .long, help: "New tensor-parallel degree (1 writes an ordinary HF checkpoint).") var tp: Int?
    @Option(name: .long, help: "Output directory.") var out: String?
    @OptionGroup var writeOptions: WriteOptions
    @Flag(name: .long, help: "Write manifest.json for a directory whose ranks were written in parts.") var finalize = false
    @Flag(name: .long, help: "Print a machine-readable summary.") var json = false

    func run() throws {
        try ShardKitCommand.guarded {
            if finalize {
                let m = try Reshard.finalize(directory: input)
                if json { try Terminal.printJSON(["finalized": input, "tp": String(m.tp)]) } else { print("finalized \(input): tp \(m.tp), \(m.order.count) tensors") }
                return
            }
            guard let tp, let out else { throw ValidationError("reshard needs --tp and --out (or --finalize)") }
            let set = try ShardSet(directory: input)
            let options = try writeOptions.writerOptions()
            let t0 = Terminal.now()
            let manifest = try Reshard.run(input: set, tp: tp, output: out, options: options, progress: Terminal.progress(label: "reshard"))
            Terminal.clearProgress()
            try WriteSummary(output: out, manifest: manifest, written: options.ranks, seconds: Terminal.now() - t0).print(json: json)
        }
    }
}

