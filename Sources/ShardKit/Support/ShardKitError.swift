/// Every failure ShardKit reports: a code to switch on and a one-line message that names the file or
/// tensor involved.
public struct ShardKitError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable {
        /// A file could not be opened, read, written or renamed (the message carries `strerror`).
        case io
        /// A safetensors file is malformed (bad header, offsets, dtype, sizes, truncated data).
        case invalidSafetensors
        /// A PyTorch checkpoint (`torch.save` zip) is malformed, uses a layout ShardKit does not read
        /// (legacy format, compressed records, non-contiguous tensors), or calls code.
        case invalidPyTorchFile
        /// An HDF5 file cannot be read, or holds a dataset ShardKit cannot read in place (chunked,
        /// compressed, big-endian, strings, ...).
        case invalidHDF5File
        /// A checkpoint directory is inconsistent (missing config, index naming missing files, ...).
        case invalidCheckpoint
        /// config.json is missing a key or names an unknown model type.
        case invalidConfig
        /// A split rule cannot be applied (heads not divisible, parts that do not add up, ...).
        case impossibleSplit
        /// A tensor matched no rule, or a rule matched no tensor.
        case unmatchedRule
        /// A rules file is malformed.
        case invalidRules
        /// A manifest is malformed or disagrees with the files it names.
        case invalidManifest
        /// Bytes do not match their recorded checksum.
        case checksumMismatch
        /// The output exists, is not a ShardKit directory, overlaps the input, or is in use by
        /// another run.
        case outputExists
        /// A caller asked for something that does not exist (tensor name, rank).
        case notFound
        /// A caller passed an argument the operation cannot use (a buffer of the wrong size).
        case invalidArgument
        /// A verification check failed.
        case verificationFailed
    }

    /// What the user can do about an error, named without any one front end's spelling: the CLI
    /// turns it into its flag ("pass --force to replace it"), a library caller into its option.
    public enum Remedy: Sendable, Equatable {
        /// Replacing the output (`ShardSetWriter.Options.force`, `--force`) would proceed.
        case force
        /// A rules file (`--rules`) describing the tensors would proceed.
        case rules
        /// The shard set was written in parts: finalize it once every rank exists.
        case finalize(directory: String)
        /// Rank `rank` of a set written in parts is missing: write it.
        case writeRank(Int)
    }

    public var code: Code
    public var message: String
    /// What would let the operation proceed, when something would.
    public var remedy: Remedy?
    /// The `errno` of the failed system call, for `.io` errors.
    public var errno: Int32?
    /// The error this one reports (a parser's own error), when there is one.
    public var underlying: (any Error)?

    /// Control characters in `message` (which may quote names read from a file: newlines, terminal
    /// escapes) are written as escapes, so that the message stays one printable line.
    public init(_ code: Code, _ message: String, remedy: Remedy? = nil, errno: Int32? = nil,
                underlying: (any Error)? = nil) {
        self.code = code
        self.message = ShardKitError.printable(message)
        self.remedy = remedy
        self.errno = errno
        self.underlying = underlying
    }

    /// Equal code, message and remedy (the cause is detail).
    public static func == (a: ShardKitError, b: ShardKitError) -> Bool {
        a.code == b.code && a.message == b.message && a.remedy == b.remedy
    }

    /// `s` with control characters written as `\xNN` / `\u{N}` escapes (for messages and tables
    /// that show names read from files).
    public static func printable(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return s }
        var out = ""
        for u in s.unicodeScalars {
            if u.properties.generalCategory == .control {
                let hex = String(u.value, radix: 16, uppercase: true)
                out += u.value < 0x100 ? "\\x" + String(repeating: "0", count: 2 - hex.count) + hex : "\\u{" + hex + "}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }

    public var description: String { message }
}

extension ShardKitError {
    static func io(_ what: String, path: String, errno code: Int32) -> ShardKitError {
        ShardKitError(.io, "\(path): \(what) failed: \(String(cString: strerror(code)))", errno: code)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
