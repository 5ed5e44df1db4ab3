import Foundation
import Testing
@testable import ShardKit

/// A small deterministic PRNG, so that every mutation run is reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Integers that tend to break arithmetic.
let nastyInts: [Int] = [-1, 0, 1, 2, 3, 7, 255, 256, 4096, 1 << 31, 1 << 32, 1 << 40, 1 << 62, Int.max, Int.max - 1, Int.min, Int.max / 2 + 1]

/// Replaces one random leaf (or object member) of `v` with a nasty value.
func mutateJSON(_ v: JSONValue, _ rng: inout SplitMix64) -> JSONValue {
    func leaf(_ rng: inout SplitMix64) -> JSONValue {
        switch Int.random(in: 0..<6, using: &rng) {
        case 0, 1, 2: return .int(nastyInts.randomElement(using: &rng)!)
        case 3: return .string(["..", "../x", "/etc/passwd", "", "a/./b", "rank-0/model.safetensors", "zz"].randomElement(using: &rng)!)
        case 4: return .array([])
        default: return .null
        }
    }
    // Collect paths to every node, pick one, replace (or delete when it is an object member).
    var count = 0
    func countNodes(_ v: JSONValue) {
        count += 1
        switch v {
        case .array(let a): a.forEach(countNodes)
        case .object(let o): o.forEach { countNodes($0.1) }
        default: break
        }
    }
    countNodes(v)
    var target = Int.random(in: 0..<count, using: &rng)
    let deleteMember = Int.random(in: 0..<5, using: &rng) == 0
    func rebuild(_ v: JSONValue, _ rng: inout SplitMix64) -> JSONValue? {
        if target == 0 { target -= 1; return deleteMember ? nil : leaf(&rng) }
        target -= 1
        switch v {
        case .array(let a): return .array(a.compactMap { rebuild($0, &rng) })
        case .object(let o): return .object(o.compactMap { k, x in rebuild(x, &rng).map { (k, $0) } })
        default: return v
        }
    }
    return rebuild(v, &rng) ?? v
}

@Suite("Review: hostile inputs never crash")
struct ReviewTests {
    static let iterations = Int(ProcessInfo.processInfo.environment["SHARDKIT_FUZZ_ITERATIONS"] ?? "") ?? 300

    @Test("mutated safetensors headers give a ShardKitError or load, never a crash")
    func mutatedHeaders() throws {
        let original = try readBytes(Fixtures.path("llama-gqa/model.safetensors"))
        var n = 0
        for i in 0..<8 { n |= Int(original[i]) << (8 * i) }
        var rng = SplitMix64(seed: 0x5AFE)
        let digits = Array("0123456789".utf8)
        try withTempDir { dir in
            let path = dir + "/m.safetensors"
            for _ in 0..<ReviewTests.iterations {
                var bytes = original
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    let at = Int.random(in: 0..<(8 + n), using: &rng)
                    switch Int.random(in: 0..<3, using: &rng) {
                    case 0: bytes[at] = UInt8.random(in: 0...255, using: &rng)
                    case 1: if digits.contains(bytes[at]) { bytes[at] = digits.randomElement(using: &rng)! }
                    default:
                        // Insert digits after a digit (grows a number) and keep the length prefix honest.
                        if at >= 8, digits.contains(bytes[at]) {
                            let extra = (0..<Int.random(in: 1...19, using: &rng)).map { _ in digits.randomElement(using: &rng)! }
                            bytes.insert(contentsOf: extra, at: at + 1)
                            let newN = UInt64(n + extra.count)
                            for k in 0..<8 { bytes[k] = UInt8((newN >> (8 * UInt64(k))) & 0xFF) }
                        }
                    }
                }
                try writeBytes(bytes, to: path)
                do { _ = try SafetensorsFile(path: path) } catch is ShardKitError {} catch {
                    Issue.record("not a ShardKitError: \(error)")
                }
            }
        }
    }

    /// Shards `fixture`, then rewrites its manifest.json many times with one nasty value each, and
    /// opens, checks, views and reshards every variant.
    func mutateManifest(_ fixture: String, tp: Int, seed: UInt64) throws {
        try withTempDir { dir in
            let src = Fixtures.path(fixture)
            let ckpt = try Checkpoint(path: src)
            let out = dir + "/set"
            try Shard.run(checkpoint: ckpt, sourcePath: src, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: tp, output: out)
            let manifestPath = out + "/manifest.json"
            let original = try JSONValue.parse(try readBytes(manifestPath))
            var rng = SplitMix64(seed: seed)
            for i in 0..<ReviewTests.iterations {
                var m = mutateJSON(original, &rng)
                if i % 3 == 0 { m = mutateJSON(m, &rng) }
                try writeBytes(Array(m.serialized.utf8), to: manifestPath)
                do {
                    let set = try ShardSet(directory: out)
                    _ = Verify.integrity(set)
                    _ = Verify.reconstruction(set, source: ckpt)
                    for r in 0..<set.tp {
                        if let view = try? set.rank(r) { for name in view.names { _ = try? view.tensor(name) } }
                    }
                    if let slicer = try? RankSlicer(shards: set, tp: 1) {
                        for name in slicer.plan.tensors.map(\.name) { _ = try? slicer.piece(name, rank: 0) }
                    }
                    if i % 20 == 0 {
                        var o = ShardSetWriter.Options()
                        o.force = true
                        _ = try? Reshard.run(input: set, tp: [1, 4][i / 20 % 2], output: dir + "/re", options: o)
                    }
                } catch is ShardKitError {} catch {
                    Issue.record("not a ShardKitError: \(error)")
                }
            }
            try writeBytes(Array(original.serialized.utf8), to: manifestPath)
        }
    }

    @Test("mutated manifests (llama, phi3 fused) give a ShardKitError or load, never a crash")
    func mutatedManifests() throws {
        try mutateManifest("llama-gqa", tp: 2, seed: 1)
        try mutateManifest("phi3", tp: 2, seed: 2)
    }
}

// MARK: - Crafted hostile inputs (each of these trapped before the fix)

/// Shards llama-gqa at tp 2 into `dir/set`, then rewrites its manifest.json through `edit`.
func editedManifest(_ dir: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
    let src = Fixtures.path("llama-gqa")
    let ckpt = try Checkpoint(path: src)
    let out = dir + "/set"
    try Shard.run(checkpoint: ckpt, sourcePath: src, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: 2, output: out)
    let path = out + "/manifest.json"
    var json = try JSONSerialization.jsonObject(with: Data(readBytes(path))) as! [String: Any]
    edit(&json)
    try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
    return out
}

/// Sets field `key` of tensor `name` in a manifest being edited.
func setTensorField(_ json: inout [String: Any], _ name: String, _ key: String, _ value: Any) {
    var tensors = json["tensors"] as! [String: Any]
    var t = tensors[name] as! [String: Any]
    t[key] = value
    tensors[name] = t
    json["tensors"] = tensors
}

extension ReviewTests {
    @Test("a manifest with a huge tp is refused, not materialized")
    func hugeTP() throws {
        try withTempDir { dir in
            let out = try editedManifest(dir) { $0["tp"] = Int.max }
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest, ["more than the 65536 ranks"])
        }
    }

    @Test("manifest shapes whose split arithmetic overflows are refused")
    func overflowingShapes() throws {
        let norm = "model.norm.weight"
        // A column split of 2^62 one-byte rows: (rank + 1)·n overflowed in the even split.
        try withTempDir { dir in
            let out = try editedManifest(dir) { j in
                setTensorField(&j, norm, "dtype", "U8")
                setTensorField(&j, norm, "shape", [1 << 62])
                setTensorField(&j, norm, "rule", ["kind": "column", "dim": 0])
            }
            #expect(throws: ShardKitError.self) { _ = try ShardSet(directory: out) }
        }
        // A vocab dimension so large that padding it overflows.
        try withTempDir { dir in
            let out = try editedManifest(dir) { j in
                setTensorField(&j, norm, "dtype", "U8")
                setTensorField(&j, norm, "shape", [Int.max])
                setTensorField(&j, norm, "rule", ["kind": "vocab", "dim": 0])
            }
            #expect(throws: ShardKitError.self) { _ = try ShardSet(directory: out) }
        }
        // Fused parts whose sizes overflow when added up.
        try withTempDir { dir in
            let out = try editedManifest(dir) { j in
                setTensorField(&j, norm, "rule", ["kind": "fused", "dim": 0,
                                                  "parts": [["size": Int.max, "split": "even"], ["size": 1, "split": "even"]]])
            }
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest, ["fused parts"])
        }
        // Replicated tensors each within Int, whose sum is not (totals, progress, rank file sizes).
        try withTempDir { dir in
            let out = try editedManifest(dir) { j in
                for name in [norm, "model.layers.0.input_layernorm.weight"] {
                    setTensorField(&j, name, "dtype", "U8")
                    setTensorField(&j, name, "shape", [1 << 61])
                    var tensors = j["tensors"] as! [String: Any]
                    var t = tensors[name] as! [String: Any]
                    t["pieces"] = (t["pieces"] as! [[String: Any]]).map { var p = $0; p["shape"] = [1 << 61]; p["intervals"] = [[0, 1 << 61]]; return p }
                    tensors[name] = t
                    j["tensors"] = tensors
                }
            }
            expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest, ["overflow"])
        }
    }

    @Test("plans refuse an absurd TP degree, overflowing fused parts and a split scalar")
    func planLimits() throws {
        let list: [(name: String, dtype: DType, shape: [Int])] = [("a", .u8, [8])]
        expectShardKitError(caught { _ = try ShardPlan(tensors: list, rules: [.replicated], tp: Int.max) }, .impossibleSplit, ["TP degree"])
        expectShardKitError(caught { _ = try ShardPlan(tensors: list, rules: [.vocab(dim: 0)], tp: ShardPlan.maxTP + 1) }, .impossibleSplit, ["TP degree"])
        expectShardKitError(caught { _ = try ShardPlan(tensors: [("s", .f32, [])], rules: [.column(dim: 0)], tp: 1) }, .impossibleSplit, ["scalar"])
        // Rules-file part sizes and config head counts are summed with overflow checks.
        let sized = RuleSpec.fused(0, [.init(.even, size: Int.max), .init(.even, size: 1)])
        #expect(throws: ShardKitError.self) { _ = try sized.resolve(shape: [8], tensor: "t") }
        let byHeads = RuleSpec.fused(0, [.init(.heads(Int.max)), .init(.kvHeads(Int.max))])
        #expect(throws: ShardKitError.self) { _ = try byHeads.resolve(shape: [8], tensor: "t") }
        // Per-rank totals that overflow are refused before any rank file is laid out.
        let huge: [(name: String, dtype: DType, shape: [Int])] = [("a", .u8, [1 << 62]), ("b", .u8, [1 << 62])]
        expectShardKitError(caught { _ = try ShardPlan(tensors: huge, rules: [.replicated, .replicated], tp: 1) }, .impossibleSplit, ["overflows"])
    }

    @Test("finalize refuses a malformed part.json instead of trapping")
    func malformedPart() throws {
        try withTempDir { dir in
            let src = Fixtures.path("llama-gqa")
            let ckpt = try Checkpoint(path: src)
            var o = ShardSetWriter.Options()
            o.ranks = [0, 1]
            let parts = dir + "/parts"
            // Two of four ranks: a partial run.
            try Shard.run(checkpoint: ckpt, sourcePath: src, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: 4, output: parts, options: o)
            let path = parts + "/rank-0/part.json"
            let original = try readBytes(path)
            for edit: (inout [String: Any]) -> Void in [{ $0["tp"] = -1 }, { $0["ranks"] = [] }, { $0["order"] = ["nope"] }] {
                var json = try JSONSerialization.jsonObject(with: Data(original)) as! [String: Any]
                edit(&json)
                try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
                expectShardKitError(caught { try Reshard.finalize(directory: parts) }, .invalidManifest, ["part.json"])
            }
        }
    }

    @Test("a partial run refuses a finished shard set and a foreign directory")
    func partialRunTargets() throws {
        try withTempDir { dir in
            let src = Fixtures.path("llama-gqa")
            let ckpt = try Checkpoint(path: src)
            let rules = try ShardPlan.rules(for: ckpt, rulesFile: nil)
            let done = dir + "/done"
            try Shard.run(checkpoint: ckpt, sourcePath: src, rules: rules, tp: 2, output: done)
            let before = listFiles(done)
            var o = ShardSetWriter.Options()
            o.ranks = [1]
            // Rewriting rank 1 under a manifest that vouches for the old files is refused...
            expectShardKitError(caught { try Shard.run(checkpoint: ckpt, sourcePath: src, rules: rules, tp: 4, output: done, options: o) },
                                .outputExists, ["--force"])
            #expect(listFiles(done) == before)
            #expect(Verify.integrity(try ShardSet(directory: done)).status == .pass)
            // ...and with --force the finished set is replaced by the part.
            o.force = true
            try Shard.run(checkpoint: ckpt, sourcePath: src, rules: rules, tp: 4, output: done, options: o)
            #expect(!exists(done + "/manifest.json") && exists(done + "/rank-1/part.json") && !exists(done + "/rank-0"))
            // A directory that is not ShardKit's is never written into.
            let foreign = dir + "/foreign"
            try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
            try writeBytes(Array("{}".utf8), to: foreign + "/config.json")
            o.force = false
            expectShardKitError(caught { try Shard.run(checkpoint: ckpt, sourcePath: src, rules: rules, tp: 2, output: foreign, options: o) },
                                .outputExists, ["not a ShardKit output directory"])
            #expect(listFiles(foreign) == ["config.json"])
            #expect(try readBytes(foreign + "/config.json") == Array("{}".utf8))
        }
    }

    @Test("a zero-byte tensor with a huge outer dimension copies at once")
    func zeroInner() throws {
        let g = try TensorGeometry(shape: [1 << 40, 0], elementSize: 4, dim: 1, tensor: "z")
        try withTempDir { dir in
            try writeBytes([], to: dir + "/empty")
            let src = CopySource(file: try ReadOnlyFile(path: dir + "/empty"), offset: 0, layout: PieceLayout([0..<0]), label: "empty")
            let sink = MemorySink()
            try CopyEngine.copy(tensor: "z", geometry: g, sources: [src],
                                destinations: [CopyDestination(layout: PieceLayout([0..<0]), sink: sink)], buffers: CopyBuffers())
            #expect(sink.bytes.isEmpty)
        }
    }
}

// MARK: - Copy engine: windows mode, several segments, padding, chosen-source checksums

@Suite("Review: copy engine modes")
struct ReviewCopyEngineTests {
    /// The bytes a piece with `segments` holds of a row-major [outer, size, inner-bytes] tensor
    /// (indices at or past `size` are zeros), computed independently of the engine.
    static func piece(_ full: [UInt8], outer: Int, size: Int, inner: Int, _ segments: [Range<Int>]) -> [UInt8] {
        var out: [UInt8] = []
        for o in 0..<outer {
            for s in segments {
                for i in s {
                    if i < size { out += full[((o * size + i) * inner)..<((o * size + i + 1) * inner)] }
                    else { out += [UInt8](repeating: 0, count: inner) }
                }
            }
        }
        return out
    }

    static func crc(_ b: [UInt8]) -> UInt32 { var c = CRC32C(); b.withUnsafeBytes { c.update($0) }; return c.value }

    /// Copies with every unit size from 1 byte (windows of one index) to the whole tensor.
    static let unitSizes = [1, 3, 5, 7, 16, 50, 149, 2 << 20]

    @Test("multi-segment sources into padded multi-segment destinations, every unit size, CRCs checked")
    func windows() throws {
        let outer = 3, size = 10, inner = 5
        var rng = SplitMix64(seed: 42)
        let full = (0..<(outer * size * inner)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        // Two sources that interleave (as fused pieces do); the second also holds padding (10..<12).
        let srcLayouts = [PieceLayout([0..<2, 5..<7]), PieceLayout([2..<5, 7..<12])]
        // Destinations: uneven, several segments, one reaching into the padding.
        let dstLayouts = [PieceLayout([0..<3, 6..<8]), PieceLayout([3..<6]), PieceLayout([8..<12]), PieceLayout([1..<2, 9..<10])]
        try withTempDir { dir in
            var files: [ReadOnlyFile] = []
            for (i, l) in srcLayouts.enumerated() {
                try writeBytes(Self.piece(full, outer: outer, size: size, inner: inner, l.segments), to: dir + "/s\(i)")
                files.append(try ReadOnlyFile(path: dir + "/s\(i)"))
            }
            func sources(corrupt: Int? = nil) throws -> [CopySource] {
                srcLayouts.enumerated().map { i, l in
                    var expected = Self.crc(Self.piece(full, outer: outer, size: size, inner: inner, l.segments))
                    if i == corrupt { expected ^= 1 }
                    return CopySource(file: files[i], offset: 0, layout: l, expectedCRC: expected, label: "source \(i)")
                }
            }
            let g = TensorGeometry(outer: outer, size: size, inner: inner)
            for unit in Self.unitSizes {
                let buffers = CopyBuffers(budget: 4096)
                buffers.unitBytes = unit
                let sinks = dstLayouts.map { _ in MemorySink() }
                var produced = 0
                try CopyEngine.copy(tensor: "t", geometry: g, sources: try sources(),
                                    destinations: zip(dstLayouts, sinks).map { CopyDestination(layout: $0, sink: $1) },
                                    buffers: buffers) { produced += $0 }
                for (l, s) in zip(dstLayouts, sinks) {
                    #expect(s.bytes == Self.piece(full, outer: outer, size: size, inner: inner, l.segments), "unit \(unit), \(l.segments)")
                }
                #expect(produced == dstLayouts.reduce(0) { $0 + g.byteCount(of: $1) }, "unit \(unit)")
                // Each chosen source is read whole, once, in order: a wrong expected CRC is always caught.
                for bad in 0..<srcLayouts.count {
                    expectShardKitError(caught {
                        try CopyEngine.copy(tensor: "t", geometry: g, sources: try sources(corrupt: bad),
                                            destinations: dstLayouts.map { CopyDestination(layout: $0, sink: MemorySink()) },
                                            buffers: buffers)
                    }, .checksumMismatch, ["source \(bad)"])
                }
            }
        }
    }

    @Test("replicas: only the first covering source is read; rows larger than the budget")
    func replicas() throws {
        let outer = 2, size = 64, inner = 3
        var rng = SplitMix64(seed: 7)
        let full = (0..<(outer * size * inner)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try withTempDir { dir in
            let bytes = Self.piece(full, outer: outer, size: size, inner: inner, [0..<size])
            try writeBytes(bytes, to: dir + "/a")
            var damaged = bytes
            damaged[10] ^= 0xFF
            try writeBytes(damaged, to: dir + "/b")
            let whole = PieceLayout([0..<size])
            let a = CopySource(file: try ReadOnlyFile(path: dir + "/a"), offset: 0, layout: whole, expectedCRC: Self.crc(bytes), label: "a")
            let b = CopySource(file: try ReadOnlyFile(path: dir + "/b"), offset: 0, layout: whole, expectedCRC: Self.crc(bytes), label: "b")
            let g = TensorGeometry(outer: outer, size: size, inner: inner)
            for unit in Self.unitSizes {
                let buffers = CopyBuffers(budget: 4096)
                buffers.unitBytes = unit
                let sink = MemorySink()
                // The damaged replica comes second and is never chosen.
                try CopyEngine.copy(tensor: "t", geometry: g, sources: [a, b],
                                    destinations: [CopyDestination(layout: PieceLayout([5..<40, 50..<70]), sink: sink)], buffers: buffers)
                #expect(sink.bytes == Self.piece(full, outer: outer, size: size, inner: inner, [5..<40, 50..<70]), "unit \(unit)")
                // First, it is chosen, and caught.
                expectShardKitError(caught {
                    try CopyEngine.copy(tensor: "t", geometry: g, sources: [b, a],
                                        destinations: [CopyDestination(layout: whole, sink: MemorySink())], buffers: buffers)
                }, .checksumMismatch, ["b"])
            }
        }
    }
}

extension ReviewTests {
    @Test("extra_files naming the manifest, a rank file or an index are refused (reshard copies them last)")
    func extraFilesOverwrite() throws {
        for bad in ["manifest.json", "rank-0/model.safetensors", "rank-1", "model.safetensors", Checkpoint.indexName] {
            try withTempDir { dir in
                let out = try editedManifest(dir) { j in j["extra_files"] = ["config.json", bad] }
                expectShardKitError(caught { _ = try ShardSet(directory: out) }, .invalidManifest, ["extra file", bad])
            }
        }
    }
}

extension ReviewTests {
    @Test("mutated config.json (llama, phi3, gpt2) gives a ShardKitError or a plan, never a crash")
    func mutatedConfigs() throws {
        var rng = SplitMix64(seed: 3)
        for fixture in ["llama-gqa", "phi3", "gpt2"] {
            try withTempDir { dir in
                try copyFixture(fixture, to: dir + "/c", skipping: ["reference.safetensors"])
                let original = try JSONValue.parse(try readBytes(dir + "/c/config.json"))
                for _ in 0..<(ReviewTests.iterations / 3) {
                    try writeBytes(Array(mutateJSON(original, &rng).serialized.utf8), to: dir + "/c/config.json")
                    do {
                        let ckpt = try Checkpoint(path: dir + "/c")
                        for tp in [1, 2, 3] {
                            _ = try? ShardPlan(checkpoint: ckpt, rules: try ShardPlan.rules(for: ckpt, rulesFile: nil), tp: tp)
                        }
                    } catch is ShardKitError {} catch { Issue.record("not a ShardKitError: \(error)") }
                }
            }
        }
    }
}

extension ReviewTests {
    @Test("random JSON-ish text parses or throws JSONParseError, never traps")
    func randomJSON() {
        var rng = SplitMix64(seed: 11)
        let alphabet = Array("{}[]\":,\\/ u0123456789abcdefEe.+-tnrfl\u{7F}".utf8) + [0x00, 0x1F, 0xC3, 0xA9, 0xED, 0xA0, 0x80, 0xFF]
        let pieces = ["\\ud800", "\\udc00", "\\ud83d\\ude00", "\\u00", "1e999999", "-0.e", "123456789012345678901234567890", "\"\\", "[[[[[[[[", "{\"a\":1,\"a\":2}"]
        for _ in 0..<(ReviewTests.iterations * 20) {
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 0...40, using: &rng) {
                if Int.random(in: 0..<6, using: &rng) == 0 { bytes += Array(pieces.randomElement(using: &rng)!.utf8) }
                else { bytes.append(alphabet.randomElement(using: &rng)!) }
            }
            if Bool.random(using: &rng) { bytes = Array("{\"k\":\"".utf8) + bytes + Array("\"}".utf8) }
            _ = try? JSONValue.parse(bytes)
        }
        // Nesting far past the limit is refused, not a stack overflow.
        #expect(throws: JSONParseError.self) { _ = try JSONValue.parse(Array(repeating: UInt8(ascii: "["), count: 100_000)) }
    }
}
