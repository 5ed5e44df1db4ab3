import Foundation
import Testing
import ShardKit

@Suite("Safetensors writer")
struct SafetensorsWriterTests {
    /// Writes `tensors` with SafetensorsLayout + OutputFile, returns the path.
    func write(_ tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])], metadata: [String: String],
               to path: String) throws -> SafetensorsLayout {
        let layout = try SafetensorsLayout(tensors: tensors.map { ($0.name, $0.dtype, $0.shape) }, metadata: metadata)
        let file = try OutputFile(path: path)
        try layout.writeHeader(to: file)
        for (e, t) in zip(layout.entries, tensors) {
            #expect(e.byteCount == t.bytes.count)
            try t.bytes.withUnsafeBytes { try file.write($0, at: e.offset) }
        }
        try file.commit()
        return layout
    }

    @Test("header padded to 8 bytes; re-read equals what was written", arguments: 0..<9)
    func roundTrip(_ extra: Int) throws {
        try withTempDir { tmp in
            let path = tmp + "/t.safetensors"
            // Names of varying length move the header length through every residue mod 8.
            let tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])] = [
                ("w" + String(repeating: "x", count: extra), .f32, [2, 3], (0..<24).map { UInt8($0) }),
                ("b.ias", .bf16, [5], (0..<10).map { UInt8(200 - $0) }),
                ("ids", .i64, [1, 2], (0..<16).map { UInt8($0 * 3) }),
                ("empty", .f16, [0, 4], []),
                ("scalar", .u8, [], [42]),
            ]
            let layout = try write(tensors, metadata: ["format": "pt", "note": "é \"quoted\""], to: path)
            #expect(!exists(path + ".tmp"))
            let bytes = try readBytes(path)
            #expect(layout.dataStart % 8 == 0)
            let n = (0..<8).reduce(0) { $0 | Int(bytes[$1]) << (8 * $1) }
            #expect((8 + n) % 8 == 0)
            #expect(n == layout.header.count)
            #expect(bytes.count == layout.fileSize)
            // The padding is spaces after the JSON object, which parses on its own.
            let header = Array(bytes[8..<(8 + n)])
            let close = header.lastIndex(of: UInt8(ascii: "}"))!
            #expect(header[(close + 1)...].allSatisfy { $0 == 0x20 })
            #expect(n - close - 1 < 8)

            let f = try SafetensorsFile(path: path)
            #expect(f.metadata == ["format": "pt", "note": "é \"quoted\""])
            #expect(f.dataStart == 8 + n)
            #expect(f.tensors.count == tensors.count)
            for t in tensors {
                let info = try #require(f.tensor(named: t.name))
                #expect(info.dtype == t.dtype && info.shape == t.shape && info.byteCount == t.bytes.count)
                #expect(same(Array(bytes[info.offset..<(info.offset + info.byteCount)]), t.bytes))
            }
            // An independent reader agrees.
            let raw = try readRawSafetensors(path)
            #expect(raw.tensors["b.ias"]?.bytes == tensors[1].bytes)
            #expect(raw.tensors["scalar"]?.shape == [])
        }
    }

    @Test("an output file is never visible under its final name before commit")
    func outputFileCommit() throws {
        try withTempDir { tmp in
            let path = tmp + "/x.bin"
            do {
                let f = try OutputFile(path: path)
                try [1, 2, 3].withUnsafeBytes { try f.write($0, at: 0) }
                #expect(!exists(path) && exists(path + ".tmp"))
            }
            // Dropped without commit: the temporary is removed.
            #expect(!exists(path) && !exists(path + ".tmp"))
        }
    }
}

@Suite("JSON parser")
struct JSONParserTests {
    func parse(_ s: String) throws -> JSONValue { try JSONValue.parse(Array(s.utf8)) }
    func refuses(_ s: String, _ words: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let v = try parse(s)
            Issue.record("accepted \(s) as \(v)", sourceLocation: sourceLocation)
        } catch {
            #expect(String(describing: error).contains(words), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("duplicate keys are refused, at any depth")
    func duplicates() throws {
        refuses(#"{"a": 1, "a": 2}"#, "duplicate key \"a\"")
        refuses(#"{"x": {"k": 1, "k": 1}}"#, "duplicate key \"k\"")
        // Same key in sibling objects is fine.
        #expect(try parse(#"[{"a": 1}, {"a": 2}]"#) == .array([.object([("a", .int(1))]), .object([("a", .int(2))])]))
    }

    @Test("escapes and surrogate pairs")
    func escapes() throws {
        #expect(try parse(#""\"\\\/\b\f\n\r\t""#) == .string("\"\\/\u{8}\u{c}\n\r\t"))
        #expect(try parse(#""\u00e9\u4E2D""#) == .string("é中"))
        #expect(try parse(#""\ud83d\ude00""#) == .string("😀"))
        #expect(try parse("\"é😀\"") == .string("é😀"))
        refuses(#""\ud83d""#, "unpaired surrogate")
        refuses(#""\ud83dx""#, "unpaired surrogate")
        refuses(#""\ude00""#, "unpaired surrogate")
        refuses(#""\ud83d\u0041""#, "unpaired surrogate")
        refuses(#""\x""#, "invalid escape")
        refuses(#""\u12G4""#, #"invalid \u escape"#)
        refuses("\"a\u{1}b\"", "control character")
        refuses("\"abc", "unterminated")
        // A string escaped by the writer parses back.
        let s = "tab\t \"q\" \\ \u{1} é 😀"
        var out = JSONValue.string(s).serialized
        #expect(try parse(out) == .string(s))
        out = JSONValue.object([("k\n", .array([.int(-3), .double(0.5), .bool(true), .null]))]).serialized
        #expect(try parse(out) == .object([("k\n", .array([.int(-3), .double(0.5), .bool(true), .null]))]))
    }

    @Test("invalid UTF-8 is refused")
    func invalidUTF8() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse([0x22, 0xFF, 0xFE, 0x22]) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse([0x22, 0x5C, 0x6E, 0xC3, 0x22]) }
    }

    @Test("deep nesting is refused; moderate nesting is fine")
    func nesting() throws {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        refuses(deep, "nested too deeply")
        let deepObjects = String(repeating: #"{"a":"#, count: 500) + "1" + String(repeating: "}", count: 500)
        refuses(deepObjects, "nested too deeply")
        let ok = String(repeating: "[", count: 20) + "1" + String(repeating: "]", count: 20)
        var v = try parse(ok)
        for _ in 0..<20 { v = v.arrayValue![0] }
        #expect(v == .int(1))
    }

    @Test("numbers: integers exact, grammar strict")
    func numbers() throws {
        #expect(try parse("9007199254740993") == .int(9_007_199_254_740_993))
        #expect(try parse("-0") == .int(0))
        #expect(try parse("1.5e2") == .double(150))
        #expect(try parse(" [1 , 2] \n") == .array([.int(1), .int(2)]))
        for bad in ["01", "1.", ".5", "+1", "1e", "-", "NaN", "[1,]", "{\"a\":1,}", "{} x", "tru", ""] {
            #expect(throws: JSONParseError.self, "\(bad)") { try JSONValue.parse(Array(bad.utf8)) }
        }
        // An integer too large for Int is not silently truncated.
        #expect(try parse("99999999999999999999").intValue == nil)
    }
}

@Suite("Name patterns")
struct NamePatternTests {
    func m(_ pattern: String, _ name: String) throws -> Bool { try NamePattern(pattern).matches(name) }

    @Test("* is one or more characters other than a dot")
    func star() throws {
        #expect(try m("model.layers.*.mlp", "model.layers.0.mlp"))
        #expect(try m("model.layers.*.mlp", "model.layers.17.mlp"))
        #expect(try !m("model.layers.*.mlp", "model.layers..mlp"))
        #expect(try !m("model.layers.*.mlp", "model.layers.1.2.mlp"))
        #expect(try m("a*c", "abbc"))
        #expect(try !m("a*c", "ac"))
        #expect(try !m("a*c", "a.c"))
        #expect(try m("*", "x"))
        #expect(try !m("*", "x.y"))
        #expect(try !m("*", ""))
    }

    @Test("** is any characters, dots included, possibly none")
    func doubleStar() throws {
        #expect(try m("**", ""))
        #expect(try m("**", "a.b.c"))
        #expect(try m("model.**.weight", "model.layers.0.mlp.weight"))
        #expect(try m("model.**weight", "model.weight"))
        #expect(try !m("model.**.weight", "model.weight"))
        #expect(try m("**.bias", "x.y.bias"))
        #expect(try !m("**.bias", "x.y.bias2"))
        #expect(try m("a.**.z", "a..z"))
    }

    @Test("{a,b,} alternatives, the empty one included")
    func alternatives() throws {
        #expect(try m("x{a,b,}y", "xay"))
        #expect(try m("x{a,b,}y", "xby"))
        #expect(try m("x{a,b,}y", "xy"))
        #expect(try !m("x{a,b,}y", "xcy"))
        #expect(try !m("x{a,b,}y", "xaby"))
        #expect(try m("{transformer.,}h.*.ln_{1,2}.{weight,bias}", "transformer.h.3.ln_2.bias"))
        #expect(try m("{transformer.,}h.*.ln_{1,2}.{weight,bias}", "h.0.ln_1.weight"))
        #expect(try !m("{transformer.,}h.*.ln_{1,2}.{weight,bias}", "h.0.ln_3.weight"))
        #expect(try m("self_attn.{k_proj,v_proj}.weight", "self_attn.v_proj.weight"))
        #expect(try !m("self_attn.{k_proj,v_proj}.weight", "self_attn.q_proj.weight"))
        // Literal text must match the whole name.
        #expect(try !m("lm_head.weight", "lm_head.weight2"))
        #expect(try !m("lm_head.weight", "x.lm_head.weight"))
    }

    @Test("malformed patterns are refused")
    func malformed() {
        expectShardKitError(caught { _ = try NamePattern("a{b,c") }, .invalidRules, ["a{b,c", "unclosed"])
        expectShardKitError(caught { _ = try NamePattern("a}b") }, .invalidRules, ["'}' without '{'"])
        expectShardKitError(caught { _ = try NamePattern("{a,{b,c}}") }, .invalidRules, ["nested"])
    }
}
