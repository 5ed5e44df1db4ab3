import ShardKit

/// How checkpoint `a` differs from `b` as tensors: names, dtypes, shapes and bytes (read from each
/// file at the ranges the readers located). Empty when `a` holds exactly `b`'s tensors bit for bit,
/// whatever the formats of the two.
public func tensorDifferences(_ a: Checkpoint, _ b: Checkpoint) throws -> [String] {
    let names = Set(a.tensors.map(\.info.name)), otherNames = Set(b.tensors.map(\.info.name))
    var differences = names.symmetricDifference(otherNames).sorted().map { "\($0) is in only one checkpoint" }
    for (file, info) in a.tensors {
        guard let other = b.tensor(named: info.name) else { continue }
        if info.dtype != other.info.dtype || info.shape != other.info.shape {
            differences.append("\(info.name): \(info.dtype.rawValue) \(info.shape) vs \(other.info.dtype.rawValue) \(other.info.shape)")
            continue
        }
        let x = try ReadOnlyFile(path: a.files[file].path).read(count: info.byteCount, at: info.offset)
        let y = try ReadOnlyFile(path: b.files[other.file].path).read(count: other.info.byteCount, at: other.info.offset)
        if x != y { differences.append("\(info.name): bytes differ") }
    }
    return differences
}
