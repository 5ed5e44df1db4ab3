#!/usr/bin/env bash
# The main job on a bundled fixture: shard a real (tiny) Llama checkpoint with GQA into 4 ranks,
# show the plan and the result, then verify it (checksums, bit-exact reconstruction, TP forward pass
# against the transformers reference logits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build --product shardkit
bin=.build/debug/shardkit
src=fixtures/llama-gqa
out="${TMPDIR:-/tmp}/shardkit-demo/llama-gqa-tp4"
echo "== plan: $src at tp 4"
$bin plan "$src" --tp 4
echo
echo "== shard: $src -> $out"
$bin shard "$src" --tp 4 --out "$out" --force
ls -l "$out" "$out"/rank-0
echo
echo "== verify"
$bin verify "$out" --source "$src" --reference "$src/reference.safetensors"
