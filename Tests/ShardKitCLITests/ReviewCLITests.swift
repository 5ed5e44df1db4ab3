import Foundation
import Testing
import ShardKit

@Suite("Review: CLI arguments that used to trap or be misread")
struct ReviewCLITests {
    @Test("--tp beyond the supported maximum is one error line, exit 1, nothing written")
    func hugeTP() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            for tp in ["9223372036854775807", "100000000000"] {
                expectCLIError(try CLI.run(["shard", Fixtures.path("llama-gqa"), "--tp", tp, "--out", out]), ["TP degree", tp])
                expectCLIError(try CLI.run(["plan", Fixtures.path("llama-gqa"), "--tp", tp]), ["TP degree"])
                #expect(!exists(out))
            }
        }
    }

    @Test("--max-file-size that overflows and --ranks with a negative rank are refused, not trapped or misread")
    func badWriteOptions() throws {
        try withTempDir { tmp in
            let out = tmp + "/out"
            let size = try CLI.run(["shard", Fixtures.path("llama-gqa"), "--tp", "2", "--out", out, "--max-file-size", "99999999999999G"])
            #expect(size.status != 0 && !size.signaled, "\(size)")
            #expect(size.stderr.contains("--max-file-size"))
            // "-1" used to be read as rank 1 (the empty piece before '-' was dropped).
            for ranks in ["-1", "1-", "0-99999999999"] {
                let r = try CLI.run(["shard", Fixtures.path("llama-gqa"), "--tp", "2", "--out", out, "--ranks=\(ranks)"])
                #expect(r.status != 0 && !r.signaled, "\(ranks): \(r)")
                #expect(r.stderr.contains("--ranks"), "\(ranks): \(r)")
            }
            #expect(!exists(out), "left behind: \(listFiles(out))")
        }
    }

    @Test("verify: config.json numbers that overflowed the reference pass are one error line, exit 1")
    func hostileConfig() throws {
        try withTempDir { tmp in
            for (fixture, key, value) in [("llama-gqa", "head_dim", "9223372036854775807"), ("phi3", "partial_rotary_factor", "1e300")] {
                let out = tmp + "/" + fixture
                #expect(try CLI.run(["shard", Fixtures.path(fixture), "--tp", "2", "--out", out]).status == 0)
                let path = out + "/config.json"
                var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
                json[key] = try JSONSerialization.jsonObject(with: Data(value.utf8), options: .fragmentsAllowed)
                try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
                expectCLIError(try CLI.run(["verify", out]), [key == "head_dim" ? "head_dim" : "rotary"])
            }
        }
    }
}
