// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "ShardKit",
    products: [
        .library(name: "ShardKit", targets: ["ShardKit"]),
        .library(name: "ShardKitReference", targets: ["ShardKitReference"]),
        .executable(name: "shardkit", targets: ["ShardKitCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .target(name: "CShardKitSupport"),
        .target(name: "ShardKit", dependencies: ["CShardKitSupport"]),
        .target(name: "ShardKitReference", dependencies: ["ShardKit", "COpenBLAS"]),
        .executableTarget(
            name: "ShardKitCLI",
            dependencies: [
                "ShardKit", "ShardKitReference",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
            ]),
        .executableTarget(name: "LoaderExample", dependencies: ["ShardKit"], path: "Examples/LoaderExample"),
        .target(name: "ShardKitTestSupport", path: "Tests/ShardKitTestSupport"),
        .testTarget(name: "ShardKitTests", dependencies: ["ShardKit", "ShardKitTestSupport"]),
        .testTarget(name: "ShardKitReferenceTests", dependencies: ["ShardKitReference", "ShardKit", "ShardKitTestSupport"]),
        .testTarget(name: "ShardKitCLITests", dependencies: ["ShardKitCLI", "ShardKit", "LoaderExample", "ShardKitTestSupport"]),
    ]
)
