import Foundation

/// The Hugging Face hub cache on this machine, offline: `hf-cache:ORG/NAME[@REV]` names the snapshot
/// directory `<cache>/models--ORG--NAME/snapshots/<commit>/` that `huggingface_hub` downloaded, whose
/// files are links into `../../blobs/`. Nothing is ever downloaded.
///
/// The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub` (huggingface_hub's own order). Without `@REV` the revision is
/// `refs/main`; `@REV` is a branch or tag (looked up in `refs/`) or a full 40-digit commit hash.
public enum HFCache {
    public static let scheme = "hf-cache:"

    /// The snapshot directory `spec` names, or nil when `spec` does not start with `hf-cache:`.
    /// Throws, with what is missing and where it was looked for, when the repository, the revision
    /// or the snapshot is not in the cache, or when a file of the snapshot is a dangling link.
    public static func resolve(_ spec: String,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        guard spec.hasPrefix(scheme) else { return nil }
        let body = String(spec.dropFirst(scheme.count))
        let (repo, revision): (String, String?)
        if let at = body.lastIndex(of: "@") {
            (repo, revision) = (String(body[..<at]), String(body[body.index(after: at)...]))
        } else {
            (repo, revision) = (body, nil)
        }
        let parts = repo.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy(isSafeName) else {
            throw ShardKitError(.invalidArgument, "\(spec): expected hf-cache:ORG/NAME or hf-cache:ORG/NAME@REVISION")
        }
        let root = cacheRoot(environment)
        let repoDirectory = Path.join(root, "models--\(parts[0])--\(parts[1])")
        guard FileSystem.isDirectory(repoDirectory) else {
            throw ShardKitError(.notFound, "\(spec): \(repo) is not in the Hugging Face cache (no \(repoDirectory)); "
                                           + "download it first, e.g. `hf download \(repo)`, or set HF_HUB_CACHE")
        }
        let commit: String
        if let revision, isCommitHash(revision) {
            commit = revision
        } else {
            let ref = revision ?? "main"
            let components = ref.split(separator: "/", omittingEmptySubsequences: false)
            guard !ref.isEmpty, components.allSatisfy(isSafeName) else {
                throw ShardKitError(.invalidArgument, "\(spec): revision \(ref) is not a branch, tag or commit name")
            }
            let refFile = Path.join(repoDirectory, "refs/\(ref)")
            guard FileSystem.exists(refFile) else {
                throw ShardKitError(.notFound, "\(spec): revision \(ref) is not in the cache (no \(refFile))")
            }
            // A regular file of one hash (ReadOnlyFile refuses FIFOs and devices), read with a limit.
            let text = String(decoding: try ReadOnlyFile(path: refFile).readAll(limit: 4096, what: "a refs file"),
                              as: UTF8.self)
            let hash = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard isCommitHash(hash) else {
                throw ShardKitError(.invalidCheckpoint, "\(refFile): does not hold a commit hash")
            }
            commit = hash
        }
        let snapshot = Path.join(repoDirectory, "snapshots/\(commit)")
        guard FileSystem.isDirectory(snapshot) else {
            throw ShardKitError(.notFound, "\(spec): snapshot \(commit) is not in the cache (no \(snapshot))")
        }
        try checkLinks(snapshot)
        return snapshot
    }

    /// The hub cache directory, by huggingface_hub's rules.
    public static func cacheRoot(_ environment: [String: String]) -> String {
        if let hub = environment["HF_HUB_CACHE"], !hub.isEmpty { return hub }
        if let home = environment["HF_HOME"], !home.isEmpty { return Path.join(home, "hub") }
        if let xdg = environment["XDG_CACHE_HOME"], !xdg.isEmpty { return Path.join(xdg, "huggingface/hub") }
        let user = environment["HOME"] ?? NSHomeDirectory()
        return Path.join(user, ".cache/huggingface/hub")
    }

    /// Every link of the snapshot (files are links into `blobs/`) must lead to a file: a dangling one is
    /// an interrupted or pruned download.
    static func checkLinks(_ snapshot: String) throws {
        for name in try FileSystem.list(snapshot).sorted() {
            let path = Path.join(snapshot, name)
            if FileSystem.entryExists(path) && !FileSystem.exists(path) {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
                throw ShardKitError(.notFound, "\(path): a link to \(target), which does not exist (an interrupted "
                                               + "or pruned download?); download the revision again")
            }
        }
    }

    static func isCommitHash(_ s: String) -> Bool {
        s.utf8.count == 40 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// A path component that stays where it is put: not empty, not `.`/`..`, no `/` or NUL.
    static func isSafeName<S: StringProtocol>(_ s: S) -> Bool {
        !s.isEmpty && s != "." && s != ".." && !s.contains("/") && !s.utf8.contains(0)
    }
}
