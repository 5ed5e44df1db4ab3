/// The entry table of a ZIP archive, read from its central directory (ZIP64 included) and checked
/// before any entry is handed out: every number is overflow-checked and every entry's data lies
/// inside the file. Only what PyTorch checkpoints need: names, where each entry's bytes are, and
/// how they are stored (decompression is the reader's: `InflatingReader`).
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
        /// CRC-32 of the uncompressed bytes, as the central directory states it.
        var crc32: UInt32
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
        let reader = DirectoryReader(file: file)
        var end = try reader.findEndRecord()
        try reader.readZip64(into: &end)
        let directory = try reader.readDirectory(end)

        var entries: [Entry] = []
        entries.reserveCapacity(end.count)
        var index: [String: Int] = [:]
        var p = 0
        for n in 0..<end.count {
            let central = try reader.centralEntry(in: directory, at: p, number: n, of: end.count)
            let dataOffset = try reader.resolveLocalHeader(of: central)
            guard index[central.name] == nil else { throw reader.bad("entry \(central.name) appears twice") }
            index[central.name] = entries.count
            entries.append(Entry(name: central.name, method: central.method, dataOffset: dataOffset,
                                 compressedSize: central.compressedSize, size: central.size,
                                 encrypted: central.flags & 1 != 0, crc32: central.crc32))
            p = central.next
        }
        self.path = file.path
        self.entries = entries
        self.index = index
    }

    func entry(named name: String) -> Entry? { index[name].map { entries[$0] } }
}

extension ZipArchive {
    /// Where the central directory is, as the end record (or the ZIP64 end record) says.
    struct EndRecord {
        var count: Int
        var directorySize: Int
        var directoryOffset: Int
        /// Absolute offset of the (classic) end-of-central-directory record.
        var position: Int
    }

    /// A central-directory entry, before its local header is read.
    struct CentralEntry {
        var name: String
        var flags: UInt16
        var method: UInt16
        var crc32: UInt32
        var compressedSize: Int
        var size: Int
        var localHeaderOffset: Int
        /// Where the next entry starts in the directory.
        var next: Int
    }

    /// The steps of reading the entry table, each checking what it reads.
    struct DirectoryReader {
        let file: ReadOnlyFile

        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidPyTorchFile, "\(file.path): \(message)") }

        /// The end-of-central-directory record: 22 bytes + a comment of up to 65535 bytes, at the very
        /// end; the last one whose comment reaches exactly the end of the file.
        func findEndRecord() throws -> EndRecord {
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
            guard let e = eocd else {
                throw bad("no ZIP end-of-central-directory record (not a ZIP archive, or truncated)")
            }
            guard tail.u16(at: e + 4) == 0, tail.u16(at: e + 6) == 0 else {
                throw bad("multi-disk ZIP archives are not supported")
            }
            return EndRecord(count: Int(tail.u16(at: e + 10)), directorySize: Int(tail.u32(at: e + 12)),
                             directoryOffset: Int(tail.u32(at: e + 16)), position: tailStart + e)
        }

        /// ZIP64: a locator just before the end record points at the ZIP64 end record, whose
        /// 64-bit count, size and offset replace the end record's.
        func readZip64(into end: inout EndRecord) throws {
            let locator = end.position - 20
            guard locator >= 0 else { return }
            let loc = try file.read(count: 20, at: locator)
            guard loc.u32(at: 0) == ZipArchive.zip64LocatorSignature else { return }
            guard let recordOffset = Int(exactly: loc.u64(at: 8)), recordOffset >= 0,
                  recordOffset <= locator - 56 else {
                throw bad("ZIP64 end record offset \(loc.u64(at: 8)) is outside the file")
            }
            let rec = try file.read(count: 56, at: recordOffset)
            guard rec.u32(at: 0) == ZipArchive.zip64EndSignature else {
                throw bad("ZIP64 locator does not point at a ZIP64 end record")
            }
            guard let c = Int(exactly: rec.u64(at: 32)), let s = Int(exactly: rec.u64(at: 40)),
                  let o = Int(exactly: rec.u64(at: 48)) else {
                throw bad("ZIP64 end record sizes overflow")
            }
            (end.count, end.directorySize, end.directoryOffset) = (c, s, o)
        }

        /// The central directory's bytes, once its entry count and extent are plausible.
        func readDirectory(_ end: EndRecord) throws -> [UInt8] {
            // Each central-directory entry takes at least 46 bytes: the count cannot exceed what the
            // directory holds (checked before anything is sized by it).
            guard end.count <= end.directorySize / 46 else {
                throw bad("\(end.count) entries cannot fit in a central directory of \(end.directorySize) bytes")
            }
            guard end.count <= ZipArchive.maxEntries else {
                throw bad("\(end.count) entries, more than the \(ZipArchive.maxEntries) accepted")
            }
            guard end.directorySize <= ZipArchive.maxDirectoryBytes else {
                throw bad("central directory of \(end.directorySize) bytes is too large")
            }
            guard let directoryEnd = checkedSum([end.directoryOffset, end.directorySize]),
                  directoryEnd <= file.size else {
                throw bad("central directory (\(end.directorySize) bytes at \(end.directoryOffset)) runs past "
                          + "the end of the file (\(file.size) bytes)")
            }
            return try file.read(count: end.directorySize, at: end.directoryOffset)
        }

        /// Entry `n` of the central directory, starting at byte `p` of it.
        func centralEntry(in directory: [UInt8], at p: Int, number n: Int, of count: Int) throws -> CentralEntry {
            guard p + 46 <= directory.count, directory.u32(at: p) == ZipArchive.centralHeaderSignature else {
                throw bad("central directory entry \(n) of \(count) is missing or malformed")
            }
            let flags = directory.u16(at: p + 8)
            let method = directory.u16(at: p + 10)
            let crc32 = directory.u32(at: p + 16)
            var compressed = UInt64(directory.u32(at: p + 20))
            var size = UInt64(directory.u32(at: p + 24))
            let nameLength = Int(directory.u16(at: p + 28)), extraLength = Int(directory.u16(at: p + 30))
            let commentLength = Int(directory.u16(at: p + 32))
            var localOffset = UInt64(directory.u32(at: p + 42))
            let nameStart = p + 46, extraStart = nameStart + nameLength
            let next = extraStart + extraLength + commentLength
            guard next <= directory.count else { throw bad("central directory entry \(n) runs past the directory") }
            guard let name = String(validating: directory[nameStart..<extraStart], as: UTF8.self) else {
                throw bad("entry \(n) has a name that is not valid UTF-8")
            }
            try readZip64Extra(directory[extraStart..<(extraStart + extraLength)], of: name,
                               size: &size, compressed: &compressed, localOffset: &localOffset)
            guard let c = Int(exactly: compressed), let s = Int(exactly: size), let lo = Int(exactly: localOffset),
                  let localEnd = checkedSum([lo, 30]), localEnd <= file.size else {
                throw bad("entry \(name): sizes or offset out of range")
            }
            return CentralEntry(name: name, flags: flags, method: method, crc32: crc32, compressedSize: c, size: s,
                                localHeaderOffset: lo, next: next)
        }

        /// ZIP64 extended information (extra field 0x0001): the 64-bit values of the fields saturated
        /// at 0xFFFFFFFF, in order.
        func readZip64Extra(_ extra: ArraySlice<UInt8>, of name: String, size: inout UInt64,
                            compressed: inout UInt64, localOffset: inout UInt64) throws {
            let bytes = Array(extra)
            var x = 0
            while x + 4 <= bytes.count {
                let id = bytes.u16(at: x), length = Int(bytes.u16(at: x + 2))
                guard x + 4 + length <= bytes.count else { throw bad("entry \(name): malformed extra field") }
                if id == 0x0001 {
                    var f = x + 4
                    func take() throws -> UInt64 {
                        guard f + 8 <= x + 4 + length else { throw bad("entry \(name): ZIP64 extra field too short") }
                        defer { f += 8 }
                        return bytes.u64(at: f)
                    }
                    if size == 0xFFFF_FFFF { size = try take() }
                    if compressed == 0xFFFF_FFFF { compressed = try take() }
                    if localOffset == 0xFFFF_FFFF { localOffset = try take() }
                }
                x += 4 + length
            }
        }

        /// The entry's first data byte: after its local header, whose name and extra field (where
        /// torch pads records to 64 bytes) may differ in length from the central directory's.
        func resolveLocalHeader(of entry: CentralEntry) throws -> Int {
            let lo = entry.localHeaderOffset
            let local = try file.read(count: 30, at: lo)
            guard local.u32(at: 0) == ZipArchive.localHeaderSignature else {
                throw bad("entry \(entry.name): no local header at byte \(lo)")
            }
            guard let dataOffset = checkedSum([lo, 30, Int(local.u16(at: 26)), Int(local.u16(at: 28))]),
                  let dataEnd = checkedSum([dataOffset, entry.compressedSize]), dataEnd <= file.size else {
                throw bad("entry \(entry.name): its \(entry.compressedSize) bytes run past the end of the file "
                          + "(\(file.size) bytes); the file is truncated")
            }
            return dataOffset
        }
    }
}

extension Array where Element == UInt8 {
    func u16(at i: Int) -> UInt16 { UInt16(self[i]) | UInt16(self[i + 1]) << 8 }
    func u32(at i: Int) -> UInt32 { UInt32(u16(at: i)) | UInt32(u16(at: i + 2)) << 16 }
    func u64(at i: Int) -> UInt64 { UInt64(u32(at: i)) | UInt64(u32(at: i + 4)) << 32 }
}
