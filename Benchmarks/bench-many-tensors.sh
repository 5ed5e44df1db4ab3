#!/usr/bin/env bash
# Per-tensor cost of shardkit: a valid safetensors file of N one-byte U8 tensors (default 1,000,000,
# ~68 MB, almost all of it header), every tensor `replicated`, through `plan`, `shard`, `reshard` and
# `verify --source`: wall time and peak RSS of each. The data is negligible, so what is measured is
# the cost per tensor (header parsing, planning, per-piece file work, the manifest's JSON).
#
#   Benchmarks/bench-many-tensors.sh              # N = 1,000,000 (several minutes per command today)
#   Benchmarks/bench-many-tensors.sh 100000       # N as an argument ...
#   N=100000 RUNS=3 Benchmarks/bench-many-tensors.sh   # ... or from the environment
#
# Environment (besides lib.sh's SCRATCH, RUNS, SKIP_BUILD, SHARDKIT, PYTHON):
#   N            number of tensors                                   (1000000)
#   TP_SHARD     TP degree of `shard` (and of the verified shard set) (2)
#   TP_RESHARD   TP degree `reshard` converts that shard set to      (4)
#   BUILD_PATH   swift build --scratch-path for the release binary   (<repo>/.build-bench, so as not to
#                disturb someone else's .build; SHARDKIT defaults to BUILD_PATH/release/shardkit)
#   RUNS         timed runs per command, no warm-up                  (1; the source is in the page cache
#                anyway, having just been written or read)
#
# Only python3's standard library is needed to make the checkpoint. Commands:
#   shardkit plan    SRC --tp TP_SHARD --rules RULES
#   shardkit shard   SRC --tp TP_SHARD --rules RULES --out OUT --force
#   shardkit reshard OUT --tp TP_RESHARD --out OUT2 --force
#   shardkit verify  OUT --source SRC --no-numerics
# (--no-numerics: the tensors are U8 and replicated, so the generic linear check has nothing to check
# and refuses; the byte-level checks, integrity and reconstruction, are what scale with the tensor count.)
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_PATH=${BUILD_PATH:-$BENCH_ROOT/.build-bench}
SHARDKIT=${SHARDKIT:-$BUILD_PATH/release/shardkit}
RUNS=${RUNS:-1}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-${N:-1000000}}
TP_SHARD=${TP_SHARD:-2}
TP_RESHARD=${TP_RESHARD:-4}
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"

ensure_gnu_time

# The release build, in its own scratch path (lib.sh's build_shardkit builds into .build).
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "swift build -c release --product shardkit --scratch-path $BUILD_PATH  (in $ROOT)"
  mkdir -p "$SCRATCH"
  if ! (cd "$ROOT" && swift build -c release --product shardkit --scratch-path "$BUILD_PATH") >"$SCRATCH/build-many.log" 2>&1; then
    tail -n 30 "$SCRATCH/build-many.log" >&2
    die "release build failed (full log: $SCRATCH/build-many.log); if Sources/ is mid-edit, retry later or build a clean checkout (git worktree add /tmp/sk-head HEAD) and pass SHARDKIT=/tmp/sk-head/.build-bench/release/shardkit SKIP_BUILD=1"
  fi
  BUILT_NOW="built now with --scratch-path $BUILD_PATH from repo HEAD $(repo_rev) (Sources/ as of $(date -u +%T)Z)"
fi
SKIP_BUILD=1 build_shardkit   # checks the binary and benchmarks a private copy of it
[ -z "${BUILT_NOW:-}" ] || BUILD_INFO=$BUILT_NOW
for c in plan shard reshard verify; do require_subcommand "$c"; done

# The checkpoint: model.safetensors (N tensors "t.000000" ..., U8, shape [1]), config.json, and the
# rules file (outside the checkpoint directory). Made once per N, then reused.
SRC="$SCRATCH/many-$N"
RULES="$SCRATCH/many-rules.json"
if [ -f "$SRC/model.safetensors" ] && [ -f "$SRC/config.json" ] && [ -f "$SRC/.complete" ]; then
  log "reusing $SRC"
else
  log "generating $SRC ($N tensors)"
  rm -rf "$SRC" "$SRC.partial"
  mkdir -p "$SRC.partial"
  "$PYTHON" - "$SRC.partial" "$N" <<'PY' || die "generating the checkpoint failed"
import json, os, struct, sys
out, n = sys.argv[1], int(sys.argv[2])
width = max(6, len(str(n - 1)))
# Header: {"__metadata__": {...}, "t.000000": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, ...}
parts = ['{"__metadata__":{"format":"pt"}']
for i in range(n):
    parts.append(f',"t.{i:0{width}d}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}')
parts.append("}")
header = "".join(parts).encode()
header += b" " * (-(8 + len(header)) % 8)          # pad to a multiple of 8, like safetensors does
data = bytes(i % 251 for i in range(n))
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    f.write(data)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"model_type": "many_tensors_bench", "architectures": ["ManyTensorsBench"],
               "torch_dtype": "uint8", "num_tensors": n}, f, indent=2)
    f.write("\n")
# Check what was written: length prefix, JSON, offsets tiling the data area to the end of the file.
with open(os.path.join(out, "model.safetensors"), "rb") as f:
    (hl,) = struct.unpack("<Q", f.read(8))
    h = json.loads(f.read(hl))
    rest = f.read()
assert hl % 8 == 0 and len(h) == n + 1 and len(rest) == n
cursor = 0
for name, e in h.items():
    if name == "__metadata__":
        continue
    assert e["dtype"] == "U8" and e["shape"] == [1] and e["data_offsets"] == [cursor, cursor + 1], name
    cursor += 1
assert cursor == n
print(f"wrote {out}/model.safetensors: {n} tensors, header {hl} bytes, file {8 + hl + n} bytes", file=sys.stderr)
PY
  mv "$SRC.partial" "$SRC"
  touch "$SRC/.complete"   # outside Checkpoint's list of carried files; marks a finished generation
fi
echo '{"description": "bench-many-tensors: every tensor replicated", "rules": [{"pattern": "**", "rule": "replicated"}]}' >"$RULES"

init_results
OUT="$SCRATCH/many-$N-tp$TP_SHARD"
OUT2="$SCRATCH/many-$N-tp$TP_RESHARD"

echo "ShardKit many-tensors benchmark ($(date -u +%FT%TZ))"
describe_build
echo "source: $SRC/model.safetensors ($N tensors of 1 byte, U8, replicated; $(du -b "$SRC/model.safetensors" | cut -f1) bytes)"
echo "RUNS=$RUNS (no warm-up; the source was just written or read, so it is in the page cache); output dirs removed + sync before each run (untimed)"
echo "commands:"
echo "  $SHARDKIT plan $SRC --tp $TP_SHARD --rules $RULES"
echo "  $SHARDKIT shard $SRC --tp $TP_SHARD --rules $RULES --out $OUT --force"
echo "  $SHARDKIT reshard $OUT --tp $TP_RESHARD --out $OUT2 --force"
echo "  $SHARDKIT verify $OUT --source $SRC --no-numerics"

for ((i = 1; i <= RUNS; i++)); do
  measure plan ":" "$(q "$SHARDKIT" plan "$SRC" --tp "$TP_SHARD" --rules "$RULES")"
  measure shard "rm -rf '$OUT'" "$(q "$SHARDKIT" shard "$SRC" --tp "$TP_SHARD" --rules "$RULES" --out "$OUT" --force)"
  measure reshard "rm -rf '$OUT2'" "$(q "$SHARDKIT" reshard "$OUT" --tp "$TP_RESHARD" --out "$OUT2" --force)"
  measure verify ":" "$(q "$SHARDKIT" verify "$OUT" --source "$SRC" --no-numerics)"
  # plan prints one line per tensor: keep the head and tail of its output, not N lines per run.
  f="$RESULTS/plan.$i.log"
  { head -n 3 "$f"; echo "... ($(wc -l <"$f") lines)"; tail -n 4 "$f"; } >"$f.short" && mv "$f.short" "$f"
done
grep -q PASSED "$RESULTS/verify.1.log" || { cat "$RESULTS/verify.1.log" >&2; die "verify did not pass"; }
echo "outputs: tp$TP_SHARD $(du -sb "$OUT" | cut -f1) bytes (manifest.json $(stat -c %s "$OUT/manifest.json") bytes);" \
     "tp$TP_RESHARD $(du -sb "$OUT2" | cut -f1) bytes (manifest.json $(stat -c %s "$OUT2/manifest.json") bytes)"

# The binary's own footprint, to subtract from the peak RSS figures below.
/usr/bin/time -v -o "$RESULTS/baseline.time" "$SHARDKIT" --version >/dev/null
BASE_KB=$(awk -F': ' '/Maximum resident set size/{print $2}' "$RESULTS/baseline.time")

report "$N one-byte tensors, replicated (shard tp $TP_SHARD, reshard tp $TP_SHARD -> $TP_RESHARD)" \
  "plan:plan --tp $TP_SHARD" "shard:shard --tp $TP_SHARD" "reshard:reshard --tp $TP_RESHARD" \
  "verify:verify --source --no-numerics"
"$PYTHON" - "$RESULTS" "$N" "$BASE_KB" <<'PY'
import statistics, sys
res, n, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) * 1024
print(f"\nper tensor (medians; RSS above the {base / 2**20:.1f} MB of `shardkit --version`):")
for name in ("plan", "shard", "reshard", "verify"):
    rs = [l.split() for l in open(f"{res}/{name}.data")]
    t = statistics.median(int(r[0]) for r in rs) / 1e9
    m = statistics.median(int(r[1]) for r in rs) * 1024
    print(f"  {name:<8} {t / n * 1e6:8.2f} us   {max(0, m - base) / n:8.0f} bytes of peak RSS")
PY
echo "(raw per-run data, /usr/bin/time -v output and command logs: $RESULTS)"
