// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "ShardKit",
    products: [
        .library(name: "ShardKit", targets: ["ShardKit"]),
        .library(name: "ShardKitReference", targets: ["ShardKitReference"]),
        .library(name: "ShardKitHDF5", targets: ["ShardKitHDF5"]),
        .executable(name: "shardkit", targets: ["ShardKitCLI"]),
        .executable(name: "shardkit-fuzz", targets: ["ShardKitFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "CShardKitSupport"),
        .target(name: "ShardKit", dependencies: ["CShardKitSupport", "CZlib"]),
        .target(name: "ShardKitReference", dependencies: ["ShardKit", "COpenBLAS"]),
        .target(name: "ShardKitHDF5", dependencies: ["ShardKit", "CHDF5"]),
        .executableTarget(
            name: "ShardKitCLI",
            dependencies: [
                "ShardKit", "ShardKitReference", "ShardKitHDF5",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
            ]),
        // Fuzzing (Fuzz/README.md): one target function per parser of untrusted bytes, and the
        // libFuzzer / replay binary.
        .target(name: "ShardKitFuzzTargets", dependencies: ["ShardKit", "ShardKitHDF5"]),
        .executableTarget(name: "ShardKitFuzz", dependencies: ["ShardKitFuzzTargets"]),
        .executableTarget(name: "LoaderExample", dependencies: ["ShardKit"], path: "Examples/LoaderExample"),
        .target(name: "ShardKitTestSupport", dependencies: ["ShardKit"], path: "Tests/ShardKitTestSupport"),
        .testTarget(name: "ShardKitTests", dependencies: ["ShardKit", "ShardKitTestSupport"]),
        .testTarget(name: "ShardKitHDF5Tests", dependencies: ["ShardKitHDF5", "ShardKit", "ShardKitTestSupport"]),
        .testTarget(name: "ShardKitReferenceTests", dependencies: ["ShardKitReference", "ShardKit", "ShardKitTestSupport"]),
        .testTarget(name: "ShardKitFuzzTests", dependencies: ["ShardKitFuzzTargets"]),
        .testTarget(name: "ShardKitCLITests", dependencies: ["ShardKitCLI", "ShardKit", "LoaderExample", "ShardKitTestSupport"]),
    ]
)
