#!/usr/bin/env bash
# Benchmark `shardkit shard` against `cp -r` on a synthetic Llama BF16 checkpoint,
# and check that shardkit's peak RSS does not grow with model size.
#
#   Benchmarks/bench-shard.sh
#   TP=8 LAYERS_BIG=12 RUNS=5 SCRATCH=/tmp/sk Benchmarks/bench-shard.sh
#
# See Benchmarks/README.md and the variables at the top of Benchmarks/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_gnu_time
build_shardkit
require_subcommand shard

SRC=$(ensure_checkpoint "$LAYERS")
BIG=$(ensure_checkpoint "$LAYERS_BIG")
init_results
CP_DST="$SCRATCH/cp-out"
OUT="$SCRATCH/shard-out-tp$TP"

echo "ShardKit shard benchmark ($(date -u +%FT%TZ))"
describe_build
echo "TP=$TP RUNS=$RUNS (+1 warm-up each, runs interleaved); page cache warm; output dirs removed + sync before each run (untimed)"
echo "small: $SRC ($(gb "$SRC") GB)   big: $BIG ($(gb "$BIG") GB)"
echo "commands:"
echo "  cp -r $SRC $CP_DST"
echo "  bash -c 'cp -r $SRC $CP_DST && sync'"
echo "  $SHARDKIT shard $SRC --tp $TP --out $OUT --force"
echo "  $SHARDKIT shard $SRC --tp $TP --out $OUT --force --no-sync   (no fsync, like cp -r)"

for model in small big; do
  if [ $model = small ]; then M=$SRC; else M=$BIG; fi
  log "$model model: $M"
  bench "$RUNS" \
    "cp-$model" "rm -rf '$CP_DST'" "$(q cp -r "$M" "$CP_DST")" \
    "cpsync-$model" "rm -rf '$CP_DST'" "$(q bash -c "cp -r '$M' '$CP_DST' && sync")" \
    "shard-$model" "rm -rf '$OUT'" "$(q "$SHARDKIT" shard "$M" --tp "$TP" --out "$OUT" --force)" \
    "nosync-$model" "rm -rf '$OUT'" "$(q "$SHARDKIT" shard "$M" --tp "$TP" --out "$OUT" --force --no-sync)"
  echo "  $model: shard output $(gb "$OUT") GB in $(find "$OUT" -type f | wc -l) files ($(find "$OUT" -name '*.safetensors' | wc -l) .safetensors)"
done
rm -rf "$CP_DST"

report "llama-${LAYERS}L ($(gb "$SRC") GB), TP=$TP" \
  "cp-small:cp -r" "cpsync-small:cp -r && sync" "shard-small:shardkit shard --tp $TP" "nosync-small:shardkit shard --tp $TP --no-sync" \
  -- "shard/(cp+sync)=shard-small/cpsync-small" "shard --no-sync/cp=nosync-small/cp-small" "shard/cp=shard-small/cp-small"
report "llama-${LAYERS_BIG}L ($(gb "$BIG") GB), TP=$TP" \
  "cp-big:cp -r" "cpsync-big:cp -r && sync" "shard-big:shardkit shard --tp $TP" "nosync-big:shardkit shard --tp $TP --no-sync" \
  -- "shard/(cp+sync)=shard-big/cpsync-big" "shard --no-sync/cp=nosync-big/cp-big" "shard/cp=shard-big/cp-big"
"$PYTHON" - "$RESULTS" "$LAYERS" "$LAYERS_BIG" "$(gb "$SRC")" "$(gb "$BIG")" <<'PY'
import statistics, sys
res, ls, lb, gs, gbig = sys.argv[1:]
def rss(n): return statistics.median(int(l.split()[1]) / 1024 for l in open(f"{res}/{n}.data"))
s, b = rss("shard-small"), rss("shard-big")
print(f"\nshardkit peak RSS: {s:.1f} MB ({ls} layers) -> {b:.1f} MB ({lb} layers): x{b / s:.2f} "
      f"for a x{float(gbig) / float(gs):.2f} bigger checkpoint ({gs} -> {gbig} GB)")
PY
echo "(raw per-run data and command logs: $RESULTS)"
