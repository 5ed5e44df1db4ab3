/// A restricted reader of pickle streams: the opcodes of protocols 2 to 5 that a PyTorch state dict
/// uses, and no code execution. `GLOBAL`/`REDUCE`/`BUILD` are not evaluated: a global becomes a
/// name, and a call is recorded for the caller (`PyTorchFile`) to interpret from a fixed list.
/// Every length is checked against the bytes left before it is used.
struct PickleReader {
    /// A pickled value. Lists and dicts are objects (`PickleList`, `PickleDict`) because pickle mutates
    /// them after creating and memoizing them.
    indirect enum Value {
        case none
        case bool(Bool)
        case int(Int)
        case float(Double)
        case string(String)
        case bytes([UInt8])
        /// Items, and the nesting depth (1 + the deepest item's), kept so that it is never recomputed.
        case tuple([Value], depth: Int)
        case list(PickleList)
        case dict(PickleDict)
        /// `module.name` named by GLOBAL / STACK_GLOBAL (never imported).
        case global(module: String, name: String)
        /// The result of `interpret` for a REDUCE or a persistent id: opaque to the reader.
        case object(AnyObject)

        /// How deeply containers nest inside this value (0 for scalars).
        var depth: Int {
            switch self {
            case .tuple(_, let d): return d
            case .list(let l): return l.depth
            case .dict(let d): return d.depth
            default: return 0
            }
        }

        var typeName: String {
            switch self {
            case .none: return "None"
            case .bool: return "bool"
            case .int: return "int"
            case .float: return "float"
            case .string: return "str"
            case .bytes: return "bytes"
            case .tuple: return "tuple"
            case .list: return "list"
            case .dict: return "dict"
            case .global(let m, let n): return "\(m).\(n)"
            case .object(let o): return "\(type(of: o))"
            }
        }
    }

    /// A list. Once placed inside another value it is sealed: no more items, so that its recorded
    /// depth stays true and no reference cycle can be built.
    final class PickleList {
        var items: [Value] = []
        var depth = 1
        var sealed = false
        init() {}
    }
    /// A dict; sealed like `PickleList`.
    final class PickleDict {
        var items: [(key: Value, value: Value)] = []
        var depth = 1
        var sealed = false
        init() {}
    }

    /// Turns a REDUCE (callable, args) or a persistent id into a value, or throws for anything not allowed.
    struct Interpreter {
        var reduce: (_ callable: Value, _ args: [Value]) throws -> Value
        var persistentLoad: (_ pid: Value) throws -> Value
    }

    /// Most stack entries, memo slots, lists and dicts, and open MARKs (a state dict uses about ten
    /// memo slots per tensor: 2M is 200K tensors), and the deepest nesting of containers (a state
    /// dict nests 3 or 4 deep; values are freed recursively, which deep enough overflows the stack).
    /// Depth is recorded when a value is built and cannot grow later: containers are sealed when
    /// placed in another value.
    static let maxItems = 2_000_000
    static let maxMarks = 1_000_000
    static let maxDepth = 64

    let bytes: [UInt8]
    let what: String
    let interpreter: Interpreter

    /// Runs the stream to STOP and gives the value left on the stack to `use`. Afterwards every list
    /// and dict the stream built (including those `interpreter` made) is emptied, one at a time.
    func load<T>(_ use: (Value) throws -> T) throws -> T {
        var lists: [PickleList] = [], dicts: [PickleDict] = []
        defer {
            for l in lists { l.items = [] }
            for d in dicts { d.items = [] }
        }
        return try use(try run(&lists, &dicts))
    }

    private func run(_ lists: inout [PickleList], _ dicts: inout [PickleDict]) throws -> Value {
        func bad(_ message: String, at position: Int) -> ShardKitError {
            ShardKitError(.invalidPyTorchFile, "\(what): \(message) (byte \(position) of the pickle)")
        }
        var stack: [Value] = []
        var marks: [Int] = []
        var memo: [Int: Value] = [:]
        var p = 0
        let b = bytes

        func need(_ n: Int, _ start: Int) throws {
            guard n >= 0, n <= b.count - p else { throw bad("truncated", at: start) }
        }
        func uint(_ n: Int, _ start: Int) throws -> UInt64 {
            try need(n, start)
            var v: UInt64 = 0
            for i in 0..<n { v |= UInt64(b[p + i]) << (8 * UInt64(i)) }
            p += n
            return v
        }
        func length(_ n: Int, _ start: Int) throws -> Int {
            let v = try uint(n, start)
            guard v <= UInt64(b.count - p) else { throw bad("length \(v) runs past the end of the pickle", at: start) }
            return Int(v)
        }
        func text(_ n: Int, _ start: Int) throws -> String {
            guard let s = String(validating: b[p..<(p + n)], as: UTF8.self) else { throw bad("string is not valid UTF-8", at: start) }
            p += n
            return s
        }
        func line(_ start: Int) throws -> String {
            guard let end = b[p...].firstIndex(of: 0x0A) else { throw bad("unterminated GLOBAL", at: start) }
            guard let s = String(validating: b[p..<end], as: UTF8.self) else { throw bad("GLOBAL name is not valid UTF-8", at: start) }
            p = end + 1
            return s
        }
        func pop(_ start: Int) throws -> Value {
            guard let v = stack.popLast() else { throw bad("stack underflow", at: start) }
            if let m = marks.last, m > stack.count { throw bad("stack underflow past a MARK", at: start) }
            return v
        }
        func popToMark(_ start: Int) throws -> [Value] {
            guard let m = marks.popLast() else { throw bad("no MARK", at: start) }
            let items = Array(stack[m...])
            stack.removeSubrange(m...)
            return items
        }
        func push(_ v: Value, _ start: Int) throws {
            guard stack.count < PickleReader.maxItems else { throw bad("more than \(PickleReader.maxItems) values on the stack", at: start) }
            guard v.depth <= PickleReader.maxDepth else { throw bad("containers nested more than \(PickleReader.maxDepth) deep", at: start) }
            stack.append(v)
        }
        /// Seals the containers among `items`, which are being placed inside another value.
        func seal(_ items: [Value]) {
            for v in items {
                switch v {
                case .list(let l): l.sealed = true
                case .dict(let d): d.sealed = true
                default: break
                }
            }
        }
        func tuple(_ items: [Value], _ start: Int) throws -> Value {
            seal(items)
            return .tuple(items, depth: 1 + (items.map(\.depth).max() ?? 0))
        }
        /// Registers a list or dict (made here or by `interpreter`) for the teardown, within the cap.
        func register(_ v: Value, _ start: Int) throws -> Value {
            switch v {
            case .list(let l): lists.append(l)
            case .dict(let d): dicts.append(d)
            default: return v
            }
            guard lists.count + dicts.count <= PickleReader.maxItems else { throw bad("more than \(PickleReader.maxItems) lists and dicts", at: start) }
            return v
        }
        func deepen(_ depth: inout Int, by items: [Value], into container: AnyObject, sealed: Bool, _ start: Int) throws {
            guard !sealed else { throw bad("a list or dict changed after being placed inside another value", at: start) }
            for v in items {
                switch v {
                case .list(let l) where l === container: throw bad("a list inserted into itself", at: start)
                case .dict(let d) where d === container: throw bad("a dict inserted into itself", at: start)
                default: break
                }
            }
            seal(items)
            for v in items { depth = max(depth, v.depth + 1) }
            guard depth <= PickleReader.maxDepth else { throw bad("containers nested more than \(PickleReader.maxDepth) deep", at: start) }
        }
        func put(_ key: Int, _ start: Int) throws {
            guard let top = stack.last else { throw bad("memoizing an empty stack", at: start) }
            guard memo.count < PickleReader.maxItems || memo[key] != nil else { throw bad("more than \(PickleReader.maxItems) memo entries", at: start) }
            memo[key] = top
        }
        func get(_ key: Int, _ start: Int) throws {
            guard let v = memo[key] else { throw bad("memo key \(key) was never stored", at: start) }
            try push(v, start)
        }
        func setItems(_ pairs: [Value], _ start: Int) throws {
            guard case .dict(let d)? = stack.last else { throw bad("SETITEM(S) on a \(stack.last?.typeName ?? "nothing"), not a dict", at: start) }
            guard pairs.count % 2 == 0 else { throw bad("SETITEMS with an odd number of items", at: start) }
            try deepen(&d.depth, by: pairs, into: d, sealed: d.sealed, start)
            for i in stride(from: 0, to: pairs.count, by: 2) { d.items.append((pairs[i], pairs[i + 1])) }
        }
        func append(_ items: [Value], _ start: Int) throws {
            guard case .list(let l)? = stack.last else { throw bad("APPEND(S) on a \(stack.last?.typeName ?? "nothing"), not a list", at: start) }
            try deepen(&l.depth, by: items, into: l, sealed: l.sealed, start)
            l.items += items
        }

        while true {
            let start = p
            try need(1, start)
            let op = b[p]
            p += 1
            switch op {
            case 0x80: _ = try uint(1, start)                                  // PROTO
            case 0x95: _ = try uint(8, start)                                  // FRAME (ignored: we have all bytes)
            case 0x2E:                                                         // STOP
                guard stack.count == 1, marks.isEmpty else { throw bad("STOP with \(stack.count) values on the stack", at: start) }
                return stack[0]
            case 0x28:                                                         // MARK
                guard marks.count < PickleReader.maxMarks else { throw bad("more than \(PickleReader.maxMarks) open MARKs", at: start) }
                marks.append(stack.count)
            case 0x30: _ = try pop(start)                                      // POP
            case 0x31: _ = try popToMark(start)                                // POP_MARK
            case 0x32: guard let top = stack.last else { throw bad("DUP on an empty stack", at: start) }; try push(top, start)
            case 0x4E: try push(.none, start)                                  // NONE
            case 0x88: try push(.bool(true), start)                            // NEWTRUE
            case 0x89: try push(.bool(false), start)                           // NEWFALSE
            case 0x4B: try push(.int(Int(try uint(1, start))), start)          // BININT1
            case 0x4D: try push(.int(Int(try uint(2, start))), start)          // BININT2
            case 0x4A: try push(.int(Int(Int32(truncatingIfNeeded: try uint(4, start)))), start)  // BININT
            case 0x8A, 0x8B:                                                   // LONG1, LONG4
                let n = try length(op == 0x8A ? 1 : 4, start)
                guard n <= 8 else { throw bad("integer of \(n) bytes is too large", at: start) }
                var v = try uint(n, start)
                if n > 0 && n < 8 && v >> (8 * UInt64(n) - 1) != 0 { v |= ~0 << (8 * UInt64(n)) }   // sign-extend
                try push(.int(Int(Int64(bitPattern: v))), start)
            case 0x47:                                                         // BINFLOAT (big-endian)
                try need(8, start)
                var v: UInt64 = 0
                for i in 0..<8 { v = v << 8 | UInt64(b[p + i]) }
                p += 8
                try push(.float(Double(bitPattern: v)), start)
            case 0x58: let n = try length(4, start); try push(.string(try text(n, start)), start)   // BINUNICODE
            case 0x8C: let n = try length(1, start); try push(.string(try text(n, start)), start)   // SHORT_BINUNICODE
            case 0x8D: let n = try length(8, start); try push(.string(try text(n, start)), start)   // BINUNICODE8
            case 0x43, 0x42, 0x8E:                                             // SHORT_BINBYTES, BINBYTES, BINBYTES8
                let n = try length(op == 0x43 ? 1 : op == 0x42 ? 4 : 8, start)
                try push(.bytes(Array(b[p..<(p + n)])), start)
                p += n
            case 0x7D: try push(try register(.dict(PickleDict()), start), start)   // EMPTY_DICT
            case 0x5D: try push(try register(.list(PickleList()), start), start)   // EMPTY_LIST
            case 0x29: try push(try tuple([], start), start)                   // EMPTY_TUPLE
            case 0x74: try push(try tuple(try popToMark(start), start), start) // TUPLE
            case 0x85: let a = try pop(start); try push(try tuple([a], start), start)   // TUPLE1
            case 0x86: let b2 = try pop(start), a = try pop(start); try push(try tuple([a, b2], start), start)
            case 0x87: let c = try pop(start), b2 = try pop(start), a = try pop(start); try push(try tuple([a, b2, c], start), start)
            case 0x6C:                                                         // LIST
                let items = try popToMark(start)
                try push(try register(.list(PickleList()), start), start)
                try append(items, start)
            case 0x64:                                                         // DICT
                let items = try popToMark(start)
                try push(try register(.dict(PickleDict()), start), start)
                try setItems(items, start)
            case 0x61: let v = try pop(start); try append([v], start)          // APPEND
            case 0x65: let items = try popToMark(start); try append(items, start)   // APPENDS
            case 0x73: let v = try pop(start), k = try pop(start); try setItems([k, v], start)   // SETITEM
            case 0x75: let items = try popToMark(start); try setItems(items, start)   // SETITEMS
            case 0x71: try put(Int(try uint(1, start)), start)                 // BINPUT
            case 0x72: try put(Int(try uint(4, start)), start)                 // LONG_BINPUT
            case 0x94: try put(memo.count, start)                              // MEMOIZE
            case 0x68: try get(Int(try uint(1, start)), start)                 // BINGET
            case 0x6A: try get(Int(try uint(4, start)), start)                 // LONG_BINGET
            case 0x63:                                                         // GLOBAL "module\nname\n"
                let module = try line(start), name = try line(start)
                try push(.global(module: module, name: name), start)
            case 0x93:                                                         // STACK_GLOBAL
                guard case .string(let name) = try pop(start), case .string(let module) = try pop(start) else {
                    throw bad("STACK_GLOBAL needs two strings", at: start)
                }
                try push(.global(module: module, name: name), start)
            case 0x52:                                                         // REDUCE
                let args = try pop(start), callable = try pop(start)
                guard case .tuple(let a, _) = args else { throw bad("REDUCE arguments are a \(args.typeName), not a tuple", at: start) }
                try push(try register(try interpreter.reduce(callable, a), start), start)
            case 0x62:                                                         // BUILD
                // Only state set on a dict (OrderedDict attributes such as `_metadata`) is accepted, and dropped.
                let state = try pop(start)
                guard case .dict? = stack.last else {
                    throw bad("BUILD (setting the state of a \(stack.last?.typeName ?? "nothing") to a \(state.typeName)) is not allowed", at: start)
                }
            case 0x51:                                                         // BINPERSID
                let pid = try pop(start)
                seal([pid])
                try push(try register(try interpreter.persistentLoad(pid), start), start)
            default:
                throw bad(String(format: "opcode 0x%02X is not allowed in a PyTorch state dict", op), at: start)
            }
        }
    }
}
