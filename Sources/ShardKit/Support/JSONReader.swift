/// A strict pull reader over one JSON document, for untrusted JSON that is decoded straight into a
/// type (the manifest and part files) without building a tree: the same parser as `JSONValue`
/// (UTF-8 checked, duplicate keys refused, nesting depth bounded, integers exact), and errors that say
/// what is wrong and where (`at tensors.x.pieces[1].rank: expected an integer, found 1e30`).
package struct JSONReader {
    private var parser: JSONParser
    /// Where the reader is, for messages: keys and array indices from the top (made into text only
    /// for an error).
    private enum Step { case key(String), index(Int) }
    private var path: [Step] = []
    private var depth = 0

    package init(bytes: UnsafeRawBufferPointer) {
        parser = JSONParser(bytes: bytes)
    }

    /// A message naming the current position.
    package func error(_ message: String) -> JSONParseError {
        var at = path.isEmpty ? "at the top level" : "at "
        for (i, step) in path.enumerated() {
            switch step {
            case .key(let k): at += (i == 0 ? "" : ".") + k
            case .index(let n): at += "[\(n)]"
            }
        }
        return JSONParseError(message: "\(at): \(message)", offset: parser.position)
    }

    /// Reads the whole document with `body`, then checks that nothing follows it.
    package mutating func document(_ body: (inout JSONReader) throws -> Void) throws {
        parser.skipWhitespace()
        try body(&self)
        parser.skipWhitespace()
        guard parser.position == parser.bytes.count else { throw parser.error("unexpected data after the JSON value") }
    }

    private mutating func enter() throws(JSONParseError) {
        depth += 1
        guard depth < JSONParser.maxDepth else { throw error("JSON nested more than \(JSONParser.maxDepth) deep") }
    }

    /// Reads an object, calling `member` with each key (the reader positioned at its value, which
    /// `member` must read). A duplicate key is an error, unless `uniqueKeys` is false: then the caller
    /// checks (as it fills a dictionary of its own, which costs no second hash of every key) and
    /// reports it with `duplicateKey(_:)`.
    package mutating func object(uniqueKeys: Bool = true, _ member: (inout JSONReader, String) throws -> Void) throws {
        parser.skipWhitespace()
        guard parser.current == UInt8(ascii: "{") else { throw error("expected an object, found \(found())") }
        try enter()
        parser.position += 1
        // Duplicate keys: a list for the few keys of most objects, a set once there are many.
        var few: [String] = []
        var many = Set<String>()
        parser.skipWhitespace()
        if parser.current == UInt8(ascii: "}") { parser.position += 1; depth -= 1; return }
        while true {
            parser.skipWhitespace()
            guard parser.current == UInt8(ascii: "\"") else { throw parser.error("expected a string key") }
            let key = try parser.parseString()
            if !uniqueKeys {
                // The caller checks.
            } else if few.count < 16 {
                guard !few.contains(key) else { throw error("duplicate key \"\(key)\"") }
                few.append(key)
                if few.count == 16 { many = Set(few) }
            } else {
                guard many.insert(key).inserted else { throw error("duplicate key \"\(key)\"") }
            }
            parser.skipWhitespace()
            guard parser.current == UInt8(ascii: ":") else { throw parser.error("expected ':'") }
            parser.position += 1
            path.append(.key(key))
            try member(&self, key)
            path.removeLast()
            parser.skipWhitespace()
            if parser.current == UInt8(ascii: ",") { parser.position += 1; continue }
            if parser.current == UInt8(ascii: "}") { parser.position += 1; depth -= 1; return }
            throw parser.error("expected ',' or '}'")
        }
    }

    /// The error for a duplicate `key` found by a caller that checks keys itself.
    package func duplicateKey(_ key: String) -> JSONParseError { error("duplicate key \"\(key)\"") }

    /// Reads an array, calling `element` with each index (the reader positioned at the element).
    package mutating func array(_ element: (inout JSONReader, Int) throws -> Void) throws {
        parser.skipWhitespace()
        guard parser.current == UInt8(ascii: "[") else { throw error("expected an array, found \(found())") }
        try enter()
        parser.position += 1
        parser.skipWhitespace()
        if parser.current == UInt8(ascii: "]") { parser.position += 1; depth -= 1; return }
        var i = 0
        while true {
            path.append(.index(i))
            try element(&self, i)
            path.removeLast()
            i += 1
            parser.skipWhitespace()
            if parser.current == UInt8(ascii: ",") { parser.position += 1; continue }
            if parser.current == UInt8(ascii: "]") { parser.position += 1; depth -= 1; return }
            throw parser.error("expected ',' or ']'")
        }
    }

    package mutating func string() throws -> String {
        parser.skipWhitespace()
        guard parser.current == UInt8(ascii: "\"") else { throw error("expected a string, found \(found())") }
        return try parser.parseString()
    }

    /// An integer written as one (no fraction or exponent) that fits in an `Int`.
    package mutating func int() throws -> Int {
        parser.skipWhitespace()
        let start = parser.position
        guard let c = parser.current,
              c == UInt8(ascii: "-") || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) else {
            throw error("expected an integer, found \(found())")
        }
        guard case .int(let i) = try parser.parseNumber() else {
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: parser.bytes[start..<parser.position]),
                              as: UTF8.self)
            throw error("expected an integer, found \(text.prefix(40))")
        }
        return i
    }

    /// The next value, skipped (parsed and dropped; nesting bounded as everywhere).
    package mutating func skip() throws {
        parser.skipWhitespace()
        _ = try parser.parseValue(depth: depth)
    }

    /// True when the next value is an object (nothing consumed).
    package var peekIsObject: Bool {
        mutating get { parser.skipWhitespace(); return parser.current == UInt8(ascii: "{") }
    }
    /// True when the next value is a string (nothing consumed).
    package var peekIsString: Bool {
        mutating get { parser.skipWhitespace(); return parser.current == UInt8(ascii: "\"") }
    }

    /// The next value as an integer, or nil (the value consumed either way) when it is anything else.
    package mutating func intIfInteger() throws -> Int? {
        parser.skipWhitespace()
        guard let c = parser.current,
              c == UInt8(ascii: "-") || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) else {
            try skip()
            return nil
        }
        if case .int(let i) = try parser.parseNumber() { return i }
        return nil
    }

    /// An array of integers: nil when the value is not an array (consumed), and whether every
    /// element was an integer (the others are dropped).
    package mutating func optionalInts() throws -> (values: [Int]?, allIntegers: Bool) {
        parser.skipWhitespace()
        guard parser.current == UInt8(ascii: "[") else { try skip(); return (nil, true) }
        var values: [Int] = []
        var all = true
        try array { r, _ in
            if let v = try r.intIfInteger() { values.append(v) } else { all = false }
        }
        return (values, all)
    }

    /// `null` (returns true, consumed) or anything else (returns false, not consumed).
    package mutating func null() throws -> Bool {
        parser.skipWhitespace()
        guard parser.current == UInt8(ascii: "n") else { return false }
        try parser.expect("null")
        return true
    }

    /// Describes the value at the current position, for messages.
    private func found() -> String {
        switch parser.current {
        case nil: return "the end of the document"
        case UInt8(ascii: "{"): return "an object"
        case UInt8(ascii: "["): return "an array"
        case UInt8(ascii: "\""): return "a string"
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return "a boolean"
        case UInt8(ascii: "n"): return "null"
        default: return "a number"
        }
    }
}

/// Writes JSON straight into bytes (no tree): keys in the order written. Pretty (two-space
/// indentation) by default; a container opened `inline` is written on one line with everything in
/// it; `compact` writes no whitespace at all (safetensors headers).
package struct JSONWriter {
    package private(set) var bytes: [UInt8] = []
    private var indent = 0
    /// Per open container: whether it has a member yet, and whether it is laid out on one line.
    private var open: [(hasMember: Bool, inline: Bool)] = []
    private let compact: Bool

    package init(compact: Bool = false) { self.compact = compact }

    /// Inside a one-line container (or compact): no line breaks.
    private var oneLine: Bool { compact || (open.last?.inline ?? false) }

    private mutating func separator() {
        if oneLine {
            if !compact { bytes.append(0x20) }
            return
        }
        bytes.append(0x0A)
        for _ in 0..<indent { bytes.append(0x20); bytes.append(0x20) }
    }

    private mutating func beginItem() {
        guard let last = open.last else { return }
        if last.hasMember {
            bytes.append(UInt8(ascii: ","))
            separator()
        } else if !oneLine {
            separator()
        }
        open[open.count - 1].hasMember = true
    }

    /// `"key": ` inside an object.
    package mutating func key(_ k: String) {
        beginItem()
        appendString(k)
        bytes.append(UInt8(ascii: ":"))
        if !compact { bytes.append(0x20) }
    }

    package mutating func beginObject(asItem: Bool = false, inline: Bool = false) {
        begin(UInt8(ascii: "{"), asItem, inline)
    }
    package mutating func endObject() { end(UInt8(ascii: "}")) }
    package mutating func beginArray(asItem: Bool = false, inline: Bool = false) {
        begin(UInt8(ascii: "["), asItem, inline)
    }
    package mutating func endArray() { end(UInt8(ascii: "]")) }

    private mutating func begin(_ c: UInt8, _ asItem: Bool, _ inline: Bool) {
        if asItem { beginItem() }
        bytes.append(c)
        indent += 1
        open.append((false, inline || oneLine))
    }

    private mutating func end(_ c: UInt8) {
        indent -= 1
        let closing = open.removeLast()
        if closing.hasMember && !closing.inline && !compact {
            bytes.append(0x0A)
            for _ in 0..<indent { bytes.append(0x20); bytes.append(0x20) }
        }
        bytes.append(c)
    }

    /// An array of integers on one line (`[1, 2]`).
    package mutating func ints(_ values: [Int], asItem: Bool = false) {
        beginArray(asItem: asItem, inline: true)
        for v in values { int(v, asItem: true) }
        endArray()
    }

    package mutating func int(_ v: Int, asItem: Bool = false) {
        if asItem { beginItem() }
        bytes.append(contentsOf: String(v).utf8)
    }

    package mutating func string(_ s: String, asItem: Bool = false) {
        if asItem { beginItem() }
        appendString(s)
    }

    private mutating func appendString(_ s: String) { JSONWriter.appendEscaped(s, to: &bytes) }

    /// `s` as a JSON string literal: `"` and `\\` escaped, control characters as `\\n`, `\\u0001`, ...;
    /// other bytes copied as they are (UTF-8), a run at a time.
    package static func appendEscaped(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { u in
            var start = 0
            for i in 0..<u.count {
                let c = u[i]
                if c >= 0x20 && c != UInt8(ascii: "\"") && c != UInt8(ascii: "\\") { continue }
                out.append(contentsOf: u[start..<i])
                start = i + 1
                out.append(UInt8(ascii: "\\"))
                switch c {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(c)
                case 0x0A: out.append(UInt8(ascii: "n"))
                case 0x0D: out.append(UInt8(ascii: "r"))
                case 0x09: out.append(UInt8(ascii: "t"))
                default:
                    let hex = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                            hex[Int(c >> 4)], hex[Int(c & 15)]])
                }
            }
            out.append(contentsOf: u[start..<u.count])
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Hands the bytes written so far to `emit` and starts over (for documents written in pieces).
    package mutating func drain(_ emit: ([UInt8]) throws -> Void) rethrows {
        try emit(bytes)
        bytes.removeAll(keepingCapacity: true)
    }

    /// The document (pretty documents end with a newline).
    package mutating func finish() -> [UInt8] {
        if !compact { bytes.append(0x0A) }
        return bytes
    }
}
