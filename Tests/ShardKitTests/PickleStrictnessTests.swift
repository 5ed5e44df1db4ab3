import Foundation
import Testing
import ShardKit

// Globals are checked against the allow-list where GLOBAL / STACK_GLOBAL push them (not only when
// REDUCE calls them), and BUILD is accepted only as torch writes it (an OrderedDict's `_metadata`).
// Each hostile pickle below runs code (or imports a module) under torch.load(weights_only=False).

extension P {
    static let proto4: [UInt8] = [0x80, 4], emptyTuple: [UInt8] = [0x29], pop: [UInt8] = [0x30]
    static let build: [UInt8] = [0x62], stackGlobal: [UInt8] = [0x93], newTrue: [UInt8] = [0x88]
    /// SHORT_BINUNICODE, as protocol 4 writes the strings of STACK_GLOBAL.
    static func shortStr(_ s: String) -> [UInt8] { [0x8C, UInt8(s.utf8.count)] + Array(s.utf8) }
    /// `collections.OrderedDict()`, what a `state_dict()` is.
    static let orderedDict = global("collections", "OrderedDict") + emptyTuple + reduce
    /// `_rebuild_tensor_v2(FloatStorage '0' of 2 elements, 0, (2,), (1,), False, {})` on the stack.
    static let tensor = global("torch._utils", "_rebuild_tensor_v2") + mark
        + mark + str("storage") + global("torch", "FloatStorage") + str("0") + str("cpu") + int(2) + tuple
        + binpersid + int(0) + mark + int(2) + tuple + mark + int(1) + tuple + newFalse + emptyDict + tuple + reduce
    /// `OrderedDict(t=tensor)`, with `inside` run between the item and SETITEMS, left on the stack.
    static func stateDict(inside: [UInt8] = []) -> [UInt8] {
        orderedDict + mark + str("t") + tensor + inside + setitems
    }
}

@Suite("PyTorch pickle: every global checked where it is pushed, BUILD only as torch writes it")
struct PickleStrictnessTests {
    static let record = ("data/0", f32([1, 2]))

    func open(_ pickle: [UInt8], records: [(String, [UInt8])] = [record]) throws -> CheckpointFile {
        try withTempDir { tmp in
            try writeBytes(torchArchive(pickle: pickle, records: records), to: tmp + "/x.bin")
            return try CheckpointFile(path: tmp + "/x.bin")
        }
    }

    /// Expects `pickle` refused, its message holding `words` and naming byte `at` of the pickle.
    func refused(_ pickle: [UInt8], _ words: [String], at position: Int,
                 sourceLocation: SourceLocation = #_sourceLocation) {
        expectShardKitError(caught { _ = try open(pickle) }, .invalidPyTorchFile,
                            words + ["data.pkl", "(byte \(position) of the pickle)"], sourceLocation: sourceLocation)
    }

    @Test("the hand-built state dict reads back, also with BUILD of no state or an empty one")
    func builderIsValid() throws {
        for tail in [[], P.none + P.build, P.emptyDict + P.build] {
            let file = try open(P.proto2 + P.stateDict() + tail + P.stop)
            #expect(file.tensors.map(\.name) == ["t"] && file.tensors[0].shape == [2])
        }
    }

    @Test("GLOBAL os.system pushed and popped, never called, inside a valid state dict is refused")
    func globalPushedThenPopped() {
        let before = P.proto2 + P.orderedDict + P.mark + P.str("t") + P.tensor
        let pickle = P.proto2 + P.stateDict(inside: P.global("os", "system") + P.pop) + P.stop
        refused(pickle, ["GLOBAL names os.system", "does not allow"], at: before.count)
    }

    @Test("STACK_GLOBAL of a name off the allow-list, memoized and never called, is refused")
    func stackGlobalNeverCalled() {
        let before = P.proto4 + P.stateDict() + P.shortStr("builtins") + P.shortStr("exec")
        let pickle = before + P.stackGlobal + P.memoize + P.pop + P.stop
        refused(pickle, ["STACK_GLOBAL names builtins.exec", "does not allow"], at: before.count)
    }

    /// The classic gadget: BUILD {'__setstate__': f} on the OrderedDict stores f as its
    /// `__setstate__`, and the next BUILD calls f(state), here f("echo pwned").
    @Test("BUILD {'__setstate__': global} on the top-level OrderedDict is refused",
          arguments: [("os", "system"), ("collections", "OrderedDict")])
    func setstateGadget(_ module: String, _ name: String) {
        let before = P.proto2 + P.stateDict() + P.emptyDict + P.str("__setstate__")
        let pickle = before + P.global(module, name) + P.setitem + P.build + P.str("echo pwned") + P.build + P.stop
        if module == "os" {
            refused(pickle, ["GLOBAL names os.system"], at: before.count)
        } else {   // an allowed global: refused by the BUILD check itself
            let build = before.count + P.global(module, name).count + P.setitem.count
            refused(pickle, ["BUILD sets __setstate__ on a dict", "only _metadata"], at: build)
        }
    }

    /// The same through a (state, slotstate) tuple: pickle setattr()s the slot state's items.
    @Test("BUILD with a (None, {'__setstate__': global}) slot-state tuple is refused",
          arguments: [("os", "system"), ("collections", "OrderedDict")])
    func slotStateGadget(_ module: String, _ name: String) {
        let before = P.proto2 + P.stateDict() + P.none + P.emptyDict + P.str("__setstate__")
        let pickle = before + P.global(module, name) + P.setitem + P.tuple2 + P.build
            + P.str("echo pwned") + P.build + P.stop
        if module == "os" {
            refused(pickle, ["GLOBAL names os.system"], at: before.count)
        } else {
            let build = before.count + P.global(module, name).count + P.setitem.count + P.tuple2.count
            refused(pickle, ["BUILD with a tuple state is not allowed"], at: build)
        }
    }

    @Test("BUILD whose state dict sets another attribute beside _metadata is refused")
    func metadataWithExtraKey() {
        let before = P.proto2 + P.stateDict() + P.emptyDict + P.mark + P.str("_metadata") + P.orderedDict
            + P.str("x") + P.int(1) + P.setitems
        refused(before + P.build + P.stop, ["BUILD sets x on a dict", "only _metadata"], at: before.count)
    }

    @Test("BUILD with any other state is refused", arguments: [
        (P.str("echo pwned"), "BUILD with a str state"),
        (P.emptyDict + P.int(1) + P.none + P.setitem, "BUILD sets a key of type int on a dict"),
        (P.emptyList, "BUILD with a list state"),
    ])
    func otherStates(_ state: [UInt8], _ words: String) {
        let before = P.proto2 + P.stateDict() + state
        refused(before + P.build + P.stop, [words], at: before.count)
    }

    @Test("BUILD on anything but a dict (here a tensor) is refused, even with no state")
    func buildOnATensor() {
        let before = P.proto2 + P.orderedDict + P.mark + P.str("t") + P.tensor + P.none
        refused(before + P.build + P.setitems + P.stop, ["BUILD (setting the state of a TensorRef to a None)"],
                at: before.count)
    }

    /// data.pkl as torch 2.13 writes it (base64), and the records it names.
    static let torchWritten: [(String, String, [(String, [UInt8])])] = [
        // torch.save(nn.Linear(2, 3).state_dict()) with weight = arange(6).reshape(3, 2), bias = [10, 11, 12]:
        // an OrderedDict with BUILD {'_metadata': OrderedDict({'': {'version': 1}})} at the end.
        ("Linear state_dict, protocol 2", """
            gAJjY29sbGVjdGlvbnMKT3JkZXJlZERpY3QKcQApUnEBKFgGAAAAd2VpZ2h0cQJjdG9yY2guX3V0aWxzCl9yZWJ1aWxkX3Rl
            bnNvcl92MgpxAygoWAcAAABzdG9yYWdlcQRjdG9yY2gKRmxvYXRTdG9yYWdlCnEFWAEAAAAwcQZYAwAAAGNwdXEHSwZ0cQhR
            SwBLA0sChnEJSwJLAYZxColoAClScQt0cQxScQ1YBAAAAGJpYXNxDmgDKChoBGgFWAEAAAAxcQ9oB0sDdHEQUUsASwOFcRFL
            AYVxEoloAClScRN0cRRScRV1fXEWWAkAAABfbWV0YWRhdGFxF2gAKVJxGFgAAAAAcRl9cRpYBwAAAHZlcnNpb25xG0sBc3Nz
            Yi4=
            """, [("data/0", f32([0, 1, 2, 3, 4, 5])), ("data/1", f32([10, 11, 12]))]),
        // The same with pickle_protocol=4: FRAME, SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE.
        ("Linear state_dict, protocol 4", """
            gASV9QAAAAAAAACMC2NvbGxlY3Rpb25zlIwLT3JkZXJlZERpY3SUk5QpUpQojAZ3ZWlnaHSUjAx0b3JjaC5fdXRpbHOUjBJf
            cmVidWlsZF90ZW5zb3JfdjKUk5QoKIwHc3RvcmFnZZSMBXRvcmNolIwMRmxvYXRTdG9yYWdllJOUjAEwlIwDY3B1lEsGdJRR
            SwBLA0sChpRLAksBhpSJaAIpUpR0lFKUjARiaWFzlGgHKChoCGgLjAExlGgNSwN0lFFLAEsDhZRLAYWUiWgCKVKUdJRSlHV9
            lIwJX21ldGFkYXRhlGgCKVKUjACUfZSMB3ZlcnNpb26USwFzc3NiLg==
            """, [("data/0", f32([0, 1, 2, 3, 4, 5])), ("data/1", f32([10, 11, 12]))]),
        // {"f8": float8_e4m3fn [1, -2], "u16": uint16 [7, 8, 9] (both _rebuild_tensor_v3 on a
        // torch.storage.UntypedStorage, dtype torch.float8_e4m3fn / torch.uint16), "p": Parameter([3]),
        // "ps": Parameter([1, 2]) with an attribute (_rebuild_parameter_with_state)}.
        ("v3 dtypes and parameters, protocol 2", """
            gAJ9cQAoWAIAAABmOHEBY3RvcmNoLl91dGlscwpfcmVidWlsZF90ZW5zb3JfdjMKcQIoKFgHAAAAc3RvcmFnZXEDY3RvcmNo
            LnN0b3JhZ2UKVW50eXBlZFN0b3JhZ2UKcQRYAQAAADBxBVgDAAAAY3B1cQZLAnRxB1FLAEsChXEISwGFcQmJY2NvbGxlY3Rp
            b25zCk9yZGVyZWREaWN0CnEKKVJxC2N0b3JjaApmbG9hdDhfZTRtM2ZuCnEMdHENUnEOWAMAAAB1MTZxD2gCKChoA2gEWAEA
            AAAxcRBoBksGdHERUUsASwOFcRJLAYVxE4loCilScRRjdG9yY2gKdWludDE2CnEVdHEWUnEXWAEAAABwcRhjdG9yY2guX3V0
            aWxzCl9yZWJ1aWxkX3BhcmFtZXRlcgpxGWN0b3JjaC5fdXRpbHMKX3JlYnVpbGRfdGVuc29yX3YyCnEaKChoA2N0b3JjaApG
            bG9hdFN0b3JhZ2UKcRtYAQAAADJxHGgGSwF0cR1RSwBLAYVxHksBhXEfiWgKKVJxIHRxIVJxIohoCilScSOHcSRScSVYAgAA
            AHBzcSZjdG9yY2guX3V0aWxzCl9yZWJ1aWxkX3BhcmFtZXRlcl93aXRoX3N0YXRlCnEnKGgaKChoA2gbWAEAAAAzcShoBksC
            dHEpUUsASwKFcSpLAYVxK4loCilScSx0cS1ScS6IaAopUnEvfXEwWAQAAABub3RlcTFYAQAAAHhxMnN0cTNScTR1Lg==
            """, [("data/0", [0x38, 0xC0]), ("data/1", u16([7, 8, 9])), ("data/2", f32([3])),
                  ("data/3", f32([1, 2]))]),
    ]

    @Test("pickles written by torch itself still load (BUILD of _metadata, STACK_GLOBAL, v3 dtypes, parameters)",
          arguments: torchWritten.indices)
    func torchWrittenPicklesLoad(_ i: Int) throws {
        let (label, base64, records) = Self.torchWritten[i]
        let pickle = try #require(Data(base64Encoded: base64, options: .ignoreUnknownCharacters), "\(label)")
        try withTempDir { tmp in
            try writeBytes(torchArchive(pickle: Array(pickle), records: records), to: tmp + "/x.bin")
            let file = try CheckpointFile(path: tmp + "/x.bin")
            let raw = try ReadOnlyFile(path: tmp + "/x.bin")
            let names = file.tensors.map(\.name), dtypes = file.tensors.map(\.dtype)
            let shapes = file.tensors.map(\.shape)
            let bytes = try file.tensors.map { try raw.read(count: $0.byteCount, at: $0.offset) }
            if i < 2 {
                #expect(names == ["weight", "bias"] && dtypes == [.f32, .f32], "\(label)")
                #expect(shapes == [[3, 2], [3]], "\(label)")
            } else {
                #expect(names == ["f8", "u16", "p", "ps"] && dtypes == [.f8e4m3, .u16, .f32, .f32], "\(label)")
                #expect(shapes == [[2], [3], [1], [2]], "\(label)")
            }
            #expect(bytes == records.map { $0.1 }, "\(label)")
        }
    }
}
