/// The manifest's JSON (docs/manifest.schema.json is the source of truth for the field names):
/// written with sorted keys and two-space indentation (each tensor on one line, so that a manifest of
/// a million tensors stays as small as the format allows), read with the strict `JSONReader` (duplicate
/// keys, unknown keys, non-integers and excessive nesting refused, each with where it is).
extension Manifest {
    /// The manifest's JSON: sorted keys, pretty printed.
    public func encoded() throws -> [UInt8] {
        var all: [UInt8] = []
        try encode { all += $0 }
        return all
    }

    /// Writes the manifest's JSON to `emit` a piece at a time (about 1 MiB each), so that a large
    /// manifest is never whole in memory.
    public func encode(_ emit: ([UInt8]) throws -> Void) throws {
        var w = JSONWriter()
        w.beginObject()
        let v2 = version >= 2
        w.key("checksum"); w.string(checksum)
        if v2 {
            w.key("ep"); w.int(layout.ep)
            w.key("experts"); w.beginObject()
            for layer in layout.experts.keys.map(String.init).sorted() {
                w.key(layer); w.beginArray()
                for g in layout.experts[Int(layer)!]! { w.ints(g, asItem: true) }
                w.endArray()
            }
            w.endObject()
        }
        w.key("extra_files"); w.beginArray(); for f in extraFiles { w.string(f, asItem: true) }; w.endArray()
        w.key("format"); w.string(format)
        w.key("order"); w.beginArray(); for n in order { w.string(n, asItem: true) }; w.endArray()
        if v2 { w.key("pp"); w.int(layout.pp) }
        w.key("ranks"); w.beginArray()
        for r in ranks {
            w.beginObject(asItem: true)
            w.key("files"); w.beginArray(); for f in r.files { w.string(f, asItem: true) }; w.endArray()
            if v2 { w.key("pp"); w.int(r.pp) }
            w.key("rank"); w.int(r.rank)
            if v2 { w.key("tp"); w.int(r.tp) }
            w.endObject()
        }
        w.endArray()
        w.key("source"); w.beginObject()
        w.key("files"); w.beginArray(); for f in source.files { w.string(f, asItem: true) }; w.endArray()
        if let m = source.modelType { w.key("model_type"); w.string(m) }
        w.key("path"); w.string(source.path)
        w.key("rules"); w.string(source.rules)
        w.endObject()
        if v2 {
            w.key("stages"); w.beginArray()
            for (s, r) in layout.stageLayers.enumerated() {
                w.beginObject(asItem: true, inline: true)
                w.key("layers"); w.ints([r.lowerBound, r.upperBound])
                w.key("stage"); w.int(s)
                w.endObject()
            }
            w.endArray()
        }
        w.key("tensors"); w.beginObject()
        for name in tensors.keys.sorted() {
            let t = tensors[name]!
            if w.bytes.count >= 1 << 20 { try w.drain(emit) }
            w.key(name); w.beginObject(inline: true)
            w.key("dtype"); w.string(t.dtype.rawValue)
            if let g = t.group { w.key("ep_group"); w.int(g) }
            if let p = t.paddedSize { w.key("padded_size"); w.int(p) }
            w.key("pieces"); w.beginArray()
            for p in t.pieces {
                w.beginObject(asItem: true, inline: true)
                w.key("crc32c"); w.string(p.crc32c)
                w.key("file"); w.string(p.file)
                w.key("intervals"); w.beginArray(); for i in p.intervals { w.ints(i, asItem: true) }; w.endArray()
                w.key("rank"); w.int(p.rank)
                w.key("shape"); w.ints(p.shape)
                w.endObject()
            }
            w.endArray()
            w.key("rule"); t.rule.write(to: &w)
            w.key("shape"); w.ints(t.shape)
            if v2 { w.key("stages"); w.ints(t.stages) }
            w.endObject()
        }
        w.endObject()
        w.key("tool"); w.beginObject()
        w.key("name"); w.string(tool.name)
        w.key("operation"); w.string(tool.operation)
        w.key("version"); w.string(tool.version)
        w.endObject()
        w.key("tp"); w.int(tp)
        w.key("version"); w.int(version)
        w.endObject()
        try emit(w.finish())
    }

    /// Decodes a manifest (or a part file) from its JSON; `path` names it in errors. Structure only:
    /// `validate(path:)` checks the values against each other.
    public init(json bytes: [UInt8], path: String) throws {
        func bad(_ e: Error) -> ShardKitError { ShardKitError(.invalidManifest, "\(path): \(e)", underlying: e) }
        var m = Manifest(layout: ParallelLayout(tp: 0), tool: Tool(name: "", version: "", operation: ""),
                         source: Source(path: "", files: [], modelType: nil, rules: ""),
                         ranks: [], extraFiles: [], tensors: [:], order: [])
        do {
            try bytes.withUnsafeBytes { raw in
                var r = JSONReader(bytes: raw)
                try r.document { r in try m.read(&r) }
            }
        } catch let e as JSONParseError { throw bad(e) }
        self = m
    }

    private mutating func read(_ r: inout JSONReader) throws {
        var seen: [String] = []
        var shared = Interner()
        try r.object { r, key in
            seen.append(key)
            switch key {
            case "format": format = try r.string()
            case "version": version = try r.int()
            case "tp": tp = try r.int()
            case "pp": layout.pp = try r.int()
            case "ep": layout.ep = try r.int()
            case "stages":
                try r.array { r, _ in
                    var layers: [Int] = [], stage = -1
                    try r.fields(required: ["stage", "layers"]) { r, key in
                        switch key {
                        case "stage": stage = try r.int()
                        case "layers": layers = try r.ints()
                        default: return false
                        }
                        return true
                    }
                    guard stage == layout.stageLayers.count, layers.count == 2, layers[0] <= layers[1] else {
                        throw r.error("a stage is {\"stage\": s, \"layers\": [start, end]}, stages in order")
                    }
                    layout.stageLayers.append(layers[0]..<layers[1])
                }
            case "experts":
                try r.object { r, key in
                    guard let layer = Int(key), layer >= 0, String(layer) == key else {
                        throw r.error("expert placement key \"\(key)\" is not a layer index")
                    }
                    var groups: [[Int]] = []
                    try r.array { r, _ in groups.append(try r.ints()) }
                    layout.experts[layer] = groups
                }
            case "checksum": checksum = try r.string()
            case "tool": tool = try Tool.read(&r)
            case "source": source = try Source.read(&r)
            case "ranks": try r.array { r, _ in ranks.append(try Rank.read(&r)) }
            case "extra_files": try r.array { r, _ in extraFiles.append(try r.string()) }
            case "order": try r.array { r, _ in order.append(try r.string()) }
            case "tensors":
                try r.object(uniqueKeys: false) { r, name in
                    guard tensors.updateValue(try Tensor.read(&r, &shared), forKey: name) == nil else {
                        throw r.duplicateKey(name)
                    }
                }
            default: throw r.error("unknown key \"\(key)\"")
            }
        }
        try JSONReader.require(["format", "version", "tp", "checksum", "tool", "source", "ranks", "extra_files",
                                "tensors", "order"], in: seen, r)
        let v2Keys = ["pp", "ep", "stages", "experts"]
        if version >= 2 {
            try JSONReader.require(v2Keys, in: seen, r)
        } else if let extra = v2Keys.first(where: seen.contains) {
            throw r.error("\"\(extra)\" belongs to version 2 manifests")
        } else {
            // Version 1: plain TP; ranks are their own TP coordinates, tensors live in the one stage.
            if ranks.contains(where: { $0.pp != -1 || $0.tp != -1 }) {
                throw r.error("a rank's \"pp\" and \"tp\" belong to version 2 manifests")
            }
            if tensors.values.contains(where: { !$0.stages.isEmpty || $0.group != nil }) {
                throw r.error("a tensor's \"stages\" and \"ep_group\" belong to version 2 manifests")
            }
            for i in ranks.indices { ranks[i].pp = 0; ranks[i].tp = ranks[i].rank }
            for name in tensors.keys { tensors[name]!.stages = [0] }
        }
    }
}

extension JSONReader {
    /// Throws naming the first of `keys` missing from `seen` (the keys of the object just read).
    static func require(_ keys: [String], in seen: [String], _ r: JSONReader) throws {
        if let missing = keys.first(where: { !seen.contains($0) }) { throw r.error("missing \"\(missing)\"") }
    }

    /// Reads an object whose members are all read by `member`; unknown keys are refused, `required`
    /// keys must be present.
    mutating func fields(required: [String], _ member: (inout JSONReader, String) throws -> Bool) throws {
        var seen: [String] = []
        try object { r, key in
            guard try member(&r, key) else { throw r.error("unknown key \"\(key)\"") }
            seen.append(key)
        }
        try JSONReader.require(required, in: seen, self)
    }

    mutating func ints() throws -> [Int] {
        var values: [Int] = []
        try array { r, _ in values.append(try r.int()) }
        return values
    }
}

extension Manifest.Tool {
    static func read(_ r: inout JSONReader) throws -> Self {
        var t = Self(name: "", version: "", operation: "")
        try r.fields(required: ["name", "version", "operation"]) { r, key in
            switch key {
            case "name": t.name = try r.string()
            case "version": t.version = try r.string()
            case "operation": t.operation = try r.string()
            default: return false
            }
            return true
        }
        return t
    }
}

extension Manifest.Source {
    static func read(_ r: inout JSONReader) throws -> Self {
        var s = Self(path: "", files: [], modelType: nil, rules: "")
        try r.fields(required: ["path", "files", "rules"]) { r, key in
            switch key {
            case "path": s.path = try r.string()
            case "files": try r.array { r, _ in s.files.append(try r.string()) }
            case "model_type": s.modelType = try r.null() ? nil : try r.string()
            case "rules": s.rules = try r.string()
            default: return false
            }
            return true
        }
        return s
    }
}

extension Manifest.Rank {
    static func read(_ r: inout JSONReader) throws -> Self {
        var k = Self(rank: 0, pp: -1, tp: -1, files: [])
        try r.fields(required: ["rank", "files"]) { r, key in
            switch key {
            case "rank": k.rank = try r.int()
            case "pp": k.pp = try r.int()
            case "tp": k.tp = try r.int()
            case "files": try r.array { r, _ in k.files.append(try r.string()) }
            default: return false
            }
            return true
        }
        return k
    }
}

extension Manifest.Tensor {
    static func read(_ r: inout JSONReader, _ shared: inout Interner) throws -> Self {
        var t = Self(dtype: .u8, shape: [], rule: .replicated, paddedSize: nil, stages: [], pieces: [])
        try r.fields(required: ["dtype", "shape", "rule", "pieces"]) { r, key in
            switch key {
            case "dtype":
                let name = try r.string()
                guard let d = DType(rawValue: name) else { throw r.error("unknown dtype \"\(name)\"") }
                t.dtype = d
            case "shape": t.shape = shared.ints(try r.ints())
            case "rule": t.rule = try SplitRule.read(&r)
            case "padded_size": t.paddedSize = try r.null() ? nil : try r.int()
            case "stages": t.stages = shared.ints(try r.ints())
            case "ep_group": t.group = try r.int()
            case "pieces": try r.array { r, _ in t.pieces.append(try Manifest.Piece.read(&r, &shared)) }
            default: return false
            }
            return true
        }
        return t
    }
}

extension Manifest.Piece {
    static func read(_ r: inout JSONReader, _ shared: inout Interner) throws -> Self {
        var p = Self(rank: 0, file: "", shape: [], intervals: [], crc32c: "")
        try r.fields(required: ["rank", "file", "shape", "intervals", "crc32c"]) { r, key in
            switch key {
            case "rank": p.rank = try r.int()
            case "file": p.file = shared.string(try r.string())
            case "shape": p.shape = shared.ints(try r.ints())
            case "intervals":
                var list: [[Int]] = []
                try r.array { r, _ in
                    let pair = try r.ints()
                    guard pair.count == 2 else {
                        throw r.error("an interval is [start, end], found \(pair.count) numbers")
                    }
                    list.append(pair)
                }
                p.intervals = shared.intervals(list)
            case "crc32c": p.crc32c = try r.string()
            default: return false
            }
            return true
        }
        return p
    }
}

// MARK: - SplitRule as JSON: {"kind", "dim", "heads", "parts": [{"size", "split", "heads"}]}

extension SplitRule {
    func write(to w: inout JSONWriter) {
        w.beginObject(inline: true)
        if let d = dim { w.key("dim"); w.int(d) }
        switch self {
        case .heads(_, let h), .kvHeads(_, let h), .outProjection(_, let h): w.key("heads"); w.int(h)
        default: break
        }
        w.key("kind"); w.string(kindName)
        if case .vocab(_, let m) = self, m > 1 { w.key("multiple"); w.int(m) }
        if case .padded(let base, let m) = self { w.key("multiple"); w.int(m); w.key("of"); base.write(to: &w) }
        if case .units(_, let u) = self {
            w.key("of"); u.base.write(to: &w)
            w.key("size"); w.int(u.size)
            w.key("straddle"); w.string(u.exact ? "refuse" : "copy")
            w.key("unit"); w.int(u.unit)
            w.key("what"); w.string(u.what)
        }
        if case .fused(_, let parts) = self {
            w.key("parts"); w.beginArray()
            for part in parts {
                w.beginObject(asItem: true)
                if let h = part.split.heads { w.key("heads"); w.int(h) }
                w.key("size"); w.int(part.size)
                w.key("split"); w.string(part.split.kind.rawValue)
                w.endObject()
            }
            w.endArray()
        }
        w.endObject()
    }

    static func read(_ r: inout JSONReader, depth: Int = 0) throws -> SplitRule {
        var kindName: String?, dim: Int?, heads: Int?, parts: [FusedPart]?, multiple: Int?
        var base: SplitRule?, size: Int?, straddle: String?, unit: Int?, what: String?
        try r.fields(required: ["kind"]) { r, key in
            switch key {
            case "kind": kindName = try r.string()
            case "dim": dim = try r.int()
            case "heads": heads = try r.int()
            case "multiple": multiple = try r.int()
            case "of":
                // A units rule's base is a plain or padded rule, a padded rule's a plain one.
                guard depth < 2 else { throw r.error("rules nest at most two deep (units of padded)") }
                base = try SplitRule.read(&r, depth: depth + 1)
            case "size": size = try r.int()
            case "straddle": straddle = try r.string()
            case "unit": unit = try r.int()
            case "what": what = try r.string()
            case "parts":
                var list: [FusedPart] = []
                try r.array { r, _ in list.append(try FusedPart.read(&r)) }
                parts = list
            default: return false
            }
            return true
        }
        guard let kind = RuleKind(rawValue: kindName ?? "") else {
            throw r.error("unknown rule kind \"\(kindName ?? "")\"")
        }
        if multiple != nil && kind != .vocab && kind != .padded {
            throw r.error("\"multiple\" belongs to vocab and padded rules only")
        }
        if kind != .units && [size != nil, straddle != nil, unit != nil, what != nil].contains(true) {
            throw r.error("\"size\", \"straddle\", \"unit\" and \"what\" belong to units rules only")
        }
        if base != nil && kind != .units && kind != .padded {
            throw r.error("\"of\" belongs to units and padded rules")
        }
        if kind == .padded {
            guard let base, [.column, .row].contains(base.kind), dim == nil || dim == base.dim,
                  let m = multiple, m >= 1, m <= 1 << 20 else {
                throw r.error("a padded rule needs \"of\" (a column or row rule) and \"multiple\" 1 to \(1 << 20)")
            }
            return .padded(base, multiple: m)
        }
        if kind == .replicated { return .replicated }
        guard let d = dim, d >= 0 else { throw r.error("rule \(kind.rawValue) needs a non-negative \"dim\"") }
        if kind.needsHeads {
            guard let h = heads, h > 0 else { throw r.error("rule \(kind.rawValue) needs \"heads\" > 0") }
            switch kind {
            case .heads: return .heads(dim: d, heads: h)
            case .kvHeads: return .kvHeads(dim: d, heads: h)
            default: return .outProjection(dim: d, heads: h)
            }
        }
        switch kind {
        case .column: return .column(dim: d)
        case .row: return .row(dim: d)
        case .units:
            guard let base, base.kind != .units, base.kind != .padded || depth == 0, let size, size >= 0,
                  let unit, unit >= 1, unit <= 1 << 30,
                  let straddle, straddle == "refuse" || straddle == "copy" else {
                throw r.error("a units rule needs \"of\" (a rule), \"size\" ≥ 0, \"unit\" ≥ 1 and \"straddle\" "
                              + "(\"refuse\" or \"copy\")")
            }
            return .units(dim: d, UnitSplit(base: base, size: size, unit: unit, exact: straddle == "refuse",
                                            what: what ?? ""))
        case .vocab:
            let m = multiple ?? 1
            guard m >= 1, m <= 1 << 20 else { throw r.error("vocab \"multiple\" must be 1 to \(1 << 20)") }
            return .vocab(dim: d, multiple: m)
        default:
            guard let parts, !parts.isEmpty else { throw r.error("fused rule without parts") }
            return .fused(dim: d, parts: parts)
        }
    }
}

extension FusedPart {
    static func read(_ r: inout JSONReader) throws -> FusedPart {
        var size: Int?, splitName: String?, heads: Int?
        try r.fields(required: ["size", "split"]) { r, key in
            switch key {
            case "size": size = try r.int()
            case "split": splitName = try r.string()
            case "heads": heads = try r.int()
            default: return false
            }
            return true
        }
        guard let size, size > 0 else { throw r.error("part size must be positive") }
        guard let kind = Split.Kind(rawValue: splitName ?? "") else {
            throw r.error("unknown part split \"\(splitName ?? "")\"")
        }
        guard let split = Split(kind: kind, heads: heads) else {
            throw r.error("\(kind.rawValue) part needs \"heads\" > 0")
        }
        return FusedPart(size: size, split: split)
    }
}

extension SplitRule: Encodable {
    enum Keys: String, CodingKey { case kind, dim, heads, parts, multiple, of, size, straddle, unit, what }
    enum PartKeys: String, CodingKey { case size, split, heads }

    /// The same fields as the manifest's, for reports (`plan --json`).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(kindName, forKey: .kind)
        try c.encodeIfPresent(dim, forKey: .dim)
        switch self {
        case .heads(_, let h), .kvHeads(_, let h), .outProjection(_, let h): try c.encode(h, forKey: .heads)
        case .fused(_, let parts):
            var list = c.nestedUnkeyedContainer(forKey: .parts)
            for part in parts {
                var p = list.nestedContainer(keyedBy: PartKeys.self)
                try p.encode(part.size, forKey: .size)
                try p.encode(part.split.kind.rawValue, forKey: .split)
                try p.encodeIfPresent(part.split.heads, forKey: .heads)
            }
        case .vocab(_, let m) where m > 1: try c.encode(m, forKey: .multiple)
        case .padded(let base, let m):
            try c.encode(base, forKey: .of)
            try c.encode(m, forKey: .multiple)
        case .units(_, let u):
            try c.encode(u.base, forKey: .of)
            try c.encode(u.size, forKey: .size)
            try c.encode(u.exact ? "refuse" : "copy", forKey: .straddle)
            try c.encode(u.unit, forKey: .unit)
            try c.encode(u.what, forKey: .what)
        default: break
        }
    }
}
