import ArgumentParser
import Foundation
import ShardKit
import Yams

/// Options shared by the commands that read a checkpoint and choose rules.
struct RuleOptions: ParsableArguments {
    @Option(name: .long, help: "Rules file (JSON or YAML) that overrides or replaces the preset (docs/rules.md).")
    var rules: String?
    @OptionGroup var vocab: VocabOptions
    @Flag(name: .long, help: ArgumentHelp("Quantized checkpoints: pad the MLP intermediate size with zero rows and "
        + "columns so that every rank's share is whole groups and packed words (a degree the group size does not "
        + "allow otherwise; docs/quantization.md)."))
    var padIntermediate = false

    func load(for checkpoint: Checkpoint) throws -> RuleSet {
        var set: RuleSet
        if let rules {
            set = try ShardPlan.rules(for: checkpoint, rulesFile: (try RulesLoader.load(path: rules), rules))
        } else {
            set = try ShardPlan.rules(for: checkpoint, rulesFile: nil)
        }
        set.vocabMultiple = try vocab.multiple()
        set.padIntermediate = padIntermediate
        return set
    }
}

/// Vocabulary padding as a serving engine expects it.
struct VocabOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Pad vocab-parallel tensors to a multiple of lcm(N, TP) rows, as an engine "
        + "expects: vLLM 64; Megatron make_vocab_size_divisible_by × TP (128 × TP by default). Default 1: a "
        + "multiple of TP.", valueName: "N"))
    var vocabMultiple: Int = 1

    func multiple() throws -> Int {
        guard vocabMultiple >= 1, vocabMultiple <= 1 << 20 else {
            throw ShardKitError(.invalidArgument, "--vocab-multiple must be 1 to \(1 << 20), got \(vocabMultiple)")
        }
        return vocabMultiple
    }
}

/// Reads a rules file as JSON (the core's strict parser) or YAML (Yams), into a JSONValue.
enum RulesLoader {
    static func load(path: String) throws -> JSONValue {
        let file = try ReadOnlyFile(path: path)
        let bytes = try file.readAll(limit: 16 << 20, what: "a rules file")
        if path.hasSuffix(".json") {
            do { return try JSONValue.parse(bytes) } catch {
                throw bad(path, "not valid JSON: \(error)")
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw bad(path, "not UTF-8 text")
        }
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            // libyaml's message quotes the offending line, which may be megabytes long.
            let message = "\(error)"
            throw bad(path, "not valid YAML: " + (message.count > 500 ? message.prefix(500) + "..." : message))
        }
        guard let node else { throw bad(path, "empty rules file") }
        return try convert(node, path: path)
    }

    /// An error in the rules file at `path`: "<path>: message".
    private static func bad(_ path: String, _ message: String) -> ShardKitError {
        ShardKitError(.invalidRules, "\(path): \(message)")
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
                guard case .scalar(let key) = k else { throw bad(path, "mapping keys must be strings") }
                if members.contains(where: { $0.0 == key.string }) {
                    throw bad(path, "duplicate key \"\(key.string)\"")
                }
                members.append((key.string, try convert(v, path: path)))
            }
            return .object(members)
        case .alias:
            throw bad(path, "YAML aliases are not supported")
        }
    }
}

