/// The entry table of a ZIP archive, read from its central directory (ZIP64 included) and checked
/// before any entry is handed out: every number is overflow-checked and every entry's data lies
/// inside the file. Only what PyTorch checkpoints need: names, where each entry's bytes are, and
/// whether they are stored uncompressed. Entries are never decompressed.
struct ZipArchive {
    struct Entry: Equatable {
        var name: String
        /// 0 = stored (the only method whose bytes can be read in place), 8 = deflate, ...
        var method: UInt16
        /// Absolute offset of the entry's first data byte.
        var dataOffset: Int
        var compressedSize: Int
        var size: Int
        var encrypted: Bool
    }

    let path: String
    let entries: [Entry]
    private let index: [String: Int]

    /// Most entries and central-directory bytes accepted (a checkpoint has a few per tensor).
    static let maxEntries = 10_000_000
    static let maxDirectoryBytes = 1 << 30

    static let localHeaderSignature: UInt32 = 0x0403_4B50
    static let centralHeaderSignature: UInt32 = 0x0201_4B50
    static let endSignature: UInt32 = 0x0605_4B50
    static let zip64EndSignature: UInt32 = 0x0606_4B50
    static let zip64LocatorSignature: UInt32 = 0x0706_4B50

    init(file: ReadOnlyFile) throws {
        let path = file.path
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidPyTorchFile, "\(path): \(message)") }
        self.path = path

        // End of central directory: 22 bytes + a comment of up to 65535 bytes, at the very end.
        guard file.size >= 22 else { throw bad("\(file.size) bytes, too short for a ZIP archive") }
        let tailLength = min(file.size, 22 + 65535)
        let tailStart = file.size - tailLength
        let tail = try file.read(count: tailLength, at: tailStart)
        var eocd: Int? = nil
        var i = tailLength - 22
        while i >= 0 {
            if tail.u32(at: i) == ZipArchive.endSignature && i + 22 + Int(tail.u16(at: i + 20)) == tailLength {
                eocd = i
                break
            }
            i -= 1
        }
        guard let e = eocd else { throw bad("no ZIP end-of-central-directory record (not a ZIP archive, or truncated)") }
        guard tail.u16(at: e + 4) == 0, tail.u16(at: e + 6) == 0 else { throw bad("multi-disk ZIP archives are not supported") }
        var count = Int(tail.u16(at: e + 10))
        var directorySize = Int(tail.u32(at: e + 12))
        var directoryOffset = Int(tail.u32(at: e + 16))

        // ZIP64: a locator just before the end record points at the ZIP64 end record.
        let locator = tailStart + e - 20
        if locator >= 0 {
            let loc = try file.read(count: 20, at: locator)
            if loc.u32(at: 0) == ZipArchive.zip64LocatorSignature {
                guard let recordOffset = Int(exactly: loc.u64(at: 8)), recordOffset >= 0, recordOffset <= locator - 56 else {
                    throw bad("ZIP64 end record offset \(loc.u64(at: 8)) is outside the file")
                }
                let rec = try file.read(count: 56, at: recordOffset)
                guard rec.u32(at: 0) == ZipArchive.zip64EndSignature else { throw bad("ZIP64 locator does not point at a ZIP64 end record") }
                guard let c = Int(exactly: rec.u64(at: 32)), let s = Int(exactly: rec.u64(at: 40)), let o = Int(exactly: rec.u64(at: 48)) else {
                    throw bad("ZIP64 end record sizes overflow")
                }
                (count, directorySize, directoryOffset) = (c, s, o)
            }
        }
        // Each central-directory entry takes at least 46 bytes: the count cannot exceed what the
        // directory holds (checked before anything is sized by it).
        guard count <= directorySize / 46 else {
            throw bad("\(count) entries cannot fit in a central directory of \(directorySize) bytes")
        }
        guard count <= ZipArchive.maxEntries else { throw bad("\(count) entries, more than the \(ZipArchive.maxEntries) accepted") }
        guard directorySize <= ZipArchive.maxDirectoryBytes else { throw bad("central directory of \(directorySize) bytes is too large") }
        guard let directoryEnd = checkedSum([directoryOffset, directorySize]), directoryEnd <= file.size else {
            throw bad("central directory (\(directorySize) bytes at \(directoryOffset)) runs past the end of the file (\(file.size) bytes)")
        }
        let directory = try file.read(count: directorySize, at: directoryOffset)

        var entries: [Entry] = []
        entries.reserveCapacity(count)
        var index: [String: Int] = [:]
        var p = 0
        for n in 0..<count {
            guard p + 46 <= directory.count, directory.u32(at: p) == ZipArchive.centralHeaderSignature else {
                throw bad("central directory entry \(n) of \(count) is missing or malformed")
            }
            let flags = directory.u16(at: p + 8)
            let method = directory.u16(at: p + 10)
            var compressed = UInt64(directory.u32(at: p + 20))
            var size = UInt64(directory.u32(at: p + 24))
            let nameLength = Int(directory.u16(at: p + 28)), extraLength = Int(directory.u16(at: p + 30))
            let commentLength = Int(directory.u16(at: p + 32))
            var localOffset = UInt64(directory.u32(at: p + 42))
            let nameStart = p + 46, extraStart = nameStart + nameLength, next = extraStart + extraLength + commentLength
            guard next <= directory.count else { throw bad("central directory entry \(n) runs past the directory") }
            guard let name = String(validating: directory[nameStart..<extraStart], as: UTF8.self) else {
                throw bad("entry \(n) has a name that is not valid UTF-8")
            }
            // ZIP64 extended information: the 64-bit values of the fields saturated at 0xFFFFFFFF, in order.
            var x = extraStart
            while x + 4 <= extraStart + extraLength {
                let id = directory.u16(at: x), length = Int(directory.u16(at: x + 2))
                guard x + 4 + length <= extraStart + extraLength else { throw bad("entry \(name): malformed extra field") }
                if id == 0x0001 {
                    var f = x + 4
                    func take() throws -> UInt64 {
                        guard f + 8 <= x + 4 + length else { throw bad("entry \(name): ZIP64 extra field too short") }
                        defer { f += 8 }
                        return directory.u64(at: f)
                    }
                    if size == 0xFFFF_FFFF { size = try take() }
                    if compressed == 0xFFFF_FFFF { compressed = try take() }
                    if localOffset == 0xFFFF_FFFF { localOffset = try take() }
                }
                x += 4 + length
            }
            guard let c = Int(exactly: compressed), let s = Int(exactly: size), let lo = Int(exactly: localOffset),
                  let localEnd = checkedSum([lo, 30]), localEnd <= file.size else {
                throw bad("entry \(name): sizes or offset out of range")
            }
            let local = try file.read(count: 30, at: lo)
            guard local.u32(at: 0) == ZipArchive.localHeaderSignature else { throw bad("entry \(name): no local header at byte \(lo)") }
            guard let dataOffset = checkedSum([lo, 30, Int(local.u16(at: 26)), Int(local.u16(at: 28))]),
                  let dataEnd = checkedSum([dataOffset, c]), dataEnd <= file.size else {
                throw bad("entry \(name): its \(c) bytes run past the end of the file (\(file.size) bytes); the file is truncated")
            }
            guard index[name] == nil else { throw bad("entry \(name) appears twice") }
            index[name] = entries.count
            entries.append(Entry(name: name, method: method, dataOffset: dataOffset, compressedSize: c, size: s,
                                 encrypted: flags & 1 != 0))
            p = next
        }
        self.entries = entries
        self.index = index
    }

    func entry(named name: String) -> Entry? { index[name].map { entries[$0] } }
}

extension Array where Element == UInt8 {
    func u16(at i: Int) -> UInt16 { UInt16(self[i]) | UInt16(self[i + 1]) << 8 }
    func u32(at i: Int) -> UInt32 { UInt32(u16(at: i)) | UInt32(u16(at: i + 2)) << 16 }
    func u64(at i: Int) -> UInt64 { UInt64(u32(at: i)) | UInt64(u32(at: i + 4)) << 32 }
}
