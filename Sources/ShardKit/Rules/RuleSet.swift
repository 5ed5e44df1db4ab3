/// An ordered list of (pattern, rule): the first pattern that matches a tensor name decides its rule.
public struct RuleSet: Sendable {
    public struct Entry: Sendable {
        public var pattern: NamePattern
        public var rule: RuleSpec
        /// A required entry that matches no tensor is an error (user rules are required; preset entries
        /// for optional tensors such as biases are not).
        public var required: Bool
        /// Where the entry came from, for messages ("preset llama", "rules.yaml entry 3").
        public var origin: String

        public init(_ pattern: NamePattern, _ rule: RuleSpec, required: Bool, origin: String) {
            self.pattern = pattern
            self.rule = rule
            self.required = required
            self.origin = origin
        }
    }

    public var entries: [Entry]
    /// A name for reports: the preset, "rules file", or both.
    public var name: String
    /// The preset of the checkpoint's model type, when these rules are the user's: where it splits a
    /// tensor by heads, a user rule for that tensor must not cut a head (`ShardPlan` checks).
    public var headReference: [Entry] = []
    /// Vocabulary padding: vocab rules pad to multiples of lcm(this, G) (`SplitRule.vocab`).
    public var vocabMultiple = 1
    /// Pad quantized MLP intermediate sizes so that every rank's share is whole groups and packed
    /// words (`SplitRule.padded`, `--pad-intermediate`).
    public var padIntermediate = false
    /// True for a rule set derived from transformers' tensor-parallel plan (`DerivedRules`), not a preset.
    public var derived = false

    public init(name: String, entries: [Entry]) {
        self.name = name
        self.entries = entries
    }

    /// `self`'s entries first, then `fallback`'s.
    public func overriding(_ fallback: RuleSet) -> RuleSet {
        var merged = RuleSet(name: "\(name) + \(fallback.name)", entries: entries + fallback.entries)
        merged.headReference = headReference.isEmpty ? fallback.headReference : headReference
        merged.vocabMultiple = vocabMultiple
        merged.padIntermediate = padIntermediate
        return merged
    }

    /// For each tensor whose head-splitting rule in `headReference` the chosen rule replaced, that
    /// reference rule (nil for the others): what `ShardPlan` checks the user's split against.
    public func headSplits(_ tensors: [(name: String, shape: [Int])], chosen: [SplitRule]) -> [SplitRule?] {
        guard !headReference.isEmpty else { return tensors.map { _ in nil } }
        return zip(tensors, chosen).map { t, rule in
            guard let entry = headReference.first(where: { $0.pattern.matches(t.name) }),
                  let reference = try? entry.rule.resolve(shape: t.shape, tensor: t.name),
                  reference != rule, reference.splitsHeads else { return nil }
            return reference
        }
    }

    /// The rule of every tensor, in order. Throws naming the first tensor no rule covers, or the first
    /// required pattern that matched nothing.
    public func assign(_ tensors: [(name: String, shape: [Int])]) throws -> [SplitRule] {
        var used = [Bool](repeating: false, count: entries.count)
        var rules: [SplitRule] = []
        rules.reserveCapacity(tensors.count)
        for t in tensors {
            guard let i = entries.firstIndex(where: { $0.pattern.matches(t.name) }) else {
                let nearest = nearestPatterns(to: t.name).map { "\"\($0)\"" }.joined(separator: ", ")
                throw ShardKitError(.unmatchedRule, "tensor \(t.name) (shape \(t.shape)) matches no rule of \(name)"
                                    + (nearest.isEmpty ? "" : "; nearest patterns: \(nearest)"), remedy: .rules)
            }
            used[i] = true
            // A later required entry that also matches is satisfied: the earlier one overrides it for
            // this tensor (a rules file's entry replacing a preset's), it was not left unused.
            for j in (i + 1)..<entries.count
            where entries[j].required && !used[j] && entries[j].pattern.matches(t.name) {
                used[j] = true
            }
            rules.append(try entries[i].rule.resolve(shape: t.shape, tensor: t.name).withVocabMultiple(vocabMultiple))
        }
        if let unused = entries.indices.first(where: { entries[$0].required && !used[$0] }) {
            let e = entries[unused]
            let preset = e.origin.hasPrefix("preset") || e.origin.hasPrefix("derived")
            throw ShardKitError(.unmatchedRule, preset
                ? "\(e.origin): no tensor matches \"\(e.pattern)\"; is config.json's model_type right?"
                : "\(e.origin): pattern \"\(e.pattern)\" matches no tensor", remedy: preset ? .rules : nil)
        }
        return rules
    }

    /// Up to three patterns whose text is closest to `name` (edit distance), for "matches no rule".
    func nearestPatterns(to name: String) -> [String] {
        let texts = Array(Set(entries.map(\.pattern.description)))
        let target = Array(name.utf8.prefix(512))
        let scored = texts.map { (text: $0, distance: RuleSet.editDistance(Array($0.utf8.prefix(512)), target)) }
        return scored.sorted { ($0.distance, $0.text) < ($1.distance, $1.text) }.prefix(3).map(\.text)
    }

    /// Levenshtein distance (names and patterns are cut to 512 bytes, so this stays cheap).
    static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a.isEmpty { return b.count }
        var previous = Array(0...b.count), current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
