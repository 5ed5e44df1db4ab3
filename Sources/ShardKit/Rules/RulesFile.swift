/// A user rules file (docs/rules.md), already decoded from JSON or YAML into a `JSONValue`:
///
///     {"extends": "llama" | "auto" (optional),
///      "rules": [{"pattern": "...", "rule": "heads", "dim": 0, "heads": 32 | "num_attention_heads",
///                 "parts": [{"rule": "kv_heads", "heads": 8, "size": 1024}, ...]}, ...]}
///
/// Every entry is required to match at least one tensor. Integers may be given as config.json keys.
public enum RulesFile {
    /// Builds the rule set; when the file `extends` a preset, its rules come first and override it.
    public static func ruleSet(from json: JSONValue, origin: String, config: ModelConfig?) throws -> RuleSet {
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidRules, "\(origin): \(message)") }
        guard let top = json.objectValue else { throw bad("expected an object with a \"rules\" list") }
        for (k, _) in top where !["extends", "rules", "description"].contains(k) {
            throw bad("unknown key \"\(k)\" (expected extends, rules, description)")
        }
        guard let list = json["rules"]?.arrayValue, !list.isEmpty else {
            throw bad("\"rules\" must be a non-empty list")
        }

        func integer(_ value: JSONValue?, _ what: String, entry: Int) throws -> Int? {
            guard let value else { return nil }
            if let i = value.intValue, case .int = value { return i }
            if let key = value.stringValue {
                guard let config else {
                    throw bad("entry \(entry): \(what) names config key \"\(key)\" but there is no config.json")
                }
                guard let v = config.int(key) else {
                    throw bad("entry \(entry): \(what): config.json has no integer \"\(key)\"")
                }
                return v
            }
            throw bad("entry \(entry): \(what) must be an integer or a config.json key")
        }

        var entries: [RuleSet.Entry] = []
        for (i, item) in list.enumerated() {
            let n = i + 1
            guard let fields = item.objectValue else { throw bad("entry \(n) is not an object") }
            for (k, _) in fields where !["pattern", "rule", "dim", "heads", "parts"].contains(k) {
                throw bad("entry \(n): unknown key \"\(k)\"")
            }
            guard let patternText = item["pattern"]?.stringValue, !patternText.isEmpty else {
                throw bad("entry \(n) has no \"pattern\"")
            }
            let pattern: NamePattern
            do {
                pattern = try NamePattern(patternText)
            } catch let e as ShardKitError {
                throw bad("entry \(n): \(e.message)")
            }
            guard let kindName = item["rule"]?.stringValue else {
                throw bad("entry \(n) (\(patternText)) has no \"rule\"")
            }
            guard let kind = RuleSpec.Kind(rawValue: kindName) else {
                let names = RuleSpec.Kind.allCases.map(\.rawValue).joined(separator: ", ")
                throw bad("entry \(n): unknown rule \"\(kindName)\" (expected \(names))")
            }
            let dim = try integer(item["dim"], "dim", entry: n) ?? 0
            guard dim >= 0 else { throw bad("entry \(n): dim must be non-negative") }
            let heads = try integer(item["heads"], "heads", entry: n)
            if kind.needsHeads {
                guard let h = heads, h > 0 else {
                    throw bad("entry \(n) (\(patternText)): rule \(kindName) needs \"heads\" > 0")
                }
            }
            var parts: [RuleSpec.Part] = []
            if kind == .fused {
                guard let ps = item["parts"]?.arrayValue, !ps.isEmpty else {
                    throw bad("entry \(n): fused rule needs a non-empty \"parts\" list")
                }
                for (j, p) in ps.enumerated() {
                    guard let pfields = p.objectValue, let pk = p["rule"]?.stringValue else {
                        throw bad("entry \(n) part \(j + 1) has no \"rule\"")
                    }
                    for (k, _) in pfields where !["rule", "heads", "size"].contains(k) {
                        throw bad("entry \(n) part \(j + 1): unknown key \"\(k)\" (expected rule, heads, size)")
                    }
                    let ph = try integer(p["heads"], "part \(j + 1) heads", entry: n)
                    let size = try integer(p["size"], "part \(j + 1) size", entry: n)
                    if let size, size <= 0 { throw bad("entry \(n) part \(j + 1): size must be positive") }
                    // "column" is accepted for an evenly split part, as the rule of that name splits.
                    guard let partKind = pk == "column" ? .even : FusedPart.Split.Kind(rawValue: pk) else {
                        let names = FusedPart.Split.Kind.allCases.map(\.rawValue).joined(separator: ", ")
                        throw bad("entry \(n) part \(j + 1): unknown part rule \"\(pk)\" (expected \(names))")
                    }
                    guard let split = FusedPart.Split(kind: partKind, heads: ph) else {
                        throw bad("entry \(n) part \(j + 1): \(pk) needs \"heads\" > 0")
                    }
                    parts.append(.init(split, size: size))
                }
            } else if item["parts"] != nil {
                throw bad("entry \(n): \"parts\" only applies to fused rules")
            }
            entries.append(.init(pattern, RuleSpec(kind, dim: dim, heads: heads, parts: parts), required: true,
                                 origin: "\(origin) entry \(n)"))
        }
        var own = RuleSet(name: origin, entries: entries)
        // The preset (or derived rule set) of the checkpoint's own model type, if any, guards its head splits.
        if let config, let type = config.modelType,
           Architectures.named(type) != nil || DerivedRules.modelTypes.contains(type),
           let preset = try? Architectures.rules(for: config) {
            own.headReference = preset.entries
        }
        guard let base = json["extends"] else { return own }
        guard let baseName = base.stringValue else { throw bad("\"extends\" must be a model type or \"auto\"") }
        guard let config else { throw bad("\"extends\": \(baseName) needs config.json") }
        let presetConfig: ModelConfig
        if baseName == "auto" {
            presetConfig = config
        } else {
            guard Architectures.modelTypes.contains(baseName) || DerivedRules.modelTypes.contains(baseName) else {
                let presets = Architectures.modelTypes.joined(separator: ", ")
                throw bad("\"extends\": unknown preset \"\(baseName)\" (presets: \(presets); or a model type "
                          + "with a derived rule set, docs/rules.md)")
            }
            var members = config.json.objectValue ?? []
            members.removeAll { $0.0 == "model_type" }
            members.append(("model_type", .string(baseName)))
            presetConfig = ModelConfig(json: .object(members), path: config.path)
        }
        // The preset is the base the user chose: its entries need not all match (a model without
        // gate_proj may extend llama). Every tensor must still match some rule.
        var preset = try Architectures.rules(for: presetConfig)
        for i in preset.entries.indices { preset.entries[i].required = false }
        return own.overriding(preset)
    }
}
