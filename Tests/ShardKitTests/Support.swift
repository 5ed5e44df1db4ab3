import Foundation
import Testing
import ShardKit
@_exported import ShardKitTestSupport

/// One fixture and the TP degrees (of 1, 2, 4, 8) its head counts allow, written out by hand from
/// fixtures/README.md: G must divide H, KV must divide or be divided by G, and every column/row
/// dimension (intermediate, hidden) must divide by G.
struct FixtureCase: Sendable, CustomTestStringConvertible {
    var name: String
    var heads: Int
    var kvHeads: Int
    var allowed: [Int]
    var refused: [Int] { [1, 2, 4, 8].filter { !allowed.contains($0) } }
    var testDescription: String { name }
}

let allFixtures: [FixtureCase] = [
    .init(name: "llama-gqa", heads: 8, kvHeads: 2, allowed: [1, 2, 4, 8]),
    .init(name: "llama-bf16-sharded", heads: 8, kvHeads: 4, allowed: [1, 2, 4, 8]),
    .init(name: "qwen2-bias", heads: 4, kvHeads: 2, allowed: [1, 2, 4]),
    .init(name: "mistral", heads: 8, kvHeads: 2, allowed: [1, 2, 4, 8]),
    .init(name: "gemma", heads: 4, kvHeads: 2, allowed: [1, 2, 4]),
    .init(name: "phi3", heads: 8, kvHeads: 2, allowed: [1, 2, 4, 8]),
    .init(name: "gpt2", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    .init(name: "gpt-neox", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    .init(name: "mixtral", heads: 8, kvHeads: 2, allowed: [1, 2, 4, 8]),
    .init(name: "bert", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    // Falcon's KV "heads" are its 2 groups of query_key_value (falcon-mq: 1 K/V head, replicated).
    .init(name: "falcon", heads: 8, kvHeads: 2, allowed: [1, 2, 4, 8]),
    .init(name: "falcon-mq", heads: 8, kvHeads: 1, allowed: [1, 2, 4, 8]),
    .init(name: "falcon-seq", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    .init(name: "bloom", heads: 24, kvHeads: 24, allowed: [1, 2, 4, 8]),
    .init(name: "bloom-postln", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    .init(name: "gptj", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    .init(name: "opt", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    .init(name: "opt-proj", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
    .init(name: "phi", heads: 8, kvHeads: 2, allowed: [1, 2, 4, 8]),
    .init(name: "starcoder2", heads: 8, kvHeads: 2, allowed: [1, 2, 4, 8]),
    .init(name: "roberta", heads: 8, kvHeads: 8, allowed: [1, 2, 4, 8]),
]

/// A (fixture, G) pair for parameterized tests.
struct FixtureTP: Sendable, CustomTestStringConvertible {
    var fixture: String
    var tp: Int
    var testDescription: String { "\(fixture) G=\(tp)" }
}

let allowedPairs: [FixtureTP] = allFixtures.flatMap { f in f.allowed.map { FixtureTP(fixture: f.name, tp: $0) } }

// MARK: - An independent safetensors reader (Foundation's JSON, no ShardKit code)

struct RawTensor: Equatable {
    var dtype: String
    var shape: [Int]
    var bytes: [UInt8]
    var elementSize: Int { RawTensor.size(of: dtype) }
    static func size(of dtype: String) -> Int {
        switch dtype {
        case "F64", "I64", "U64": return 8
        case "F32", "I32", "U32": return 4
        case "BF16", "F16", "I16", "U16": return 2
        default: return 1
        }
    }
}

struct RawFile {
    var headerLength: Int
    var header: [String: Any]
    var metadata: [String: String]
    var tensors: [String: RawTensor]
    /// Names in data order.
    var order: [String]
    /// Absolute offset of each tensor's first byte.
    var offsets: [String: Int]
}

func readRawSafetensors(_ path: String) throws -> RawFile {
    let bytes = try readBytes(path)
    var n = 0
    for i in 0..<8 { n |= Int(bytes[i]) << (8 * i) }
    let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as! [String: Any]
    var tensors: [String: RawTensor] = [:]
    var offsets: [String: Int] = [:]
    var metadata: [String: String] = [:]
    for (k, v) in header {
        let entry = v as! [String: Any]
        if k == "__metadata__" { metadata = entry as! [String: String]; continue }
        let o = (entry["data_offsets"] as! [NSNumber]).map(\.intValue)
        tensors[k] = RawTensor(dtype: entry["dtype"] as! String, shape: (entry["shape"] as! [NSNumber]).map(\.intValue),
                               bytes: Array(bytes[(8 + n + o[0])..<(8 + n + o[1])]))
        offsets[k] = 8 + n + o[0]
    }
    let order = offsets.keys.sorted { offsets[$0]! < offsets[$1]! }
    return RawFile(headerLength: n, header: header, metadata: metadata, tensors: tensors, order: order, offsets: offsets)
}

/// Every weight tensor of a checkpoint directory (index or all *.safetensors but reference.safetensors).
func readCheckpointTensors(_ dir: String) throws -> [String: RawTensor] {
    var names: [String]
    let index = dir + "/model.safetensors.index.json"
    if exists(index) {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: index))) as! [String: Any]
        names = Array(Set((json["weight_map"] as! [String: String]).values)).sorted()
    } else {
        names = try FileManager.default.contentsOfDirectory(atPath: dir)
            .filter { $0.hasSuffix(".safetensors") && $0 != "reference.safetensors" }.sorted()
    }
    var all: [String: RawTensor] = [:]
    for f in names {
        for (k, v) in try readRawSafetensors(dir + "/" + f).tensors {
            precondition(all[k] == nil)
            all[k] = v
        }
    }
    return all
}

nonisolated(unsafe) private var sourceCache: [String: [String: RawTensor]] = [:]
private let sourceCacheLock = NSLock()

/// The source tensors of a fixture (cached: fixtures are read-only).
func sourceTensors(_ fixture: String) throws -> [String: RawTensor] {
    sourceCacheLock.lock()
    defer { sourceCacheLock.unlock() }
    if let c = sourceCache[fixture] { return c }
    let t = try readCheckpointTensors(Fixtures.path(fixture))
    sourceCache[fixture] = t
    return t
}

// MARK: - Independent index arithmetic

/// The bytes of `ranges` (global indices along `dim`, in order) of a row-major tensor. Indices at or
/// past the dimension's size read as zeros (vocab padding).
func slice(_ t: RawTensor, dim: Int, _ ranges: [Range<Int>]) -> [UInt8] {
    let outer = t.shape[..<dim].reduce(1, *)
    let n = t.shape[dim]
    let inner = t.shape[(dim + 1)...].reduce(1, *) * t.elementSize
    var out: [UInt8] = []
    for o in 0..<outer {
        for r in ranges {
            for i in r {
                if i < n {
                    let start = (o * n + i) * inner
                    out += t.bytes[start..<(start + inner)]
                } else {
                    out += [UInt8](repeating: 0, count: inner)
                }
            }
        }
    }
    return out
}

/// Rank r's even share of n: `[r·n/G, (r+1)·n/G)`.
func share(_ n: Int, rank r: Int, of g: Int) -> Range<Int> { (r * n / g)..<((r + 1) * n / g) }

/// Ranges shifted by `base`.
func shifted(_ r: Range<Int>, _ base: Int) -> Range<Int> { (r.lowerBound + base)..<(r.upperBound + base) }

/// Adjacent ranges merged (how manifests record intervals).
func merged(_ ranges: [Range<Int>]) -> [[Int]] {
    var out: [[Int]] = []
    for r in ranges where !r.isEmpty {
        if let last = out.last, last[1] == r.lowerBound { out[out.count - 1][1] = r.upperBound } else { out.append([r.lowerBound, r.upperBound]) }
    }
    return out
}

// MARK: - ShardKit operations used by many tests

func loadCheckpoint(_ fixture: String) throws -> Checkpoint { try Checkpoint(path: Fixtures.path(fixture)) }

@discardableResult
func shardFixture(_ fixture: String, tp: Int, to out: String, options: ShardSetWriter.Options = .init()) throws -> Manifest {
    let ckpt = try loadCheckpoint(fixture)
    let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
    return try Shard.run(checkpoint: ckpt, sourcePath: Fixtures.path(fixture), rules: rules, tp: tp, output: out, options: options)
}

/// Every tensor of a shard set reassembled through the manifest with the copy engine.
func reassembleAll(_ dir: String, budget: Int = 1 << 20) throws -> [String: [UInt8]] {
    let set = try ShardSet(directory: dir)
    let files = try set.openAllRanks()
    let buffers = CopyBuffers(budget: budget)
    var out: [String: [UInt8]] = [:]
    for name in set.manifest.order {
        let sink = MemorySink()
        try set.reassemble(name, files: files, into: sink, buffers: buffers)
        out[name] = sink.bytes
    }
    return out
}

/// The manifest of `dir`, decoded independently of ShardSet's validation.
func readManifest(_ dir: String) throws -> Manifest {
    try Manifest(json: Array(Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json"))), path: dir + "/manifest.json")
}

/// Rank r's piece of `name` read straight from the rank file the manifest names.
func piece(_ dir: String, _ manifest: Manifest, _ name: String, rank r: Int) throws -> RawTensor {
    let file = manifest.tensors[name]!.pieces[r].file
    let raw = try readRawSafetensors(dir + "/" + file)
    guard let t = raw.tensors[name] else { throw ShardKitError(.notFound, "\(file) has no \(name)") }
    return t
}

/// Expects `error` to be a ShardKitError with `code` whose message contains every one of `words`.
/// A word spelled as a CLI flag (`--force`, `--rules`, `--finalize`) is advice, which the library
/// carries as the error's remedy (the CLI spells it): that remedy is expected instead.
func expectShardKitError(_ error: (any Error)?, _ code: ShardKitError.Code, _ words: [String],
                         sourceLocation: SourceLocation = #_sourceLocation) {
    guard let e = error as? ShardKitError else {
        Issue.record("expected ShardKitError(.\(code)), got \(String(describing: error))", sourceLocation: sourceLocation)
        return
    }
    #expect(e.code == code, "message: \(e.message)", sourceLocation: sourceLocation)
    for w in words {
        switch w {
        case "--force": #expect(e.remedy == .force, "\(e.message): remedy \(String(describing: e.remedy))", sourceLocation: sourceLocation)
        case "--rules": #expect(e.remedy == .rules, "\(e.message): remedy \(String(describing: e.remedy))", sourceLocation: sourceLocation)
        case "--finalize":
            guard case .finalize? = e.remedy else {
                Issue.record("\(e.message): remedy \(String(describing: e.remedy)), expected finalize", sourceLocation: sourceLocation)
                continue
            }
        default:
            #expect(e.message.contains(w), "message \"\(e.message)\" should contain \"\(w)\"", sourceLocation: sourceLocation)
        }
    }
}


/// Runs `body`, returning the error it throws (nil if none).
func caught(_ body: () throws -> Void) -> (any Error)? {
    do { try body(); return nil } catch { return error }
}
