#!/usr/bin/env python3
"""A synthetic Llama checkpoint in the FP8 block format (DeepSeek-V3 / Qwen3-FP8 layout) for benchmarks:
every projection is F8_E4M3 [N, K] with `weight_scale_inv` F32 [ceil(N/128), ceil(K/128)];
embeddings, norms and the LM head stay BF16; config.json carries
quantization_config {"quant_method": "fp8", "weight_block_size": [128, 128]}.

The tensor list, shapes and config are make_checkpoint.py's (imported). FP8 values are random
bytes with the two NaN patterns (0x7F, 0xFF) removed; scales are in [2^-10, 2^-9). Written
tensor by tensor in chunks (memory stays small), to DIR.partial-<pid>, then renamed.

    python3 Benchmarks/make-fp8.py --layers 12 --out /tmp/shardkit-bench/llama-12L-fp8   # ~0.80 GB
"""
import argparse, json, os, shutil, struct, sys, time
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_checkpoint as M  # noqa: E402

BLOCK = 128
SIZES = {"BF16": 2, "F8_E4M3": 1, "F32": 4}


def entries(a):
    out = []
    for name, shape, kind in M.tensor_list(a):
        if name.endswith("proj.weight"):
            out.append((name, shape, "F8_E4M3"))
            out.append((name[:-len("weight")] + "weight_scale_inv", [-(-shape[0] // BLOCK), -(-shape[1] // BLOCK)], "F32"))
        else:
            out.append((name, shape, "BF16" if kind == "w" else "BF16-norm"))
    return out


def size(shape, dtype):
    n = SIZES[dtype.split("-")[0]]
    for d in shape:
        n *= d
    return n


def chunks(rng, shape, dtype):
    left = size(shape, dtype)
    while left:
        n = min(left, 16 << 20)
        if dtype == "F8_E4M3":
            b = np.frombuffer(rng.bytes(n), dtype=np.uint8).copy()
            b[(b & 0x7F) == 0x7F] &= 0xFE            # no NaN
            yield b.tobytes()
        elif dtype == "F32":
            yield (np.float32(2.0 ** -10) * (1 + rng.random(n // 4, dtype=np.float32))).tobytes()
        else:
            yield M.random_bf16(rng, n // 2, "norm" if dtype == "BF16-norm" else "w").tobytes()
        left -= n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--max-file-mb", type=float, default=200.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.hidden, a.heads, a.kv_heads, a.intermediate, a.vocab = 2048, 16, 4, 5632, 32000
    out = os.path.abspath(a.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    tmp = f"{out}.partial-{os.getpid()}"
    os.makedirs(tmp)
    rng = np.random.default_rng(a.seed)
    files, cur, cur_size = [], [], 0
    for e in entries(a):
        s = size(e[1], e[2])
        if cur and cur_size + s > a.max_file_mb * 1e6:
            files.append(cur)
            cur, cur_size = [], 0
        cur.append(e)
        cur_size += s
    files.append(cur)
    weight_map, total, t0 = {}, 0, time.time()
    for i, group in enumerate(files, 1):
        fname = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        hdr, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in group:
            hdr[name] = {"dtype": dtype.split("-")[0], "shape": shape, "data_offsets": [off, off + size(shape, dtype)]}
            off += size(shape, dtype)
        raw = json.dumps(hdr, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)
        with open(os.path.join(tmp, fname), "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, shape, dtype in group:
                for c in chunks(rng, shape, dtype):
                    f.write(c)
                weight_map[name] = fname
        total += off
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    config = M.make_config(a)
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [BLOCK, BLOCK]}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.rename(tmp, out)
    print(f"wrote {out}: {a.layers} layers, {total / 1e9:.3f} GB in {len(files)} files ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
