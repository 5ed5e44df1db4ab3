// shardkit-fuzz: built with -D SHARDKIT_LIBFUZZER (and -sanitize=fuzzer,address) it is a libFuzzer
// binary whose target is chosen by the environment variable SHARDKIT_FUZZ_TARGET; otherwise it
// replays files: `shardkit-fuzz TARGET FILE_OR_DIR...`. See Fuzz/README.md.
import Foundation
import ShardKitFuzzTargets

#if SHARDKIT_LIBFUZZER

nonisolated(unsafe) private let selected: (UnsafeRawBufferPointer) -> Void = {
    let name = ProcessInfo.processInfo.environment["SHARDKIT_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTargets.target(name) else {
        FileHandle.standardError.write(Data(
            "set SHARDKIT_FUZZ_TARGET to one of: \(FuzzTargets.names.joined(separator: ", "))\n".utf8))
        exit(2)
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selected(UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size))
    return 0
}

/// libFuzzer's driver (compiler-rt, LLVM 11 and later).
@_silgen_name("LLVMFuzzerRunDriver")
private func runDriver(_ argc: UnsafeMutablePointer<CInt>,
                       _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                       _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// SwiftPM links executables on Linux with `--defsym main=<module>_main` (so that tests can link the
/// module), which would replace libFuzzer's `main`: this is that entry point, and it runs libFuzzer.
@_cdecl("ShardKitFuzz_main")
public func shardKitFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runDriver(&argc, &argv) { data, size in fuzzerTestOneInput(data, size) }
}

#else

@main
struct ShardKitFuzz {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard args.count >= 2, let target = FuzzTargets.target(args[0]) else {
            print("usage: shardkit-fuzz TARGET FILE_OR_DIR...\ntargets: \(FuzzTargets.names.joined(separator: ", "))")
            exit(64)
        }
        if !FuzzTargets.internalsReachable && ["zip", "pickle", "hdf5-report", "decoders"].contains(args[0]) {
            print("warning: built without -enable-testing, \(args[0]) is not reachable and does nothing")
        }
        var count = 0
        for arg in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: arg, isDirectory: &isDir) else {
                print("no such file: \(arg)"); exit(1)
            }
            let files = isDir.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: arg)) ?? []).sorted().map { arg + "/" + $0 }
                : [arg]
            for f in files {
                guard let data = FileManager.default.contents(atPath: f) else { continue }
                print("replaying \(f) (\(data.count) bytes)")
                data.withUnsafeBytes { target($0) }
                count += 1
            }
        }
        print("\(count) inputs replayed through \(args[0]), no crash")
    }
}

#endif
