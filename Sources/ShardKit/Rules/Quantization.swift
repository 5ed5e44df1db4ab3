/// A quantized checkpoint's format, read from config.json's `quantization_config`. Sharding never
/// dequantizes: each quantized weight is split as its unquantized weight would be (the preset's rule
/// for `M.weight`), and every companion tensor (packed values, scales, zero points, group indices)
/// follows that split in its own units (docs/quantization.md).
public enum QuantizationFormat: Sendable, Equatable {
    /// FP8 E4M3 weights (`quant_method` "fp8"): a per-tensor or per-channel `weight_scale`, or
    /// `weight_scale_inv` per block of `block` = [rows, columns] (DeepSeek-V3, Qwen3-FP8).
    case fp8(block: [Int]?)
    /// AWQ GEMM: `qweight` [K, N/P] packed along N, `qzeros` [K/g, N/P], `scales` [K/g, N].
    case awq(bits: Int, group: Int)
    /// GPTQ: `qweight` [K/P, N] packed along K, `qzeros` [K/g, N/P], `scales` [K/g, N], `g_idx` [K];
    /// `actOrder` (desc_act): groups follow `g_idx`, not position.
    case gptq(bits: Int, group: Int, actOrder: Bool)
    /// compressed-tensors `pack-quantized`: `weight_packed` [N, K/P] packed along K, `weight_scale`
    /// [N, K/g] (or [N, 1] per channel), `weight_zero_point` [N/P, K/g] when asymmetric, `weight_shape`.
    case packed(bits: Int, group: Int?, symmetric: Bool)
    /// compressed-tensors `float-quantized`: FP8 `weight`, `weight_scale` per tensor, channel or block.
    case float(block: [Int]?)
    /// MXFP4 (gpt-oss experts): `X_blocks` U8 [E, N, K/32, 16] (two FP4 E2M1 values per byte) and
    /// `X_scales` E8M0 [E, N, K/32] for a tensor `X` that is [E, K, N] unquantized (input-major).
    case mxfp4

    /// The format's name in messages.
    public var name: String {
        switch self {
        case .fp8: return "FP8"
        case .awq: return "AWQ"
        case .gptq(_, _, let a): return a ? "GPTQ act-order" : "GPTQ"
        case .packed: return "compressed-tensors pack-quantized"
        case .float: return "compressed-tensors float-quantized"
        case .mxfp4: return "MXFP4"
        }
    }

    /// The format config.json declares; nil for an unquantized model. Throws for a format ShardKit
    /// does not split (with its name), never guessing.
    public init?(config: ModelConfig?) throws {
        guard let config,
              let q = config.json["quantization_config"] ?? config.json["text_config"]?["quantization_config"]
        else { return nil }
        func bad(_ m: String) -> ShardKitError {
            ShardKitError(.invalidConfig, "\(config.path): quantization_config: \(m)")
        }
        func int(_ v: JSONValue?, _ what: String, in range: ClosedRange<Int>) throws -> Int {
            guard let n = v?.intValue, range.contains(n) else {
                throw bad("\(what) must be an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return n
        }
        func block(_ v: JSONValue?) throws -> [Int]? {
            guard let v, v != .null else { return nil }
            guard let list = v.arrayValue, list.count == 2 else {
                throw bad("weight_block_size must be [rows, columns]")
            }
            return try list.map { try int($0, "weight_block_size", in: 1...(1 << 20)) }
        }
        let method = q["quant_method"]?.stringValue ?? ""
        switch method {
        case "fp8":
            self = .fp8(block: try block(q["weight_block_size"]))
        case "awq":
            let version = (q["version"]?.stringValue ?? "gemm").lowercased()
            guard version == "gemm" else {
                throw bad("AWQ version \"\(version)\" is not supported (ShardKit splits AWQ GEMM)")
            }
            let bits = try int(q["bits"] ?? q["w_bit"], "bits", in: 4...4)
            let group = try int(q["group_size"] ?? q["q_group_size"], "group_size", in: 1...(1 << 20))
            self = .awq(bits: bits, group: group)
        case "gptq":
            let bits = try int(q["bits"], "bits", in: 2...8)
            guard 32 % bits == 0 else { throw bad("GPTQ with \(bits) bits (values straddle int32s) is not supported") }
            let group = q["group_size"]?.intValue ?? -1
            guard group > 0 else { throw bad("GPTQ without groups (group_size \(group)) is not supported") }
            self = .gptq(bits: bits, group: group, actOrder: q["desc_act"]?.boolValue ?? false)
        case "mxfp4":
            self = .mxfp4
        case "compressed-tensors":
            let format = q["format"]?.stringValue ?? ""
            var weights: [JSONValue] = []
            for (_, group) in q["config_groups"]?.objectValue ?? [] {
                if let w = group["weights"], w != JSONValue.null { weights.append(w) }
            }
            guard let w = weights.first, weights.allSatisfy({ $0 == w }) else {
                throw bad(weights.isEmpty ? "no config_groups with weights"
                          : "config_groups quantize weights differently; ShardKit needs one weight scheme")
            }
            let strategy = w["strategy"]?.stringValue ?? ""
            switch format {
            case "pack-quantized":
                guard w["type"]?.stringValue ?? "int" == "int" else { throw bad("pack-quantized needs int weights") }
                let bits = try int(w["num_bits"], "num_bits", in: 2...8)
                guard 32 % bits == 0 else { throw bad("\(bits)-bit packing is not supported") }
                guard ["group", "channel"].contains(strategy) else {
                    throw bad("pack-quantized weight strategy \"\(strategy)\" is not supported (group, channel)")
                }
                let group = strategy == "group" ? try int(w["group_size"], "group_size", in: 1...(1 << 20)) : nil
                self = .packed(bits: bits, group: group, symmetric: w["symmetric"]?.boolValue ?? true)
            case "float-quantized":
                guard ["tensor", "channel", "block"].contains(strategy) else {
                    throw bad("float-quantized weight strategy \"\(strategy)\" is not supported "
                              + "(tensor, channel, block)")
                }
                self = .float(block: strategy == "block" ? try block(w["block_structure"]) : nil)
            default:
                throw bad("compressed-tensors format \"\(format)\" is not supported (pack-quantized, float-quantized)")
            }
        default:
            throw bad("quant_method \"\(method)\" is not supported (fp8, awq, gptq, compressed-tensors, mxfp4)")
        }
    }
}

/// What a tensor of a quantized module is (its name's last component).
public enum QuantizedPart: String, Sendable {
    case weight, qweight, qzeros, scales, gIdx = "g_idx", weightScaleInv = "weight_scale_inv"
    case weightScale = "weight_scale", inputScale = "input_scale", weightPacked = "weight_packed"
    case weightZeroPoint = "weight_zero_point", weightShape = "weight_shape", blocks

    /// The parts a format's modules have; the one that names the module's quantized weight first.
    public static func parts(of format: QuantizationFormat) -> [QuantizedPart] {
        switch format {
        case .fp8, .float: return [.weight, .weightScaleInv, .weightScale, .inputScale]
        case .awq: return [.qweight, .qzeros, .scales]
        case .gptq: return [.qweight, .qzeros, .scales, .gIdx]
        case .packed: return [.weightPacked, .weightScale, .weightZeroPoint, .weightShape]
        case .mxfp4: return [.blocks, .scales]
        }
    }
}

extension QuantizationFormat {
    /// What a rank's share of a split dimension must be a multiple of so that no group or packed
    /// word is cut: lcm(group size, values per int32); 1 for FP8 (block scales are copied instead).
    var alignment: Int {
        func lcm(_ a: Int, _ b: Int) -> Int {
            var (x, y) = (a, b)
            while y != 0 { (x, y) = (y, x % y) }
            return a / x * b
        }
        switch self {
        case .awq(_, let g), .gptq(_, let g, _): return lcm(g, pack)
        case .packed(_, let g, _): return lcm(g ?? 1, pack)
        case .fp8, .float: return 1
        case .mxfp4: return 32
        }
    }

    /// What joins a module's name and its parts' ("q_proj.qweight"; MXFP4: "gate_up_proj_blocks").
    public var separator: String { self == .mxfp4 ? "_" : "." }

    /// The name of a module's unquantized weight, whose rule the module's parts follow.
    public func logicalName(_ module: String) -> String { self == .mxfp4 ? module : module + ".weight" }

    /// Values per int32 of a packed format.
    var pack: Int {
        switch self {
        case .awq(let b, _), .gptq(let b, _, _), .packed(let b, _, _): return 32 / b
        case .fp8, .float, .mxfp4: return 1
        }
    }

    /// The logical [N, K] weight of a module from its quantized weight's stored shape, nil when the
    /// shape cannot be one.
    public func logicalShape(of part: QuantizedPart, shape s: [Int]) -> [Int]? {
        if self == .mxfp4 {
            // [E, N, K/32, 16] → [E, K, N]
            guard part == .blocks, s.count == 4, s[3] == 16 else { return nil }
            return checkedProduct([s[2], 32]).map { [s[0], $0, s[1]] }
        }
        guard s.count == 2 else { return nil }
        switch (self, part) {
        case (.awq, .qweight): return checkedProduct([s[1], pack]).map { [$0, s[0]] }
        case (.gptq, .qweight): return checkedProduct([s[0], pack]).map { [s[1], $0] }
        case (.packed, .weightPacked): return checkedProduct([s[1], pack]).map { [s[0], $0] }
        case (.fp8, .weight), (.float, .weight): return s
        default: return nil
        }
    }

    /// The rule of `part` (of `shape`) of a module whose [N, K] weight `rule` splits; throws naming
    /// `tensor` when the shape is not what the format writes.
    func rule(for part: QuantizedPart, shape: [Int], weight rule: SplitRule, logical nk: [Int],
              tensor: String) throws -> SplitRule {
        if self == .mxfp4 { return try mxfp4Rule(for: part, shape: shape, weight: rule, logical: nk, tensor: tensor) }
        let (n, k) = (nk[0], nk[1])
        let p = pack
        func ceil(_ a: Int, _ b: Int) -> Int { a / b + (a % b == 0 ? 0 : 1) }
        func expect(_ s: [Int], _ what: String) throws {
            guard shape == s else {
                throw ShardKitError(.invalidCheckpoint, "tensor \(tensor): shape \(shape), but \(name) with a "
                                    + "[\(n), \(k)] weight writes \(what) \(s)")
            }
        }
        func units(_ dim: Int, _ size: Int, _ unit: Int, exact: Bool, _ what: String) -> SplitRule {
            .units(dim: dim, UnitSplit(base: rule, size: size, unit: unit, exact: exact, what: what))
        }
        let packing = "\(p) values per int32 (\(name) packing)"
        let d = rule.dim
        if rule != .replicated && d != 0 && d != 1 {
            throw ShardKitError(.impossibleSplit, "tensor \(tensor): a quantized weight split along dim \(d!) "
                                + "(\(rule.summary)); ShardKit splits quantized [out, in] matrices")
        }
        if rule == .replicated || part == .inputScale || part == .weightShape {
            return .replicated
        }
        switch (self, part) {
        case (.awq, .qweight):
            try expect([k, n / p], "qweight [K, N/\(p)]")
            return d == 0 ? units(1, n, p, exact: true, packing) : rule.withDim(0)
        case (.awq(_, let g), .qzeros):
            try expect([ceil(k, g), n / p], "qzeros [K/\(g), N/\(p)]")
            return d == 0 ? units(1, n, p, exact: true, packing) : units(0, k, g, exact: true, "group size \(g) (AWQ)")
        case (.awq(_, let g), .scales):
            try expect([ceil(k, g), n], "scales [K/\(g), N]")
            return d == 0 ? rule.withDim(1) : units(0, k, g, exact: true, "group size \(g) (AWQ)")
        case (.gptq, .qweight):
            try expect([k / p, n], "qweight [K/\(p), N]")
            return d == 0 ? rule.withDim(1) : units(0, k, p, exact: true, packing)
        case (.gptq(_, let g, let actOrder), .qzeros):
            try expect([ceil(k, g), n / p], "qzeros [K/\(g), N/\(p)]")
            if d == 0 { return units(1, n, p, exact: true, packing) }
            return actOrder ? .replicated : units(0, k, g, exact: true, "group size \(g) (\(name))")
        case (.gptq(_, let g, let actOrder), .scales):
            try expect([ceil(k, g), n], "scales [K/\(g), N]")
            if d == 0 { return rule.withDim(1) }
            return actOrder ? .replicated : units(0, k, g, exact: true, "group size \(g) (\(name))")
        case (.gptq, .gIdx):
            try expect([k], "g_idx [K]")
            return d == 0 ? .replicated : rule.withDim(0)
        case (.packed, .weightPacked):
            try expect([n, k / p], "weight_packed [N, K/\(p)]")
            return d == 0 ? rule.withDim(0) : units(1, k, p, exact: true, packing)
        case (.packed(_, let g, _), .weightScale):
            if let g {
                try expect([n, ceil(k, g)], "weight_scale [N, K/\(g)]")
                return d == 0 ? rule.withDim(0) : units(1, k, g, exact: true, "group size \(g) (\(name))")
            }
            try expect([n, 1], "weight_scale [N, 1]")
            return d == 0 ? rule.withDim(0) : .replicated
        case (.packed(_, let g, _), .weightZeroPoint):
            let groups = g.map { ceil(k, $0) } ?? 1
            try expect([ceil(n, p), groups], "weight_zero_point [N/\(p), \(g.map { "K/\($0)" } ?? "1")]")
            if d == 0 { return units(0, n, p, exact: true, packing) }
            return g.map { units(1, k, $0, exact: true, "group size \($0) (\(name))") } ?? .replicated
        case (.fp8, .weight), (.float, .weight):
            try expect([n, k], "weight [N, K]")
            return rule
        case (.fp8(let block), .weightScaleInv), (.fp8(let block), .weightScale),
             (.float(let block), .weightScale), (.float(let block), .weightScaleInv):
            if let block {
                let size = [ceil(n, block[0]), ceil(k, block[1])]
                try expect(size, "\(part.rawValue) per \(block[0])×\(block[1]) block")
                let (logical, unit) = d == 0 ? (n, block[0]) : (k, block[1])
                return units(d!, logical, unit, exact: false, "block size \(unit) (\(name))")
            }
            if shape.isEmpty || shape == [1] || shape == [1, 1] { return .replicated }   // per tensor
            guard shape == [n, 1] || shape == [n] else {
                throw ShardKitError(.invalidCheckpoint, "tensor \(tensor): shape \(shape), but \(name) per-tensor "
                                    + "or per-channel scales are [], [1], [N] or [N, 1] with N = \(n)")
            }
            return d == 0 ? rule.withDim(0) : .replicated
        default:
            throw ShardKitError(.invalidCheckpoint, "tensor \(tensor): \(part.rawValue) is not part of \(name)")
        }
    }
}

extension QuantizationFormat {
    /// MXFP4: `X` [E, K, N] splits its experts (dim 0), K (dim 1) or N (dim 2); `X_blocks`
    /// [E, N, K/32, 16] and `X_scales` [E, N, K/32] follow with N on dim 1 and K on dim 2 in blocks of
    /// 32 values, which must not be cut.
    func mxfp4Rule(for part: QuantizedPart, shape: [Int], weight rule: SplitRule, logical ekn: [Int],
                   tensor: String) throws -> SplitRule {
        let (e, k, n) = (ekn[0], ekn[1], ekn[2])
        let want = part == .blocks ? [e, n, k / 32, 16] : [e, n, k / 32]
        guard shape == want, part == .blocks || part == .scales else {
            throw ShardKitError(.invalidCheckpoint, "tensor \(tensor): shape \(shape), but MXFP4 with a "
                                + "[\(e), \(k), \(n)] tensor writes \(part.rawValue) \(want)")
        }
        switch rule.dim {
        case nil: return .replicated
        case 0?: return rule
        case 1?:
            return .units(dim: 2, UnitSplit(base: rule, size: k, unit: 32, exact: true,
                                            what: "MXFP4 blocks of 32 values"))
        case 2?: return rule.withDim(1)
        default:
            throw ShardKitError(.impossibleSplit, "tensor \(tensor): an MXFP4 tensor split along dim \(rule.dim!)")
        }
    }
}

extension QuantizationFormat {
    /// The quantized modules among `tensors` and the logical shape of each one's weight ([N, K];
    /// MXFP4: [E, K, N]). The same for sharding and for the reference pass. Throws for a quantized
    /// weight whose shape cannot be the format's.
    public func modules(_ tensors: [(name: String, shape: [Int])]) throws -> [String: [Int]] {
        let primary = QuantizedPart.parts(of: self)[0]
        let names = Set(tensors.map(\.name))
        var logical: [String: [Int]] = [:]
        for t in tensors where t.name.hasSuffix(separator + primary.rawValue) {
            let module = String(t.name.dropLast(primary.rawValue.count + separator.count))
            // FP8 models keep some weights unquantized (embeddings, norms, the LM head): only a `weight`
            // with a scale beside it is FP8.
            if primary == .weight && !names.contains(module + ".weight_scale_inv")
                && !names.contains(module + ".weight_scale") {
                continue
            }
            guard let nk = logicalShape(of: primary, shape: t.shape) else {
                throw ShardKitError(.invalidCheckpoint, "tensor \(t.name): shape \(t.shape) cannot be a \(name) "
                                    + "\(primary.rawValue)")
            }
            logical[module] = nk
        }
        return logical
    }
}

extension RuleSet {
    /// The rule of every tensor of a checkpoint quantized with `format` (nil: `assign(_:)`): each
    /// quantized module is matched as its unquantized `M.weight` of shape [N, K], and each of its tensors
    /// gets that rule in its own units. A quantized module whose weight is split as a column or row along
    /// a dimension of one of the sizes `padding` (the MLP intermediate sizes, `--pad-intermediate`) is
    /// padded with zeros so that every rank's share is a whole number of groups and packed words.
    /// Throws for a module whose tensors are not the format's.
    public func assign(_ tensors: [(name: String, shape: [Int])], quantization format: QuantizationFormat?,
                       padding: Set<Int> = []) throws -> [SplitRule] {
        guard let format else { return try assign(tensors) }
        let parts = QuantizedPart.parts(of: format)
        let logical = try format.modules(tensors)
        func split(_ name: String) -> (module: String, part: QuantizedPart)? {
            for part in parts where name.hasSuffix(format.separator + part.rawValue) {
                let module = String(name.dropLast(part.rawValue.count + format.separator.count))
                if logical[module] != nil { return (module, part) }
            }
            return nil
        }
        // The modules' weights take their rules as if unquantized.
        var list: [(name: String, shape: [Int])] = []
        var placed = Set<String>()
        for t in tensors {
            if let (module, _) = split(t.name) {
                if placed.insert(module).inserted { list.append((format.logicalName(module), logical[module]!)) }
            } else {
                list.append(t)
            }
        }
        let assigned = try assign(list)
        var ruleOf: [String: SplitRule] = [:]
        for (t, r) in zip(list, assigned) { ruleOf[t.name] = r }
        let names = Set(tensors.map(\.name))
        for (module, nk) in logical where !padding.isEmpty && format.alignment > 1 {
            let rule = ruleOf[format.logicalName(module)]!
            guard [.column, .row].contains(rule.kind), let d = rule.dim, d < 2, padding.contains(nk[d]) else {
                continue
            }
            if names.contains(module + ".bias") {
                throw ShardKitError(.impossibleSplit, "\(module): cannot pad its \(nk[d]) features with zeros "
                                    + "(--pad-intermediate): it has a bias, whose padding would not be zero")
            }
            ruleOf[format.logicalName(module)] = .padded(rule, multiple: format.alignment)
        }
        return try tensors.map { t in
            guard let (module, part) = split(t.name) else { return ruleOf[t.name]! }
            return try format.rule(for: part, shape: t.shape, weight: ruleOf[format.logicalName(module)]!,
                                   logical: logical[module]!, tensor: t.name)
        }
    }
}
