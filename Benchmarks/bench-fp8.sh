#!/usr/bin/env bash
# FP8 block-quantized checkpoints: `shardkit shard --tp 4` of a ~0.8 GB FP8 checkpoint (F8_E4M3
# projections with 128×128 `weight_scale_inv`, made by make-fp8.py) against the ~0.8 GB BF16 one,
# each as a ratio to `cp -r` of itself; peak RSS of each.
#
#   Benchmarks/bench-fp8.sh
#   RUNS=5 SCRATCH=/tmp/sk Benchmarks/bench-fp8.sh
#
# See Benchmarks/README.md and the variables at the top of Benchmarks/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_gnu_time
build_shardkit
require_subcommand shard

BF16=$(ensure_checkpoint "$LAYERS")
FP8="$SCRATCH/llama-12L-fp8"
if [ ! -f "$FP8/config.json" ]; then
  log "generating $FP8"
  "$PYTHON" "$BENCH_DIR/make-fp8.py" --layers 12 --out "$FP8" >&2 || die "make-fp8.py failed"
fi
init_results
CP_DST="$SCRATCH/cp-out"
OUT="$SCRATCH/fp8-out"

echo "ShardKit FP8 shard benchmark ($(date -u +%FT%TZ))"
describe_build
echo "TP=$TP RUNS=$RUNS (+1 warm-up each, runs interleaved); page cache warm; output dirs removed + sync before each run (untimed)"
echo "bf16: $BF16 ($(gb "$BF16") GB)   fp8: $FP8 ($(gb "$FP8") GB)"

bench "$RUNS" \
  "cp-bf16" "rm -rf '$CP_DST'" "$(q cp -r "$BF16" "$CP_DST")" \
  "shard-bf16" "rm -rf '$OUT'" "$(q "$SHARDKIT" shard "$BF16" --tp "$TP" --out "$OUT" --force)" \
  "cp-fp8" "rm -rf '$CP_DST'" "$(q cp -r "$FP8" "$CP_DST")" \
  "shard-fp8" "rm -rf '$OUT'" "$(q "$SHARDKIT" shard "$FP8" --tp "$TP" --out "$OUT" --force)"
rm -rf "$CP_DST"

report "TP=$TP: BF16 ($(gb "$BF16") GB) and FP8 block ($(gb "$FP8") GB)" \
  "cp-bf16:cp -r (bf16)" "shard-bf16:shardkit shard (bf16)" "cp-fp8:cp -r (fp8)" "shard-fp8:shardkit shard (fp8)" \
  -- "bf16 shard/cp=shard-bf16/cp-bf16" "fp8 shard/cp=shard-fp8/cp-fp8"
echo "(raw per-run data and command logs: $RESULTS)"
