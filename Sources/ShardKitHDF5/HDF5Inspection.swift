import Foundation
import ShardKit

/// Running the HDF5 reader in a child process, and checking what it reports.
enum HDF5Inspection {
    struct Entry: Codable {
        var name: String; var dtype: String; var shape: [Int]; var offset: Int; var bytes: Int
        /// A chunked dataset's storage: chunk shape, filters, and `[offset, bytes, mask]` per chunk.
        var chunked: Chunked?
    }
    struct Chunked: Codable { var chunk: [Int]; var filters: [String]; var chunks: [[Int]] }
    struct Failure: Codable { var code: String; var message: String }
    struct Report: Codable { var tensors: [Entry]?; var error: Failure? }

    /// Most bytes of report accepted from a child.
    static let maxReport = 256 << 20

    /// The child's side: read `path` (only its group `rootGroup`, if set) in process and print the
    /// result as JSON.
    static func report(path: String, rootGroup: String? = nil) -> String {
        var report = Report()
        do {
            let file = try ReadOnlyFile(path: path)
            report.tensors = try HDF5Format.inProcess(file, rootGroup: rootGroup).map {
                var chunked: Chunked?
                if case .chunked(let c) = $0.encoding {
                    chunked = Chunked(chunk: c.chunkShape, filters: c.filters.map(\.rawValue),
                                      chunks: c.chunks.map { [$0.offset, $0.byteCount, Int($0.filterMask)] })
                }
                return Entry(name: $0.name, dtype: $0.dtype.rawValue, shape: $0.shape, offset: $0.offset,
                             bytes: $0.byteCount, chunked: chunked)
            }
        } catch let e as ShardKitError {
            report.error = Failure(code: e.code.rawValue, message: e.message)
        } catch {
            report.error = Failure(code: ShardKitError.Code.invalidHDF5File.rawValue, message: "\(path): \(error)")
        }
        let data = (try? JSONEncoder().encode(report)) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The parent's side: run `command + [path]`, kill it after `timeout` seconds, and validate its
    /// report against the file as this process sees it.
    static func run(_ command: [String], file: ReadOnlyFile, timeout: Double) throws -> [TensorInfo] {
        let path = file.path
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidHDF5File, "\(path): \(message)") }
        guard let executable = command.first else { throw bad("empty HDF5 inspector command") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(command.dropFirst()) + [path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { throw bad("cannot start the HDF5 inspector \(executable): \(error)") }
        let pid = process.processIdentifier
        // Read the report on another thread and wait for it with a deadline: the child is killed
        // when the time is up, whether or not something else still holds its output open.
        let reader = ReportReader(out.fileHandleForReading, limit: maxReport)
        DispatchQueue.global().async { reader.readAll() }
        guard reader.done.wait(timeout: .now() + timeout) == .success else {
            kill(pid, SIGKILL)
            throw bad("libhdf5 took more than \(Int(timeout)) s to read the file's structure (killed)")
        }
        if reader.overflowed {
            kill(pid, SIGKILL)
            throw bad("the HDF5 inspector's report exceeds \(maxReport) bytes")
        }
        process.waitUntilExit()
        if process.terminationReason == .uncaughtSignal {
            throw bad("libhdf5 crashed reading the file (signal \(process.terminationStatus)): the file is malformed")
        }
        guard process.terminationStatus == 0 else {
            throw bad("the HDF5 inspector failed (exit status \(process.terminationStatus))")
        }
        let data = reader.data
        return try parse(data, file: file)
    }

    /// Checks a child's report as untrusted input: every entry a known dtype, a shape whose byte size
    /// is the entry's, and a range inside this process's view of the file.
    static func parse(_ data: Data, file: ReadOnlyFile) throws -> [TensorInfo] {
        let path = file.path
        func bad(_ message: String) -> ShardKitError { ShardKitError(.invalidHDF5File, "\(path): \(message)") }
        let json: JSONValue
        do {
            json = try data.withUnsafeBytes { try JSONValue.parse($0) }
        } catch {
            throw bad("the HDF5 inspector's report is not valid JSON")
        }
        if let error = json["error"], error != .null {
            guard let code = error["code"]?.stringValue.flatMap(ShardKitError.Code.init(rawValue:)),
                  let message = error["message"]?.stringValue else {
                throw bad("malformed error in the HDF5 inspector's report")
            }
            // The child's message names the file already; keep it one reasonable line.
            let short = message.count > 2000 ? String(message.prefix(2000)) + "..." : message
            throw ShardKitError(code, short.hasPrefix(path) ? short : "\(path): \(short)")
        }
        guard let entries = json["tensors"]?.arrayValue else { throw bad("the HDF5 inspector's report has no tensors") }
        var seen = Set<String>()
        return try entries.map { e in
            guard let name = e["name"]?.stringValue, let dtype = e["dtype"]?.stringValue.flatMap(DType.init(rawValue:)),
                  let shape = e["shape"]?.arrayValue?.compactMap(\.intValue),
                  shape.count == e["shape"]?.arrayValue?.count, shape.count <= 64, shape.allSatisfy({ $0 >= 0 }),
                  let offset = e["offset"]?.intValue, let bytes = e["bytes"]?.intValue else {
                throw bad("malformed entry in the HDF5 inspector's report")
            }
            guard seen.insert(name).inserted else { throw bad("dataset \(name) reported twice") }
            guard let count = checkedProduct(shape), let size = checkedProduct([count], times: dtype.size),
                  size == bytes else {
                throw bad("dataset \(name): reported size \(bytes) is not that of shape \(shape)")
            }
            if let chunked = e["chunked"], chunked != .null {
                guard offset == 0, let storage = try chunkedStorage(chunked, shape: shape, dtype: dtype, file: file,
                                                                    what: "\(path): dataset \(name)") else {
                    throw bad("malformed chunk table for dataset \(name) in the HDF5 inspector's report")
                }
                return TensorInfo(name: name, dtype: dtype, shape: shape, offset: 0, byteCount: bytes,
                                  encoding: .chunked(storage))
            }
            guard offset >= 0, let end = checkedSum([offset, bytes]), end <= file.size else {
                throw bad("dataset \(name): reported range (\(bytes) bytes at \(offset), shape \(shape)) "
                          + "is not inside the file")
            }
            return TensorInfo(name: name, dtype: dtype, shape: shape, offset: offset, byteCount: bytes)
        }
    }
}

extension HDF5Inspection {
    /// A reported chunk table, validated as `ChunkedStorage` does; nil when its JSON is malformed.
    static func chunkedStorage(_ json: JSONValue, shape: [Int], dtype: DType, file: ReadOnlyFile,
                               what: String) throws -> ChunkedStorage? {
        guard let chunkJSON = json["chunk"]?.arrayValue, chunkJSON.count == shape.count,
              let chunk = Optional(chunkJSON.compactMap(\.intValue)), chunk.count == shape.count,
              let filterNames = json["filters"]?.arrayValue?.compactMap(\.stringValue),
              let rows = json["chunks"]?.arrayValue else { return nil }
        let filters = filterNames.compactMap(ChunkedStorage.Filter.init(rawValue:))
        guard filters.count == json["filters"]?.arrayValue?.count, filters.count <= 32 else { return nil }
        var chunks: [ChunkedStorage.Chunk] = []
        chunks.reserveCapacity(min(rows.count, ChunkedStorage.maxChunks))
        for row in rows {
            guard let v = row.arrayValue?.compactMap(\.intValue), v.count == 3,
                  let mask = UInt32(exactly: v[2]) else { return nil }
            chunks.append(ChunkedStorage.Chunk(offset: v[0], byteCount: v[1], filterMask: mask))
        }
        do {
            return try ChunkedStorage(shape: shape, chunkShape: chunk, elementSize: dtype.size, filters: filters,
                                      chunks: chunks, fileSize: file.size, what: what)
        } catch let e as ShardKitError {
            throw ShardKitError(.invalidHDF5File, e.message)
        }
    }
}

/// Reads a child's output to its end (or `limit` bytes) on a background thread; `done` is signalled
/// when it stops. `data` and `overflowed` are read only after `done`.
private final class ReportReader: @unchecked Sendable {
    let handle: FileHandle
    let limit: Int
    let done = DispatchSemaphore(value: 0)
    private(set) var data = Data()
    private(set) var overflowed = false

    init(_ handle: FileHandle, limit: Int) { self.handle = handle; self.limit = limit }

    func readAll() {
        defer { done.signal() }
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { return }
            data += chunk
            if data.count > limit { overflowed = true; return }
        }
    }
}
