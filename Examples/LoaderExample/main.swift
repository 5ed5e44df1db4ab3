// A tensor-parallel loader's view of ShardKit: read rank r's tensors, zero-copy, from a shard set;
// then read the same rank's slices straight from the unsharded checkpoint, with no shard step.
// Usage: loader-example SHARD_DIR CHECKPOINT_DIR RANK
import ShardKit

let args = CommandLine.arguments
guard args.count == 4, let rank = Int(args[3]) else {
    print("usage: loader-example SHARD_DIR CHECKPOINT_DIR RANK")
    exit(2)
}

do {
    // 1. From a shard set: open the manifest, map rank r's files, get views.
    let shards = try ShardSet(directory: args[1])
    let view = try shards.rank(rank)
    var bytes = 0
    for name in view.names {
        let t = try view.tensor(name)                 // zero-copy: the view reads the mapped file
        let rule = view.record(name)!.rule            // how the tensor is split, e.g. .heads(dim: 0, heads: 8)
        bytes += t.byteCount
        if name.hasSuffix("layers.0.self_attn.q_proj.weight") {
            print("\(name): \(t.dtype.rawValue) \(t.shape) \(rule.kindName)")
        }
    }
    print("rank \(rank) of \(shards.worldSize): \(view.names.count) tensors, \(bytes) bytes")
    if shards.layout.pp > 1 || shards.layout.ep > 1 {   // pipeline stages / expert parallelism
        let experts = view.experts.keys.sorted().map { "layer \($0): \(view.experts[$0]!)" }
        print("stage \(view.stage), TP rank \(view.tpRank): layers \(view.layers!), experts \(experts)")
    }

    // 2. Straight from the unsharded checkpoint, with the same plan (like safetensors' get_slice).
    let request = LayoutRequest(reproducing: shards.layout)   // TP, stages and expert placement
    let slicer = try RankSlicer(checkpoint: try Checkpoint(path: args[2]), layout: request)
    var same = 0
    for name in view.names {
        let piece = try slicer.piece(name, rank: rank)
        let shard = try view.tensor(name)
        if piece.shape == shard.shape && shard.withUnsafeBytes({ piece.bytes.elementsEqual($0) }) { same += 1 }
    }
    print("\(same) of \(view.names.count) tensors identical to the shard files")
    exit(same == view.names.count ? 0 : 1)
} catch {
    print("error: \(error)")
    exit(1)
}

#if canImport(Glibc)
import Glibc
#endif
