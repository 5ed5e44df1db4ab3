/// A restricted reader of pickle streams: the opcodes of protocols 2 to 5 that a PyTorch state dict
/// uses, and no code execution. `GLOBAL`/`REDUCE`/`BUILD` are not evaluated: a global becomes a
/// name, and a call is recorded for the caller (`PyTorchFile`) to interpret from a fixed list.
/// The caller also says which globals may be named at all (`Interpreter.globals`): any other is
/// refused where GLOBAL / STACK_GLOBAL pushes it, whether or not it is ever called; and which
/// attributes BUILD may set on a dict (`Interpreter.dictAttributes`): any other state is refused.
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
        /// `module.name` named by GLOBAL / STACK_GLOBAL (never imported), one of `Interpreter.globals`.
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

    /// A global as GLOBAL / STACK_GLOBAL name it: `module.name`.
    struct Global: Hashable {
        var module: String
        var name: String
    }

    /// What the caller allows: the globals the stream may name, the state BUILD may set, and how a
    /// REDUCE (callable, args) or a persistent id becomes a value (or is refused, by throwing).
    struct Interpreter {
        /// The only globals GLOBAL / STACK_GLOBAL may push; any other is refused at once, naming it.
        var globals: Set<Global>
        /// The only attributes BUILD may set on a dict (its state: None, or a dict with only these
        /// string keys); the state is then dropped. BUILD on anything else is refused.
        var dictAttributes: Set<String>
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
        var machine = PickleMachine(self)
        defer { machine.tearDown() }
        return try use(try machine.run())
    }

    /// The opcodes read (pickletools' names in the comments); any other byte is refused.
    enum Opcode: UInt8 {
        // Framing
        case proto = 0x80               // PROTO
        case frame = 0x95               // FRAME
        case stop = 0x2E                // STOP
        // Stack and MARKs
        case mark = 0x28                // MARK
        case pop = 0x30                 // POP
        case popMark = 0x31             // POP_MARK
        case dup = 0x32                 // DUP
        // Scalars
        case none = 0x4E                // NONE
        case newTrue = 0x88             // NEWTRUE
        case newFalse = 0x89            // NEWFALSE
        case binInt1 = 0x4B             // BININT1
        case binInt2 = 0x4D             // BININT2
        case binInt = 0x4A              // BININT
        case long1 = 0x8A               // LONG1
        case long4 = 0x8B               // LONG4
        case binFloat = 0x47            // BINFLOAT
        case binUnicode = 0x58          // BINUNICODE
        case shortBinUnicode = 0x8C     // SHORT_BINUNICODE
        case binUnicode8 = 0x8D         // BINUNICODE8
        case shortBinBytes = 0x43       // SHORT_BINBYTES
        case binBytes = 0x42            // BINBYTES
        case binBytes8 = 0x8E           // BINBYTES8
        // Containers
        case emptyDict = 0x7D           // EMPTY_DICT
        case emptyList = 0x5D           // EMPTY_LIST
        case emptyTuple = 0x29          // EMPTY_TUPLE
        case tuple = 0x74               // TUPLE
        case tuple1 = 0x85              // TUPLE1
        case tuple2 = 0x86              // TUPLE2
        case tuple3 = 0x87              // TUPLE3
        case list = 0x6C                // LIST
        case dict = 0x64                // DICT
        case append = 0x61              // APPEND
        case appends = 0x65             // APPENDS
        case setItem = 0x73             // SETITEM
        case setItems = 0x75            // SETITEMS
        // Memo
        case binPut = 0x71              // BINPUT
        case longBinPut = 0x72          // LONG_BINPUT
        case memoize = 0x94             // MEMOIZE
        case binGet = 0x68              // BINGET
        case longBinGet = 0x6A          // LONG_BINGET
        // Globals, calls, state, persistent ids
        case global = 0x63              // GLOBAL
        case stackGlobal = 0x93         // STACK_GLOBAL
        case reduce = 0x52              // REDUCE
        case build = 0x62               // BUILD
        case binPersId = 0x51           // BINPERSID
    }
}

/// One run of a `PickleReader` stream: the read position, the stack, the open MARKs, the memo, and
/// every list and dict made (for the teardown).
private struct PickleMachine {
    typealias Value = PickleReader.Value
    typealias Opcode = PickleReader.Opcode

    let b: [UInt8]
    let what: String
    let interpreter: PickleReader.Interpreter
    var p = 0
    var stack: [Value] = []
    /// The stack height at each open MARK.
    var marks: [Int] = []
    var memo: [Int: Value] = [:]
    var lists: [PickleReader.PickleList] = []
    var dicts: [PickleReader.PickleDict] = []

    init(_ reader: PickleReader) {
        b = reader.bytes
        what = reader.what
        interpreter = reader.interpreter
    }

    func bad(_ message: String, at position: Int) -> ShardKitError {
        ShardKitError(.invalidPyTorchFile, "\(what): \(message) (byte \(position) of the pickle)")
    }

    /// Empties every list and dict made, one at a time (values are freed recursively otherwise).
    func tearDown() {
        for l in lists { l.items = [] }
        for d in dicts { d.items = [] }
    }

    /// Runs the stream to STOP and returns the value left on the stack.
    mutating func run() throws -> Value {
        while true {
            let start = p
            try need(1, start)
            let byte = b[p]
            p += 1
            guard let op = Opcode(rawValue: byte) else {
                throw bad(String(format: "opcode 0x%02X is not allowed in a PyTorch state dict", byte), at: start)
            }
            if let result = try execute(op, at: start) { return result }
        }
    }

    /// Runs one opcode (its operands follow at `p`); the stream's value when `op` is STOP.
    ///
    /// Each step is a statement of its own: a method call evaluates `self` before its arguments, so
    /// a non-mutating call whose argument mutates (`setItems(popToMark())`) would see the old stack.
    mutating func execute(_ op: Opcode, at start: Int) throws -> Value? {
        switch op {
        case .proto: _ = try uint(1, start)
        case .frame: _ = try uint(8, start)                       // ignored: we have all bytes
        case .stop: return try stop(start)
        case .mark: try mark(start)
        case .pop: _ = try pop(start)
        case .popMark: _ = try popToMark(start)
        case .dup: try dup(start)

        case .none: try push(.none, start)
        case .newTrue: try push(.bool(true), start)
        case .newFalse: try push(.bool(false), start)
        case .binInt1:
            let v = try uint(1, start)
            try push(.int(Int(v)), start)
        case .binInt2:
            let v = try uint(2, start)
            try push(.int(Int(v)), start)
        case .binInt:
            let v = try uint(4, start)
            try push(.int(Int(Int32(truncatingIfNeeded: v))), start)
        case .long1:
            let v = try long(lengthBytes: 1, start)
            try push(v, start)
        case .long4:
            let v = try long(lengthBytes: 4, start)
            try push(v, start)
        case .binFloat:
            let v = try binFloat(start)
            try push(v, start)
        case .shortBinUnicode:
            let v = try string(lengthBytes: 1, start)
            try push(v, start)
        case .binUnicode:
            let v = try string(lengthBytes: 4, start)
            try push(v, start)
        case .binUnicode8:
            let v = try string(lengthBytes: 8, start)
            try push(v, start)
        case .shortBinBytes:
            let v = try bytes(lengthBytes: 1, start)
            try push(v, start)
        case .binBytes:
            let v = try bytes(lengthBytes: 4, start)
            try push(v, start)
        case .binBytes8:
            let v = try bytes(lengthBytes: 8, start)
            try push(v, start)

        case .emptyDict: try pushNew(.dict(PickleReader.PickleDict()), start)
        case .emptyList: try pushNew(.list(PickleReader.PickleList()), start)
        case .emptyTuple: try push(tuple([]), start)
        case .tuple:
            let items = try popToMark(start)
            try push(tuple(items), start)
        case .tuple1:
            let a = try pop(start)
            try push(tuple([a]), start)
        case .tuple2:
            let b2 = try pop(start), a = try pop(start)
            try push(tuple([a, b2]), start)
        case .tuple3:
            let c = try pop(start), b2 = try pop(start), a = try pop(start)
            try push(tuple([a, b2, c]), start)
        case .list:
            let items = try popToMark(start)
            try pushNew(.list(PickleReader.PickleList()), start)
            try append(items, start)
        case .dict:
            let items = try popToMark(start)
            try pushNew(.dict(PickleReader.PickleDict()), start)
            try setItems(items, start)
        case .append:
            let v = try pop(start)
            try append([v], start)
        case .appends:
            let items = try popToMark(start)
            try append(items, start)
        case .setItem:
            let v = try pop(start), k = try pop(start)
            try setItems([k, v], start)
        case .setItems:
            let items = try popToMark(start)
            try setItems(items, start)

        case .binPut:
            let key = try uint(1, start)
            try put(Int(key), start)
        case .longBinPut:
            let key = try uint(4, start)
            try put(Int(key), start)
        case .memoize: try put(memo.count, start)
        case .binGet:
            let key = try uint(1, start)
            try get(Int(key), start)
        case .longBinGet:
            let key = try uint(4, start)
            try get(Int(key), start)

        case .global: try global(start)
        case .stackGlobal: try stackGlobal(start)
        case .reduce: try reduce(start)
        case .build: try build(start)
        case .binPersId: try persistentLoad(start)
        }
        return nil
    }

    // MARK: Operands

    func need(_ n: Int, _ start: Int) throws {
        guard n >= 0, n <= b.count - p else { throw bad("truncated", at: start) }
    }
    /// An unsigned little-endian integer of `n` bytes.
    mutating func uint(_ n: Int, _ start: Int) throws -> UInt64 {
        try need(n, start)
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(b[p + i]) << (8 * UInt64(i)) }
        p += n
        return v
    }
    /// A length of `n` bytes, checked against the bytes left after it.
    mutating func length(_ n: Int, _ start: Int) throws -> Int {
        let v = try uint(n, start)
        guard v <= UInt64(b.count - p) else {
            throw bad("length \(v) runs past the end of the pickle", at: start)
        }
        return Int(v)
    }
    mutating func text(_ n: Int, _ start: Int) throws -> String {
        guard let s = String(validating: b[p..<(p + n)], as: UTF8.self) else {
            throw bad("string is not valid UTF-8", at: start)
        }
        p += n
        return s
    }
    /// A GLOBAL operand: UTF-8 up to a newline.
    mutating func line(_ start: Int) throws -> String {
        guard let end = b[p...].firstIndex(of: 0x0A) else { throw bad("unterminated GLOBAL", at: start) }
        guard let s = String(validating: b[p..<end], as: UTF8.self) else {
            throw bad("GLOBAL name is not valid UTF-8", at: start)
        }
        p = end + 1
        return s
    }
    /// LONG1 / LONG4: a little-endian two's-complement integer of at most 8 bytes.
    mutating func long(lengthBytes: Int, _ start: Int) throws -> Value {
        let n = try length(lengthBytes, start)
        guard n <= 8 else { throw bad("integer of \(n) bytes is too large", at: start) }
        var v = try uint(n, start)
        if n > 0 && n < 8 && v >> (8 * UInt64(n) - 1) != 0 { v |= ~0 << (8 * UInt64(n)) }   // sign-extend
        return .int(Int(Int64(bitPattern: v)))
    }
    /// BINFLOAT: a big-endian double.
    mutating func binFloat(_ start: Int) throws -> Value {
        try need(8, start)
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(b[p + i]) }
        p += 8
        return .float(Double(bitPattern: v))
    }
    mutating func string(lengthBytes: Int, _ start: Int) throws -> Value {
        let n = try length(lengthBytes, start)
        return .string(try text(n, start))
    }
    mutating func bytes(lengthBytes: Int, _ start: Int) throws -> Value {
        let n = try length(lengthBytes, start)
        defer { p += n }
        return .bytes(Array(b[p..<(p + n)]))
    }

    // MARK: Stack, MARKs and memo

    mutating func pop(_ start: Int) throws -> Value {
        guard let v = stack.popLast() else { throw bad("stack underflow", at: start) }
        if let m = marks.last, m > stack.count { throw bad("stack underflow past a MARK", at: start) }
        return v
    }
    mutating func popToMark(_ start: Int) throws -> [Value] {
        guard let m = marks.popLast() else { throw bad("no MARK", at: start) }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }
    mutating func push(_ v: Value, _ start: Int) throws {
        guard stack.count < PickleReader.maxItems else {
            throw bad("more than \(PickleReader.maxItems) values on the stack", at: start)
        }
        guard v.depth <= PickleReader.maxDepth else {
            throw bad("containers nested more than \(PickleReader.maxDepth) deep", at: start)
        }
        stack.append(v)
    }
    mutating func mark(_ start: Int) throws {
        guard marks.count < PickleReader.maxMarks else {
            throw bad("more than \(PickleReader.maxMarks) open MARKs", at: start)
        }
        marks.append(stack.count)
    }
    mutating func dup(_ start: Int) throws {
        guard let top = stack.last else { throw bad("DUP on an empty stack", at: start) }
        try push(top, start)
    }
    func stop(_ start: Int) throws -> Value {
        guard stack.count == 1, marks.isEmpty else {
            throw bad("STOP with \(stack.count) values on the stack", at: start)
        }
        return stack[0]
    }
    mutating func put(_ key: Int, _ start: Int) throws {
        guard let top = stack.last else { throw bad("memoizing an empty stack", at: start) }
        guard memo.count < PickleReader.maxItems || memo[key] != nil else {
            throw bad("more than \(PickleReader.maxItems) memo entries", at: start)
        }
        memo[key] = top
    }
    mutating func get(_ key: Int, _ start: Int) throws {
        guard let v = memo[key] else { throw bad("memo key \(key) was never stored", at: start) }
        try push(v, start)
    }

    // MARK: Containers

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
    func tuple(_ items: [Value]) -> Value {
        seal(items)
        return .tuple(items, depth: 1 + (items.map(\.depth).max() ?? 0))
    }
    /// Pushes a value made here or by `interpreter`, registering a list or dict for the teardown,
    /// within the cap.
    mutating func pushNew(_ v: Value, _ start: Int) throws {
        switch v {
        case .list(let l): lists.append(l)
        case .dict(let d): dicts.append(d)
        default: break
        }
        guard lists.count + dicts.count <= PickleReader.maxItems else {
            throw bad("more than \(PickleReader.maxItems) lists and dicts", at: start)
        }
        try push(v, start)
    }
    /// Checks that `items` may go into `container` (not sealed, not itself), seals them and raises
    /// the container's depth, within the cap.
    func deepen(_ depth: inout Int, by items: [Value], into container: AnyObject, sealed: Bool,
                _ start: Int) throws {
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
        guard depth <= PickleReader.maxDepth else {
            throw bad("containers nested more than \(PickleReader.maxDepth) deep", at: start)
        }
    }
    func setItems(_ pairs: [Value], _ start: Int) throws {
        guard case .dict(let d)? = stack.last else {
            throw bad("SETITEM(S) on a \(stack.last?.typeName ?? "nothing"), not a dict", at: start)
        }
        guard pairs.count % 2 == 0 else { throw bad("SETITEMS with an odd number of items", at: start) }
        try deepen(&d.depth, by: pairs, into: d, sealed: d.sealed, start)
        for i in stride(from: 0, to: pairs.count, by: 2) { d.items.append((pairs[i], pairs[i + 1])) }
    }
    func append(_ items: [Value], _ start: Int) throws {
        guard case .list(let l)? = stack.last else {
            throw bad("APPEND(S) on a \(stack.last?.typeName ?? "nothing"), not a list", at: start)
        }
        try deepen(&l.depth, by: items, into: l, sealed: l.sealed, start)
        l.items += items
    }

    // MARK: Globals, calls, state and persistent ids

    /// GLOBAL "module\nname\n".
    mutating func global(_ start: Int) throws {
        let module = try line(start), name = try line(start)
        try pushGlobal(module, name, "GLOBAL", start)
    }
    /// STACK_GLOBAL: module and name are the two strings on top of the stack.
    mutating func stackGlobal(_ start: Int) throws {
        guard case .string(let name) = try pop(start), case .string(let module) = try pop(start) else {
            throw bad("STACK_GLOBAL needs two strings", at: start)
        }
        try pushGlobal(module, name, "STACK_GLOBAL", start)
    }
    /// Pushes a global the caller allows, and refuses any other where it appears: a global need not
    /// be called to run code (an unpickler imports its module, and BUILD can install it as a
    /// `__setstate__`), so being pushed is enough.
    mutating func pushGlobal(_ module: String, _ name: String, _ opcode: String, _ start: Int) throws {
        guard interpreter.globals.contains(PickleReader.Global(module: module, name: name)) else {
            throw bad("\(opcode) names \(module).\(name), which ShardKit does not allow "
                      + "(nothing in the pickle is imported or run)", at: start)
        }
        try push(.global(module: module, name: name), start)
    }
    /// REDUCE: the interpreter decides what the call gives.
    mutating func reduce(_ start: Int) throws {
        let args = try pop(start), callable = try pop(start)
        guard case .tuple(let a, _) = args else {
            throw bad("REDUCE arguments are a \(args.typeName), not a tuple", at: start)
        }
        let result = try interpreter.reduce(callable, a)
        try pushNew(result, start)
    }
    /// BUILD: setting the state of the value below it. Accepted only on a dict, with no state or a
    /// dict of the attributes the caller allows (an OrderedDict's `_metadata` for PyTorch), and
    /// dropped. Anything else could call code when unpickled (a `__setstate__` set by one BUILD is
    /// called by the next; a (dict, slots) tuple sets attributes).
    mutating func build(_ start: Int) throws {
        let state = try pop(start)
        guard case .dict? = stack.last else {
            throw bad("BUILD (setting the state of a \(stack.last?.typeName ?? "nothing") to a \(state.typeName)) "
                      + "is not allowed", at: start)
        }
        let allowed = interpreter.dictAttributes.sorted().joined(separator: ", ")
        switch state {
        case .none:
            return
        case .dict(let d):
            for (key, _) in d.items {
                guard case .string(let k) = key, interpreter.dictAttributes.contains(k) else {
                    let named: String
                    if case .string(let k) = key { named = k } else { named = "a key of type \(key.typeName)" }
                    throw bad("BUILD sets \(named) on a dict, which is not allowed "
                              + "(only \(allowed.isEmpty ? "nothing" : allowed) may be set)", at: start)
                }
            }
        default:
            throw bad("BUILD with a \(state.typeName) state is not allowed "
                      + "(only None or a dict setting \(allowed.isEmpty ? "nothing" : allowed))", at: start)
        }
    }
    /// BINPERSID: the interpreter decides what the persistent id stands for.
    mutating func persistentLoad(_ start: Int) throws {
        let pid = try pop(start)
        seal([pid])
        let result = try interpreter.persistentLoad(pid)
        try pushNew(result, start)
    }
}
