# Shared helpers for Benchmarks/bench-*.sh (sourced, not executed).
#
# Environment (all optional):
#   SCRATCH     scratch directory for checkpoints and outputs   (/tmp/shardkit-bench)
#   TP          tensor-parallel degree for `shard`               (4)
#   LAYERS      layers of the main synthetic checkpoint         (6   -> ~0.80 GB)
#   LAYERS_BIG  layers of the big checkpoint (RSS growth check)  (18  -> ~2.0 GB)
#   RUNS        timed runs per command (after one warm-up run)   (3)
#   SKIP_BUILD  1 = don't run `swift build`, use the existing binary
#   SHARDKIT    path of the shardkit binary   (<repo>/.build/release/shardkit)
#   PYTHON      python3 with numpy            (python3)

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SCRATCH=${SCRATCH:-/tmp/shardkit-bench}
TP=${TP:-4}
LAYERS=${LAYERS:-6}
LAYERS_BIG=${LAYERS_BIG:-18}
RUNS=${RUNS:-3}
PYTHON=${PYTHON:-python3}
SHARDKIT=${SHARDKIT:-$ROOT/.build/release/shardkit}

case "$SCRATCH" in
  "$ROOT"|"$ROOT"/*) echo "error: SCRATCH=$SCRATCH is inside the repository; use /tmp" >&2; exit 2 ;;
esac

die() { echo "error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

# GNU time is needed for "Maximum resident set size" (-v).
ensure_gnu_time() {
  if /usr/bin/time -v true >/dev/null 2>&1; then return; fi
  log "/usr/bin/time (GNU time) missing: installing the Debian package 'time'"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y time >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y time >/dev/null; } \
    || die "could not install GNU time (apt-get install time)"
  /usr/bin/time -v true >/dev/null 2>&1 || die "/usr/bin/time -v still not working"
}

build_shardkit() {
  if [ "${SKIP_BUILD:-0}" = 1 ]; then
    log "SKIP_BUILD=1: using $SHARDKIT"
    BUILD_INFO="existing binary $SHARDKIT, $(date -u -r "$SHARDKIT" '+modified %F %TZ'); repo HEAD now $(repo_rev)"
  else
    log "swift build -c release --product shardkit  (in $ROOT)"
    mkdir -p "$SCRATCH"
    BUILD_INFO="built now from repo HEAD $(repo_rev) (Sources/ as of $(date -u +%T)Z)"
    if ! (cd "$ROOT" && swift build -c release --product shardkit) >"$SCRATCH/build.log" 2>&1; then
      tail -n 30 "$SCRATCH/build.log" >&2
      die "release build failed (full log: $SCRATCH/build.log)"
    fi
  fi
  [ -x "$SHARDKIT" ] || die "$SHARDKIT not found"
  # Benchmark a private copy, so a concurrent rebuild can't swap the binary mid-run.
  if [ "$(realpath "$SHARDKIT")" != "$(realpath -m "$SCRATCH/bin/shardkit")" ]; then
    mkdir -p "$SCRATCH/bin"
    cp -p "$SHARDKIT" "$SCRATCH/bin/shardkit.$$"
    mv -f "$SCRATCH/bin/shardkit.$$" "$SCRATCH/bin/shardkit"
    log "benchmarking $SHARDKIT (copied to $SCRATCH/bin/shardkit, $(date -r "$SHARDKIT" '+built %F %T'))"
    SHARDKIT="$SCRATCH/bin/shardkit"
  fi
}

# require_subcommand NAME: fail clearly if `shardkit NAME --help` fails.  (Swift
# ArgumentParser answers an unknown subcommand's --help with the top-level help
# and exit 0, so the USAGE line must name the subcommand too.)
require_subcommand() {
  local out
  if ! out=$("$SHARDKIT" "$1" --help 2>&1) || ! grep -q "^USAGE: shardkit $1\b" <<<"$out"; then
    echo "$out" | head -n 20 >&2
    die "\`shardkit $1 --help\` failed: the '$1' subcommand is not available in this build ($SHARDKIT)"
  fi
}

# ensure_checkpoint LAYERS -> prints the checkpoint directory (generated once, then reused)
ensure_checkpoint() {
  local dir="$SCRATCH/llama-${1}L"
  if [ -f "$dir/model.safetensors.index.json" ] && [ -f "$dir/config.json" ]; then
    log "reusing $dir"
  else
    mkdir -p "$SCRATCH"
    log "generating $dir"
    "$PYTHON" "$BENCH_DIR/make_checkpoint.py" --layers "$1" --out "$dir" --force >&2 \
      || die "make_checkpoint.py failed"
  fi
  echo "$dir"
}

gb() { du -sb "$1" | awk '{printf "%.3f", $1/1e9}'; }

repo_rev() {
  local rev dirty=""
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
  [ -z "$(git -C "$ROOT" status --porcelain -- Sources Package.swift 2>/dev/null)" ] || dirty="+dirty"
  echo "$rev$dirty"
}

describe_build() {
  echo "shardkit $("$SHARDKIT" --version 2>/dev/null || echo "?"): $BUILD_INFO"
  echo "machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GB RAM, load avg $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -r)"
  echo "scratch: $SCRATCH ($(df -h "$SCRATCH" | awk 'NR==2{print $1", "$4" free"}'))"
}

RESULTS=""
BUILD_INFO="?"
init_results() {
  RESULTS=$(mktemp -d "$SCRATCH/results.XXXXXX")
}

# q CMD [ARGS...]: print the command as one shell-quoted string (for bench).
q() { printf '%q ' "$@"; }

# measure NAME PREP CMDSTR
#   Runs PREP (a shell snippet, untimed: typically removing the output directory),
#   then `sync` (untimed: flush earlier writes so they don't land in this run),
#   then CMDSTR (from `q ...`) under /usr/bin/time -v.  Appends
#   "<ns> <maxrss_kb> <rc>" to $RESULTS/NAME.data; the command's stdout+stderr go
#   to $RESULTS/NAME.<run>.log.  A non-zero exit prints the log and dies.
measure() {
  local name=$1 prep=$2 cmdstr=$3
  local -a argv
  eval "argv=($cmdstr)"
  local n tf t0 t1 rc=0 rss
  eval "$prep"
  sync
  n=$(( $( [ -f "$RESULTS/$name.data" ] && wc -l <"$RESULTS/$name.data" || echo 0) + 1 ))
  tf="$RESULTS/$name.$n.time"
  t0=$(date +%s%N)
  /usr/bin/time -v -o "$tf" "${argv[@]}" >"$RESULTS/$name.$n.log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  if [ "$rc" -ne 0 ]; then
    echo "---- output of: ${argv[*]} (exit $rc)" >&2
    tail -n 40 "$RESULTS/$name.$n.log" >&2
    die "'${argv[*]}' exited with status $rc"
  fi
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$tf")
  echo "$((t1 - t0)) $rss $rc" >>"$RESULTS/$name.data"
  printf '    %-14s run %d: %7.3f s  %8.1f MB RSS\n' "$name" "$n" \
    "$(echo "$((t1 - t0))" | awk '{print $1/1e9}')" "$(echo "$rss" | awk '{print $1/1024}')" >&2
}

# bench RUNS NAME PREP CMDSTR [NAME PREP CMDSTR ...]
#   One untimed warm-up run of each command (warms the page cache), then RUNS
#   rounds in which every command is timed once, interleaved (A B C A B C ...) so
#   that slow drift of the machine (other jobs, host I/O) hits all of them alike.
bench() {
  local runs=$1; shift
  local -a spec=("$@")
  local i j
  for ((j = 0; j < ${#spec[@]}; j += 3)); do
    local name=${spec[j]} prep=${spec[j+1]} cmdstr=${spec[j+2]}
    local -a argv
    eval "argv=($cmdstr)"
    eval "$prep"; sync
    local rc=0
    "${argv[@]}" >"$RESULTS/$name.warmup.log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "---- output of: ${argv[*]} (exit $rc)" >&2
      tail -n 40 "$RESULTS/$name.warmup.log" >&2
      die "warm-up run of '${argv[*]}' exited with status $rc"
    fi
  done
  for ((i = 1; i <= runs; i++)); do
    for ((j = 0; j < ${#spec[@]}; j += 3)); do
      measure "${spec[j]}" "${spec[j+1]}" "${spec[j+2]}"
    done
  done
}

# report TITLE NAME:LABEL... [-- RATIO_SPEC...]
#   RATIO_SPEC is "label=NUM/DEN" (names); ratios use medians.
report() {
  "$PYTHON" - "$RESULTS" "$@" <<'PY'
import statistics, sys
res, title, args = sys.argv[1], sys.argv[2], sys.argv[3:]
rows, ratios = [], []
if "--" in args:
    i = args.index("--"); args, ratios = args[:i], args[i + 1:]
data = {}
def load(name):
    if name not in data:
        rs = [l.split() for l in open(f"{res}/{name}.data")]
        data[name] = ([int(r[0]) / 1e9 for r in rs], [int(r[1]) / 1024 for r in rs])
    return data[name]
print(f"\n{title}")
print(f"  {'command':<44} {'median s':>9} {'min..max s':>15} {'spread':>7}  {'peak RSS MB (runs)':<24}")
for a in args:
    name, label = a.split(":", 1)
    t, m = load(name)
    med = statistics.median(t)
    spread = (max(t) - min(t)) / med * 100 if med else 0
    print(f"  {label:<44} {med:9.3f} {min(t):7.3f}..{max(t):<7.3f} {spread:6.1f}%  "
          f"{statistics.median(m):7.1f} ({', '.join(f'{x:.1f}' for x in m)})")
    print(f"  {'':<44} runs: {', '.join(f'{x:.3f}' for x in t)}")
for r in ratios:
    label, expr = r.split("=", 1)
    num, den = expr.split("/")
    n, d = statistics.median(load(num)[0]), statistics.median(load(den)[0])
    print(f"  ratio {label:<38} {n / d:9.2f}x")
PY
}
