#!/usr/bin/env bash
# Benchmark `shardkit shard` from each input format (safetensors, PyTorch
# torch.save .bin, HDF5) on the same synthetic Llama BF16 checkpoint, against
# `cp -r` of each source, with peak RSS; then check (untimed) that the three
# shard sets hold the same tensors, byte for byte.
#
#   Benchmarks/bench-formats.sh
#   RUNS=5 TP=8 Benchmarks/bench-formats.sh
#   FORMAT_PYTHON=/path/to/venv/bin/python Benchmarks/bench-formats.sh
#
# The .bin and .h5 copies are made once from $SCRATCH/llama-${LAYERS}L with
# Benchmarks/convert_checkpoint.py (needs torch, safetensors, h5py, numpy:
# FORMAT_PYTHON, default /work/venv-fixtures/bin/python) into
#   $SCRATCH/llama-${LAYERS}L-bin/  pytorch_model-0000k-of-0000n.bin + pytorch_model.bin.index.json
#   $SCRATCH/llama-${LAYERS}L-h5/   model.h5
# and reused while their stamp ($DIR.stamp: source files' names/sizes/mtimes
# and the converter's hash) matches; FORMAT_PYTHON is only needed to convert.
# See Benchmarks/README.md and the variables at the top of Benchmarks/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FORMAT_PYTHON=${FORMAT_PYTHON:-/work/venv-fixtures/bin/python}

# source_stamp SRC: what a converted copy depends on (source files + converter).
source_stamp() {
  { (cd "$1" && stat -c '%n %s %Y' -- *.safetensors *.json)
    sha256sum <"$BENCH_DIR/convert_checkpoint.py"; } | sha256sum | cut -d' ' -f1
}

# ensure_converted KIND SRC DST MARKER: convert SRC to KIND (bin|h5) in DST
# unless DST/MARKER exists and DST.stamp matches; sets CONVERT_NOTE_<KIND>.
ensure_converted() {
  local kind=$1 src=$2 dst=$3 marker=$4 stamp t0 t1 secs
  stamp=$(source_stamp "$src")
  if [ -f "$dst/$marker" ] && [ -f "$dst/config.json" ] && [ -f "$dst.stamp" ] \
      && [ "$(head -n1 "$dst.stamp")" = "$stamp" ]; then
    log "reusing $dst"
    printf -v "CONVERT_NOTE_$kind" '%s' "reused ($(sed -n 2p "$dst.stamp"))"
    return
  fi
  local err
  if ! err=$("$FORMAT_PYTHON" -c 'import torch, h5py, numpy, safetensors' 2>&1); then
    die "FORMAT_PYTHON=$FORMAT_PYTHON cannot import torch, h5py, numpy and safetensors
       ($(tail -n1 <<<"$err")), needed once to
       convert $src to $kind ($dst). Point FORMAT_PYTHON at a Python that has them
       (e.g. the fixtures venv: python3 -m venv /work/venv-fixtures &&
       /work/venv-fixtures/bin/pip install -r fixtures/requirements.txt)."
  fi
  log "converting $src -> $dst ($kind)"
  rm -f "$dst.stamp"
  t0=$(date +%s%N)
  "$FORMAT_PYTHON" "$BENCH_DIR/convert_checkpoint.py" --to "$kind" --force "$src" "$dst" >&2 \
    || die "convert_checkpoint.py --to $kind failed"
  t1=$(date +%s%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b - a) / 1e9}')
  printf '%s\nconverted %s in %s s (write + check, convert_checkpoint.py)\n' \
    "$stamp" "$(date -u +%FT%TZ)" "$secs" >"$dst.stamp"
  printf -v "CONVERT_NOTE_$kind" '%s' "converted now in $secs s (write + check)"
}

ensure_gnu_time
build_shardkit
require_subcommand shard

SRC=$(ensure_checkpoint "$LAYERS")
BIN="$SCRATCH/llama-${LAYERS}L-bin"
H5="$SCRATCH/llama-${LAYERS}L-h5"
CONVERT_NOTE_bin="" CONVERT_NOTE_h5=""
ensure_converted bin "$SRC" "$BIN" pytorch_model.bin.index.json
ensure_converted h5 "$SRC" "$H5" model.h5
init_results
CP_DST="$SCRATCH/cp-out"
declare -A DIR=([st]="$SRC" [bin]="$BIN" [h5]="$H5")
declare -A OUT=([st]="$SCRATCH/formats-out-st" [bin]="$SCRATCH/formats-out-bin" [h5]="$SCRATCH/formats-out-h5")
declare -A LABEL=([st]=safetensors [bin]=bin [h5]=h5)

nfiles() { find "$1" -type f | wc -l; }
echo "ShardKit input-format benchmark ($(date -u +%FT%TZ))"
describe_build
echo "TP=$TP RUNS=$RUNS (+1 warm-up each, runs interleaved); page cache warm; output dirs removed + sync before each run (untimed)"
echo "sources (the same $("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["metadata"]["total_size"])' "$SRC/model.safetensors.index.json") bytes of BF16 tensors):"
echo "  safetensors: $SRC ($(gb "$SRC") GB, $(nfiles "$SRC") files)"
echo "  bin:         $BIN ($(gb "$BIN") GB, $(nfiles "$BIN") files; $CONVERT_NOTE_bin)"
echo "  h5:          $H5 ($(gb "$H5") GB, $(nfiles "$H5") files; $CONVERT_NOTE_h5)"
echo "commands (for each SRC of the three):"
echo "  cp -r SRC $CP_DST"
echo "  $SHARDKIT shard SRC --tp $TP --out OUT --force --no-sync"
echo "  $SHARDKIT shard SRC --tp $TP --out OUT --force            (durable: fsyncs every file)"

spec=()
for f in st bin h5; do
  spec+=("cp-$f" "rm -rf '$CP_DST'" "$(q cp -r "${DIR[$f]}" "$CP_DST")"
         "nosync-$f" "rm -rf '${OUT[$f]}'" "$(q "$SHARDKIT" shard "${DIR[$f]}" --tp "$TP" --out "${OUT[$f]}" --force --no-sync)"
         "shard-$f" "rm -rf '${OUT[$f]}'" "$(q "$SHARDKIT" shard "${DIR[$f]}" --tp "$TP" --out "${OUT[$f]}" --force)")
done
bench "$RUNS" "${spec[@]}"
rm -rf "$CP_DST"

rows=()
for f in st bin h5; do
  rows+=("cp-$f:cp -r (${LABEL[$f]})" "nosync-$f:shard --tp $TP --no-sync (${LABEL[$f]})" "shard-$f:shard --tp $TP (${LABEL[$f]})")
done
report "llama-${LAYERS}L, TP=$TP: safetensors $(gb "$SRC") GB, bin $(gb "$BIN") GB, h5 $(gb "$H5") GB" \
  "${rows[@]}" -- \
  "shard(bin)/shard(safetensors) --no-sync=nosync-bin/nosync-st" \
  "shard(h5)/shard(safetensors) --no-sync=nosync-h5/nosync-st" \
  "shard(bin)/shard(safetensors)=shard-bin/shard-st" \
  "shard(h5)/shard(safetensors)=shard-h5/shard-st" \
  "shard --no-sync/cp (safetensors)=nosync-st/cp-st" \
  "shard --no-sync/cp (bin)=nosync-bin/cp-bin" \
  "shard --no-sync/cp (h5)=nosync-h5/cp-h5"

# Untimed: the three shard sets (left by the last timed runs) must hold the
# same tensors per rank, byte for byte. Two independent checks: the manifests'
# `tensors` objects (shape, rule, per-piece file/intervals/shape/CRC-32C) are
# equal, and, reading every rank's safetensors files, each rank's
# {tensor name: (dtype, shape, sha256 of the bytes)} is equal.
echo
echo "equivalence of the three outputs (untimed):"
"$PYTHON" - "${OUT[st]}" "${OUT[bin]}" "${OUT[h5]}" <<'PY' || die "the shard sets made from the three formats differ"
import hashlib, json, os, struct, sys
labels = ["safetensors", "bin", "h5"]
outs = sys.argv[1:]

def rank_tensors(out, manifest):
    """rank -> {name: (dtype, shape, sha256)} read from the rank files."""
    ranks = {}
    for r in manifest["ranks"]:
        got = ranks.setdefault(r["rank"], {})
        for rel in r["files"]:
            with open(os.path.join(out, rel), "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                hdr = json.loads(f.read(n))
                hdr.pop("__metadata__", None)
                for name, e in sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                    b, en = e["data_offsets"]
                    f.seek(8 + n + b)
                    h, left = hashlib.sha256(), en - b
                    while left:
                        chunk = f.read(min(left, 16 << 20))
                        if not chunk:
                            raise SystemExit(f"{out}/{rel}: truncated at {name}")
                        h.update(chunk)
                        left -= len(chunk)
                    assert name not in got, f"{name} twice in rank {r['rank']}"
                    got[name] = (e["dtype"], tuple(e["shape"]), en - b, h.hexdigest())
    return ranks

ms = [json.load(open(os.path.join(o, "manifest.json"))) for o in outs]
ok = True
for lab, m in zip(labels[1:], ms[1:]):
    for key in ("tensors", "order", "ranks", "tp", "extra_files"):
        same = m[key] == ms[0][key]
        ok &= same
        if not same:
            print(f"  FAIL: manifest '{key}' of the {lab} output differs from the safetensors output's")
    print(f"  manifest 'tensors' ({len(m['tensors'])} tensors, "
          f"{sum(len(t['pieces']) for t in m['tensors'].values())} pieces with CRC-32C) "
          f"{lab} == safetensors: {m['tensors'] == ms[0]['tensors']}")
for lab, m in zip(labels, ms):
    print(f"  source of the {lab} output: {m['source']['files']}")
rt = [rank_tensors(o, m) for o, m in zip(outs, ms)]
for rank in sorted(rt[0]):
    sets = [x.get(rank) for x in rt]
    same = all(s == sets[0] for s in sets)
    ok &= same
    nbytes = sum(v[2] for v in sets[0].values())
    print(f"  rank {rank}: {len(sets[0])} tensors, {nbytes} bytes: "
          f"(name -> dtype, shape, sha256 of bytes) identical across {'/'.join(labels)}: {same}")
    if not same:
        for lab, s in zip(labels[1:], sets[1:]):
            diff = sorted(k for k in set(s or {}) | set(sets[0]) if (s or {}).get(k) != sets[0].get(k))
            print(f"    {lab}: {len(diff)} tensors differ, e.g. {diff[:5]}")
for extra in ms[0]["extra_files"]:
    data = [open(os.path.join(o, extra), "rb").read() for o in outs]
    same = all(d == data[0] for d in data)
    ok &= same
    print(f"  {extra}: identical: {same}")
print(f"  => outputs {'EQUIVALENT' if ok else 'DIFFER'}")
sys.exit(0 if ok else 1)
PY
echo "(raw per-run data and command logs: $RESULTS)"
