#!/usr/bin/env bash
# `shardkit shard` from a chunked, shuffle + gzip HDF5 file (nested groups, as h5py writes a model)
# against the same checkpoint in safetensors and against `cp -r` of each; peak RSS; checks that
# both shard sets are byte-identical. The gzip file is made once with make-hdf5-gzip.py.
#
#   Benchmarks/bench-hdf5-gzip.sh
#   FORMAT_PYTHON=/path/to/python-with-h5py RUNS=5 Benchmarks/bench-hdf5-gzip.sh
#
# See Benchmarks/README.md and the variables at the top of Benchmarks/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
FORMAT_PYTHON=${FORMAT_PYTHON:-/work/venv-fixtures/bin/python}

ensure_gnu_time
build_shardkit
SRC=$(ensure_checkpoint "$LAYERS")
H5GZ="$SCRATCH/llama-${LAYERS}L-h5gz"
if [ ! -f "$H5GZ/model.h5" ] || [ "$H5GZ/model.h5" -ot "$BENCH_DIR/make-hdf5-gzip.py" ]; then
  "$FORMAT_PYTHON" -c 'import h5py, numpy' 2>/dev/null \
    || die "FORMAT_PYTHON=$FORMAT_PYTHON cannot import h5py and numpy (needed once, to write $H5GZ)"
  log "writing $H5GZ (make-hdf5-gzip.py, ~40 s)"
  "$FORMAT_PYTHON" "$BENCH_DIR/make-hdf5-gzip.py" "$SRC" "$H5GZ" --force >&2 || die "make-hdf5-gzip.py failed"
fi
init_results
OUT_H5="$SCRATCH/h5gz-out" OUT_ST="$SCRATCH/h5gz-st-out" CP_DST="$SCRATCH/cp-out"

echo "ShardKit chunked+gzip HDF5 benchmark ($(date -u +%FT%TZ))"
describe_build
echo "TP=$TP RUNS=$RUNS; page cache warm; --no-sync (like cp -r)"
echo "safetensors: $SRC ($(gb "$SRC") GB)   hdf5 gzip: $H5GZ ($(gb "$H5GZ") GB on disk)"
bench "$RUNS" \
  "cp-h5" "rm -rf '$CP_DST'" "$(q cp -r "$H5GZ" "$CP_DST")" \
  "cp-st" "rm -rf '$CP_DST'" "$(q cp -r "$SRC" "$CP_DST")" \
  "shard-h5" "rm -rf '$OUT_H5'" "$(q "$SHARDKIT" shard "$H5GZ" --tp "$TP" --out "$OUT_H5" --force --no-sync)" \
  "shard-st" "rm -rf '$OUT_ST'" "$(q "$SHARDKIT" shard "$SRC" --tp "$TP" --out "$OUT_ST" --force --no-sync)"
for r in $(seq 0 $((TP - 1))); do
  cmp -s "$OUT_H5/rank-$r/model.safetensors" "$OUT_ST/rank-$r/model.safetensors" \
    || die "rank $r differs between the HDF5 and the safetensors shard sets"
done
echo "  the two shard sets are byte-identical ($TP ranks)"
rm -rf "$CP_DST"
report "llama-${LAYERS}L, TP=$TP, --no-sync" \
  "cp-h5:cp -r (hdf5 gzip)" "cp-st:cp -r (safetensors)" \
  "shard-h5:shardkit shard (hdf5 gzip)" "shard-st:shardkit shard (safetensors)" \
  -- "shard(h5 gzip)/cp(h5 gzip)=shard-h5/cp-h5" "shard(h5 gzip)/shard(safetensors)=shard-h5/shard-st"
"$FORMAT_PYTHON" - "$H5GZ/model.h5" <<'PY' || true
# The floor: zlib alone inflating every chunk, one thread (no unshuffle, no copy, no write).
import sys, time, zlib, h5py
raw = []
def visit(name, obj):
    if isinstance(obj, h5py.Dataset) and obj.chunks:
        for i in range(obj.id.get_num_chunks()):
            raw.append(obj.id.read_direct_chunk(obj.id.get_chunk_info(i).chunk_offset)[1])
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(visit)
t = time.time(); n = sum(len(zlib.decompress(r)) for r in raw); dt = time.time() - t
print(f"\nfloor: zlib.decompress of all {len(raw)} chunks ({n / 1e6:.0f} MB), one thread: {dt:.2f} s")
PY
echo "(raw per-run data and command logs: $RESULTS)"
