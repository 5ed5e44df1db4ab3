#!/usr/bin/env bash
# Pipeline stages: `shardkit shard` and `reshard` at (TP, PP, EP) = (2, 2, 1) against TP alone
# (TP 4, the same number of ranks) and against `cp -r`, on the synthetic ~0.8 GB Llama BF16
# checkpoint; peak RSS of each.
#
#   Benchmarks/bench-pp.sh
#   RUNS=5 SCRATCH=/tmp/sk Benchmarks/bench-pp.sh
#
# See Benchmarks/README.md and the variables at the top of Benchmarks/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_gnu_time
build_shardkit
require_subcommand shard

SRC=$(ensure_checkpoint "$LAYERS")
init_results
CP_DST="$SCRATCH/cp-out"
TP4="$SCRATCH/pp-tp4"
PP2="$SCRATCH/pp-tp2pp2"
R_TP4="$SCRATCH/pp-reshard-tp4"
R_PP2="$SCRATCH/pp-reshard-tp2pp2"
log "inputs for the reshards (untimed)"
"$SHARDKIT" shard "$SRC" --tp 4 --out "$SCRATCH/pp-in-tp4" --force >/dev/null
"$SHARDKIT" shard "$SRC" --tp 2 --pp 2 --out "$SCRATCH/pp-in-tp2pp2" --force >/dev/null

echo "ShardKit pipeline-stage benchmark ($(date -u +%FT%TZ))"
describe_build
echo "RUNS=$RUNS (+1 warm-up each, runs interleaved); page cache warm; output dirs removed + sync before each run (untimed)"
echo "source: $SRC ($(gb "$SRC") GB)"
echo "commands:"
echo "  cp -r $SRC $CP_DST"
echo "  $SHARDKIT shard $SRC --tp 4 --out $TP4 --force"
echo "  $SHARDKIT shard $SRC --tp 2 --pp 2 --out $PP2 --force"
echo "  $SHARDKIT reshard $SCRATCH/pp-in-tp2pp2 --tp 4 --out $R_TP4 --force        ((2,2,1) -> (4,1,1))"
echo "  $SHARDKIT reshard $SCRATCH/pp-in-tp4 --tp 2 --pp 2 --out $R_PP2 --force    ((4,1,1) -> (2,2,1))"
echo "  $SHARDKIT reshard $SCRATCH/pp-in-tp4 --tp 2 --out $R_PP2 --force           (TP alone: 4 -> 2)"

bench "$RUNS" \
  "cp" "rm -rf '$CP_DST'" "$(q cp -r "$SRC" "$CP_DST")" \
  "shard-tp4" "rm -rf '$TP4'" "$(q "$SHARDKIT" shard "$SRC" --tp 4 --out "$TP4" --force)" \
  "shard-pp2" "rm -rf '$PP2'" "$(q "$SHARDKIT" shard "$SRC" --tp 2 --pp 2 --out "$PP2" --force)" \
  "reshard-to-tp4" "rm -rf '$R_TP4'" "$(q "$SHARDKIT" reshard "$SCRATCH/pp-in-tp2pp2" --tp 4 --out "$R_TP4" --force)" \
  "reshard-to-pp2" "rm -rf '$R_PP2'" "$(q "$SHARDKIT" reshard "$SCRATCH/pp-in-tp4" --tp 2 --pp 2 --out "$R_PP2" --force)" \
  "reshard-tp2" "rm -rf '$R_PP2'" "$(q "$SHARDKIT" reshard "$SCRATCH/pp-in-tp4" --tp 2 --out "$R_PP2" --force)"
rm -rf "$CP_DST"

report "llama-${LAYERS}L ($(gb "$SRC") GB): (TP, PP) = (2, 2) vs TP 4 vs cp -r" \
  "cp:cp -r" "shard-tp4:shard --tp 4" "shard-pp2:shard --tp 2 --pp 2" \
  "reshard-to-tp4:reshard (2,2,1) -> (4,1,1)" "reshard-to-pp2:reshard (4,1,1) -> (2,2,1)" \
  "reshard-tp2:reshard TP 4 -> 2" \
  -- "shard tp4/cp=shard-tp4/cp" "shard tp2 pp2/cp=shard-pp2/cp" \
     "reshard ->(4,1,1)/cp=reshard-to-tp4/cp" "reshard ->(2,2,1)/cp=reshard-to-pp2/cp" "reshard 4->2/cp=reshard-tp2/cp"
echo "(raw per-run data and command logs: $RESULTS)"
