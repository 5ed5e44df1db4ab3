import ShardKit

/// How checkpoint `a` differs from `b` as tensors: names, dtypes, shapes and bytes (read from each
/// file at the ranges the readers located, decoded where a format compresses them). Empty when `a` holds exactly `b`'s tensors bit for bit,
/// whatever the formats of the two.
public func tensorDifferences(_ a: Checkpoint, _ b: Checkpoint) throws -> [String] {
    let names = Set(a.tensors.map(\.info.name)), otherNames = Set(b.tensors.map(\.info.name))
    var differences = names.symmetricDifference(otherNames).sorted().map { "\($0) is in only one checkpoint" }
    let sourcesA = try CheckpointSources(a), sourcesB = try CheckpointSources(b)
    for (_, info) in a.tensors {
        guard let other = b.tensor(named: info.name) else { continue }
        if info.dtype != other.info.dtype || info.shape != other.info.shape {
            differences.append("\(info.name): \(info.dtype.rawValue) \(info.shape) vs \(other.info.dtype.rawValue) \(other.info.shape)")
            continue
        }
        let x = try sourcesA.bytes(of: info.name), y = try sourcesB.bytes(of: other.info.name)
        if x != y { differences.append("\(info.name): bytes differ") }
    }
    return differences
}
