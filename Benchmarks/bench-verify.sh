#!/usr/bin/env bash
# Benchmark `shardkit verify OUT --source SRC --tokens 16` on a TP-$TP shard set of
# the synthetic checkpoint: wall time and peak RSS, plus verify's own output, then one run with
# --sgemm-baseline for the matrix-product rate as a fraction of square cblas_sgemm.
#
#   Benchmarks/bench-verify.sh
#   TOKENS=32 RUNS=1 Benchmarks/bench-verify.sh
#
# The shard set is made (untimed) with `shardkit shard SRC --tp $TP`.
# A verify that exits non-zero is reported (output + status) and fails the script.
# See Benchmarks/README.md and the variables at the top of Benchmarks/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TOKENS=${TOKENS:-16}

ensure_gnu_time
build_shardkit
require_subcommand shard
require_subcommand verify
init_results

SRC=$(ensure_checkpoint "$LAYERS")
OUT="$SCRATCH/verify-in-tp$TP"
log "making the shard set (untimed): shardkit shard $SRC --tp $TP --out $OUT --force"
"$SHARDKIT" shard "$SRC" --tp "$TP" --out "$OUT" --force >/dev/null || die "shardkit shard failed"

echo "ShardKit verify benchmark ($(date -u +%FT%TZ))"
describe_build
echo "source: $SRC ($(gb "$SRC") GB); shards: $OUT (TP=$TP); RUNS=$RUNS (+1 warm-up); page cache warm"
echo "commands:"
echo "  timed:     $SHARDKIT verify $OUT --source $SRC --tokens $TOKENS"
echo "  then once: the same with --sgemm-baseline (adds ~2 s of square sgemm; its rate line is quoted below)"

bench "$RUNS" verify ":" "$(q "$SHARDKIT" verify "$OUT" --source "$SRC" --tokens "$TOKENS")"

echo
echo "---- output of the first timed run:"
cat "$RESULTS/verify.1.log"
echo "----"
"$SHARDKIT" verify "$OUT" --source "$SRC" --tokens "$TOKENS" --sgemm-baseline >"$RESULTS/verify.baseline.log" 2>&1 \
  || { cat "$RESULTS/verify.baseline.log" >&2; die "verify --sgemm-baseline failed"; }
echo "---- matrix products (separate run with --sgemm-baseline):"
grep -E "matrix products|square cblas_sgemm" "$RESULTS/verify.baseline.log"
echo "----"
report "verify (TP=$TP, $TOKENS tokens, source $(gb "$SRC") GB)" "verify:shardkit verify --source --tokens $TOKENS"
echo "(raw per-run data and command logs: $RESULTS)"
