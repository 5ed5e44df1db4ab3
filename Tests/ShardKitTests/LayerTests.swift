import Foundation
import Testing

/// The layer rule of docs/design.md: a file of `Sources/ShardKit/<Layer>/` may use only types declared
/// in its own layer or a layer listed before it. Checked over the sources: every top-level type
/// declaration is assigned to its folder's layer, and every capitalised identifier a file uses
/// (outside comments and string literals) that names a type of a later layer is a violation.
@Suite("Layers")
struct LayerTests {
    /// docs/design.md's table, in order: each layer uses only the layers before it.
    static let layers = ["Support", "Formats", "Rules", "Plan", "Engine", "Output", "Loader", "Operations"]

    struct Violation: Equatable, CustomStringConvertible {
        var file: String, uses: String, from: String
        var description: String { "\(file) uses \(uses) from the later layer \(from)" }
    }

    /// Violations among `files` (path → (layer, source text)).
    static func violations(_ files: [String: (layer: String, text: String)]) -> [Violation] {
        let declaration = try! Regex(#"(?m)^(?:public |package |internal |fileprivate |private )?(?:final )?(?:indirect )?"#
                                     + #"(?:struct|class|enum|protocol|actor|typealias)\s+(\w+)"#)
        var owner: [String: String] = [:]
        for (_, f) in files {
            for m in f.text.matches(of: declaration) { if let n = m.output[1].substring { owner[String(n)] = f.layer } }
        }
        var found: [Violation] = []
        for (path, f) in files.sorted(by: { $0.key < $1.key }) {
            guard let mine = layers.firstIndex(of: f.layer) else { continue }
            let identifiers = Set(stripped(f.text).matches(of: try! Regex(#"\b[A-Z]\w*\b"#)).map { String($0.output[0].substring!) })
            for id in identifiers.sorted() {
                if let layer = owner[id], let theirs = layers.firstIndex(of: layer), theirs > mine {
                    found.append(Violation(file: path, uses: id, from: layer))
                }
            }
        }
        return found
    }

    /// The source without comments and string literals.
    static func stripped(_ text: String) -> String {
        var t = text.replacing(try! Regex(#"(?s)/\*.*?\*/"#), with: "")
        t = t.replacing(try! Regex(#"//[^\n]*"#), with: "")
        t = t.replacing(try! Regex(#"(?s)\"\"\".*?\"\"\""#), with: "\"\"")
        return t.replacing(try! Regex(#""(\\.|[^"\\\n])*""#), with: "\"\"")
    }

    static func sources() throws -> [String: (layer: String, text: String)] {
        let root = Fixtures.repoRoot + "/Sources/ShardKit"
        var files: [String: (layer: String, text: String)] = [:]
        let walker = FileManager.default.enumerator(atPath: root)
        while let rel = walker?.nextObject() as? String {
            guard rel.hasSuffix(".swift") else { continue }
            let layer = String(rel.split(separator: "/")[0])
            files["Sources/ShardKit/" + rel] = (layer, try String(contentsOfFile: root + "/" + rel, encoding: .utf8))
        }
        return files
    }

    @Test("every folder of Sources/ShardKit is a layer of the table, and no file uses a type of a later layer")
    func noBackEdges() throws {
        let files = try Self.sources()
        #expect(files.count > 30)
        let folders = Set(files.values.map(\.layer))
        #expect(folders == Set(Self.layers), "folders \(folders.sorted()) vs layers \(Self.layers)")
        let found = Self.violations(files)
        #expect(found.isEmpty, "\(found)")
    }

    @Test("the check finds a back-edge (a Formats file using a Plan type), and ignores comments and strings")
    func detects() {
        let files: [String: (layer: String, text: String)] = [
            "Plan/P.swift": ("Plan", "public struct ShardPlanX {}\n"),
            "Formats/F.swift": ("Formats", "struct Reader { let p: ShardPlanX? }\n"),
            "Formats/G.swift": ("Formats", "// ShardPlanX in a comment\nlet s = \"ShardPlanX\"\n"),
            "Operations/O.swift": ("Operations", "let x: ShardPlanX? = nil\n"),
        ]
        #expect(Self.violations(files) == [Violation(file: "Formats/F.swift", uses: "ShardPlanX", from: "Plan")])
    }
}
