#!/usr/bin/env python3
"""Turn a Hugging Face Llama safetensors checkpoint (e.g. the benchmarks' 0.8 GB
$SCRATCH/llama-6L) into Meta's original layout: params.json + consolidated.NN.pth
for --mp model-parallel files (q/k rows in Meta's rotary order, wq/wk/wv/w1/w3
split on dim 0, wo/w2 on dim 1, tok_embeddings on dim 1, output on dim 0, norms
whole in every file), the input for timing `shardkit reshard` of Meta checkpoints.
Needs torch, safetensors and transformers (the fixtures venv; fixtures/make_meta.py is imported):

    /work/venv-fixtures/bin/python Benchmarks/make-meta.py SRC OUT [--mp 2] [--force]

It holds the whole model in memory once (as Meta's own tools do); it then checks
that concatenating the files and applying transformers' permute gives SRC back.
"""
import argparse, json, os, shutil, sys
import torch
from safetensors.torch import load_file

# The layout itself (names, split dimensions, q/k row order) is fixtures/make_meta.py's.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from make_meta import name_map, permute, unpermute  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src"); ap.add_argument("out")
    ap.add_argument("--mp", type=int, default=2); ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if os.path.exists(a.out):
        if not a.force: sys.exit(f"{a.out} exists (--force)")
        shutil.rmtree(a.out)
    cfg = json.load(open(os.path.join(a.src, "config.json")))
    hf = {}
    for f in sorted(os.listdir(a.src)):
        if f.endswith(".safetensors"): hf.update(load_file(os.path.join(a.src, f)))
    dim, nh, nkv, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    hd = dim // nh
    rows = name_map(L)
    full = {}
    for meta, name, _ in rows:
        w = hf[name]
        if meta.endswith("wq.weight"): w = unpermute(w, nh, nh * hd, dim)
        if meta.endswith("wk.weight"): w = unpermute(w, nkv, nkv * hd, dim)
        full[meta] = w
    os.makedirs(a.out)
    for r in range(a.mp):
        sd = {m: (full[m] if d is None else torch.chunk(full[m], a.mp, dim=d)[r]).contiguous().clone()
              for m, _, d in rows}
        torch.save(sd, os.path.join(a.out, f"consolidated.{r:02d}.pth"))
        print(f"  consolidated.{r:02d}.pth", flush=True)
    json.dump({"dim": dim, "n_layers": L, "n_heads": nh, "n_kv_heads": nkv, "vocab_size": cfg["vocab_size"],
               "norm_eps": cfg["rms_norm_eps"], "rope_theta": cfg["rope_theta"],
               "max_seq_len": cfg["max_position_embeddings"], "use_scaled_rope": False},
              open(os.path.join(a.out, "params.json"), "w"))
    # Check: the converter's way back gives SRC.
    files = [torch.load(os.path.join(a.out, f"consolidated.{r:02d}.pth"), weights_only=True, mmap=True)
             for r in range(a.mp)]
    for meta, name, d in rows:
        w = files[0][meta] if d is None else torch.cat([f[meta] for f in files], dim=d)
        if meta.endswith("wq.weight"): w = permute(w, nh, nh * hd, dim)
        if meta.endswith("wk.weight"): w = permute(w, nkv, nkv * hd, dim)
        assert torch.equal(w.view(torch.uint8) if w.dtype == torch.bfloat16 else w,
                           hf[name].view(torch.uint8) if w.dtype == torch.bfloat16 else hf[name]), name
    print(f"wrote {a.out}: {a.mp} files, {len(rows)} tensors; checked against {a.src}")


if __name__ == "__main__":
    main()
