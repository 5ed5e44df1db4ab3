#!/usr/bin/env bash
# Benchmark `shardkit reshard` (TP 4 -> 2, then 2 -> 8) against `cp -r` of each
# command's input directory, with shardkit's peak RSS.
#
#   Benchmarks/bench-reshard.sh
#   IN=/path/to/tp4-shard-set Benchmarks/bench-reshard.sh   # use an existing shard set
#
# Without IN, the input shard set is made (untimed) from the synthetic
# checkpoint with `shardkit shard SRC --tp $TP` (TP defaults to 4).
# See Benchmarks/README.md and the variables at the top of Benchmarks/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_gnu_time
build_shardkit
require_subcommand reshard
init_results

if [ -n "${IN:-}" ]; then
  [ -f "$IN/manifest.json" ] || die "IN=$IN has no manifest.json (not a shard set)"
else
  require_subcommand shard
  SRC=$(ensure_checkpoint "$LAYERS")
  IN="$SCRATCH/reshard-in-tp$TP"
  log "making the input shard set (untimed): shardkit shard $SRC --tp $TP --out $IN --force"
  "$SHARDKIT" shard "$SRC" --tp "$TP" --out "$IN" --force >/dev/null || die "shardkit shard failed"
fi
OUT2="$SCRATCH/reshard-out-tp2"
OUT8="$SCRATCH/reshard-out-tp8"
CP_DST="$SCRATCH/cp-out"

echo "ShardKit reshard benchmark ($(date -u +%FT%TZ))"
describe_build
echo "input: $IN ($(gb "$IN") GB); RUNS=$RUNS (+1 warm-up each, runs interleaved); page cache warm; output dirs removed + sync before each run (untimed)"
echo "commands:"
echo "  $SHARDKIT reshard $IN --tp 2 --out $OUT2 --force"
echo "  $SHARDKIT reshard $OUT2 --tp 8 --out $OUT8 --force"
echo "  cp -r $IN $CP_DST      (and: bash -c 'cp -r ... && sync')"
echo "  cp -r $OUT2 $CP_DST"

bench "$RUNS" \
  cp-in "rm -rf '$CP_DST'" "$(q cp -r "$IN" "$CP_DST")" \
  cpsync-in "rm -rf '$CP_DST'" "$(q bash -c "cp -r '$IN' '$CP_DST' && sync")" \
  reshard-2 "rm -rf '$OUT2'" "$(q "$SHARDKIT" reshard "$IN" --tp 2 --out "$OUT2" --force)" \
  cp-out2 "rm -rf '$CP_DST'" "$(q cp -r "$OUT2" "$CP_DST")" \
  cpsync-out2 "rm -rf '$CP_DST'" "$(q bash -c "cp -r '$OUT2' '$CP_DST' && sync")" \
  reshard-8 "rm -rf '$OUT8'" "$(q "$SHARDKIT" reshard "$OUT2" --tp 8 --out "$OUT8" --force)" \
  nosync-2 "rm -rf '$OUT2'" "$(q "$SHARDKIT" reshard "$IN" --tp 2 --out "$OUT2" --force --no-sync)" \
  nosync-8 "rm -rf '$OUT8'" "$(q "$SHARDKIT" reshard "$OUT2" --tp 8 --out "$OUT8" --force --no-sync)"
rm -rf "$CP_DST"
echo "outputs: tp2 $(gb "$OUT2") GB ($(find "$OUT2" -name '*.safetensors' | wc -l) .safetensors), tp8 $(gb "$OUT8") GB ($(find "$OUT8" -name '*.safetensors' | wc -l) .safetensors)"

report "reshard (input $(gb "$IN") GB)" \
  "cp-in:cp -r IN(tp$TP)" "cpsync-in:cp -r IN(tp$TP) && sync" "reshard-2:shardkit reshard IN(tp$TP) --tp 2" \
  "cp-out2:cp -r OUT2(tp2)" "cpsync-out2:cp -r OUT2(tp2) && sync" "reshard-8:shardkit reshard OUT2(tp2) --tp 8" \
  "nosync-2:reshard IN(tp$TP) --tp 2 --no-sync" "nosync-8:reshard OUT2(tp2) --tp 8 --no-sync" \
  -- "reshard-2/(cp+sync)=reshard-2/cpsync-in" "reshard-2 --no-sync/cp=nosync-2/cp-in" "reshard-2/cp=reshard-2/cp-in" \
     "reshard-8/(cp+sync)=reshard-8/cpsync-out2" "reshard-8 --no-sync/cp=nosync-8/cp-out2" "reshard-8/cp=reshard-8/cp-out2"
echo "(raw per-run data and command logs: $RESULTS)"
