/// A Hugging Face multi-file index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`):
/// `{"metadata": {"total_size": N}, "weight_map": {tensor: file}}`. Read for checkpoints, written for
/// rank directories cut into several files.
enum HFIndex {
    static let safetensorsName = "model.safetensors.index.json"
    static let pytorchName = "pytorch_model.bin.index.json"

    /// The distinct file names of an index's weight_map, in first-seen order.
    static func fileNames(_ path: String) throws -> [String] {
        let map = try weightMap(path)
        var names: [String] = []
        var seen = Set<String>()
        for (_, file) in map where seen.insert(file).inserted { names.append(file) }
        guard !names.isEmpty else { throw bad(path, "weight_map is empty") }
        return names
    }

    static func weightMap(_ path: String) throws -> [(String, String)] {
        let file = try ReadOnlyFile(path: path)
        let json: JSONValue
        do {
            json = try JSONValue.parse(try file.readAll(limit: 1 << 30, what: "a safetensors index"))
        } catch let e as JSONParseError {
            throw bad(path, "not valid JSON: \(e)")
        }
        guard let map = json["weight_map"]?.objectValue else {
            throw bad(path, "no \"weight_map\" object")
        }
        var result: [(String, String)] = []
        for (tensor, file) in map {
            guard let f = file.stringValue, !f.contains("/"), !f.hasPrefix(".") else {
                throw bad(path, "weight_map entry for \(tensor) is not a plain file name")
            }
            result.append((tensor, f))
        }
        return result
    }

    static func checkAgrees(_ path: String, files: [CheckpointFile]) throws {
        var actual: [String: String] = [:]
        for f in files { for t in f.tensors { actual[t.name] = Path.name(f.path) } }
        let map = try weightMap(path)
        for (tensor, file) in map where actual[tensor] != file {
            throw bad(path, "says \(tensor) is in \(file), but it is not there")
        }
        if map.count != actual.count {
            let listed = Set(map.map { $0.0 })
            let extra = actual.keys.sorted().first { !listed.contains($0) } ?? "?"
            throw bad(path, "tensor \(extra) is in \(actual[extra] ?? "?") but not in the index")
        }
    }

    /// The index of files holding `weightMap` (tensor → file name), names sorted.
    static func serialized(weightMap: [(tensor: String, file: String)], totalSize: Int) -> [UInt8] {
        let json = JSONValue.object([
            ("metadata", .object([("total_size", .int(totalSize))])),
            ("weight_map", .object(weightMap.sorted { $0.tensor < $1.tensor }.map { ($0.tensor, .string($0.file)) })),
        ])
        return Array(json.serialized.utf8)
    }

    private static func bad(_ path: String, _ message: String) -> ShardKitError {
        ShardKitError(.invalidCheckpoint, "\(path): \(message)")
    }
}
