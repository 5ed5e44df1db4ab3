#!/usr/bin/env python3
"""Generate a synthetic, Llama-shaped BF16 Hugging Face checkpoint for benchmarks.

Plain Python 3 + numpy (no torch, no safetensors package): the safetensors
files are written by hand:

    [u64 little-endian N][N bytes JSON header, space-padded to a multiple of 8][raw data]

The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}
(offsets relative to the start of the data section) plus
"__metadata__": {"format": "pt"}, as transformers' save_pretrained writes it.

Output directory layout (same as a sharded HF checkpoint):

    config.json
    generation_config.json
    model-00001-of-0000N.safetensors ... model-0000N-of-0000N.safetensors
    model.safetensors.index.json   {"metadata": {"total_size": ...}, "weight_map": {...}}

Weights are random bf16 bit patterns with magnitudes in ~[0.0078, 0.25)
(random sign; RMSNorm weights in [1, 2)), so every value is finite and
no NaN/Inf/subnormal ever appears. They are produced in chunks and streamed to
disk tensor by tensor: peak memory is a few tens of MB whatever the model size.

The directory is written to DIR.partial-<pid> and renamed to DIR at the end,
so an existing DIR is always complete (the bench scripts reuse it).

Usage:
    python3 Benchmarks/make_checkpoint.py --out /tmp/shardkit-bench/llama-6L
    python3 Benchmarks/make_checkpoint.py --layers 18 --out /tmp/shardkit-bench/llama-18L
    python3 Benchmarks/make_checkpoint.py --check /tmp/shardkit-bench/llama-6L   # validate only

Defaults: hidden 2048, 16 heads, 4 KV heads (head_dim 128), intermediate 5632,
6 layers, vocab 32000 -> 402 M parameters, ~0.80 GB.  --layers 18 -> ~2.0 GB.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

import numpy as np

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
CHUNK_ELEMS = 8 * 1024 * 1024  # 16 MB of bf16 per write


# ---------------------------------------------------------------------------
# Model description
# ---------------------------------------------------------------------------
def make_config(a):
    head_dim = a.hidden // a.heads
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.intermediate,
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.6",
        "use_cache": True,
        "vocab_size": a.vocab,
    }


def tensor_list(a):
    """[(name, shape, kind)] in the order HF writes a Llama checkpoint."""
    h, H, KV, I, V = a.hidden, a.heads, a.kv_heads, a.intermediate, a.vocab
    hd = h // H
    out = [("model.embed_tokens.weight", [V, h], "w")]
    for n in range(a.layers):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", [h], "norm"),
            (p + "mlp.down_proj.weight", [h, I], "w"),
            (p + "mlp.gate_proj.weight", [I, h], "w"),
            (p + "mlp.up_proj.weight", [I, h], "w"),
            (p + "post_attention_layernorm.weight", [h], "norm"),
            (p + "self_attn.k_proj.weight", [KV * hd, h], "w"),
            (p + "self_attn.o_proj.weight", [h, H * hd], "w"),
            (p + "self_attn.q_proj.weight", [H * hd, h], "w"),
            (p + "self_attn.v_proj.weight", [KV * hd, h], "w"),
        ]
    out += [("model.norm.weight", [h], "norm"), ("lm_head.weight", [V, h], "w")]
    return out


def nbytes(shape, dtype="BF16"):
    n = DTYPE_SIZES[dtype]
    for d in shape:
        n *= d
    return n


def pack_files(tensors, max_bytes):
    """Greedy, order-preserving packing of tensors into files of <= max_bytes
    (a single tensor larger than max_bytes gets a file of its own)."""
    files, cur, cur_size = [], [], 0
    for t in tensors:
        sz = nbytes(t[1])
        if cur and cur_size + sz > max_bytes:
            files.append(cur)
            cur, cur_size = [], 0
        cur.append(t)
        cur_size += sz
    if cur:
        files.append(cur)
    return files


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def random_bf16(rng, n, kind):
    """n random bf16 bit patterns (uint16), finite, sane magnitude."""
    r = np.frombuffer(rng.bytes(2 * n), dtype=np.uint16)
    if kind == "norm":
        # sign 0, exponent 127 (1.0), random 7-bit mantissa -> [1, 2)
        return (r & np.uint16(0x007F)) | np.uint16(0x3F80)
    # random sign, exponent 120..123 (2^-7 .. 2^-4), random mantissa
    # -> |x| in [0.0078125, 0.25)
    return (r & np.uint16(0x81FF)) | np.uint16(0x3C00)


def build_header(entries):
    """entries: [(name, shape)] in data order -> (header bytes incl. padding)."""
    hdr, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in entries:
        sz = nbytes(shape)
        hdr[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + sz]}
        off += sz
    raw = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)
    return raw, off


def write_safetensors(path, entries, rng):
    raw, data_len = build_header([(n, s) for n, s, _ in entries])
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, kind in entries:
            left = nbytes(shape) // 2
            while left:
                n = min(left, CHUNK_ELEMS)
                f.write(random_bf16(rng, n, kind).tobytes())
                left -= n
    return data_len


def generate(a):
    if a.hidden % a.heads or a.heads % a.kv_heads:
        sys.exit("hidden must be divisible by heads, heads by kv-heads")
    out = os.path.abspath(a.out)
    if os.path.exists(out):
        if not a.force:
            sys.exit(f"{out} exists (use --force to regenerate)")
        shutil.rmtree(out)
    tmp = f"{out}.partial-{os.getpid()}"
    os.makedirs(tmp)
    rng = np.random.default_rng(a.seed)
    tensors = tensor_list(a)
    files = pack_files(tensors, int(a.max_file_mb * 1e6))
    nfiles = len(files)
    weight_map, total = {}, 0
    t0 = time.time()
    for i, entries in enumerate(files, 1):
        fname = f"model-{i:05d}-of-{nfiles:05d}.safetensors"
        total += write_safetensors(os.path.join(tmp, fname), entries, rng)
        for name, _, _ in entries:
            weight_map[name] = fname
        print(f"  {fname}: {len(entries)} tensors, "
              f"{os.path.getsize(os.path.join(tmp, fname)) / 1e6:.1f} MB", flush=True)
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total},
                   "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2,
                   "transformers_version": "4.57.6"}, f, indent=2)
        f.write("\n")
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(make_config(a), f, indent=2, sort_keys=True)
        f.write("\n")
    os.rename(tmp, out)
    params = total // 2
    print(f"wrote {out}: {a.layers} layers, {params / 1e6:.1f} M params, "
          f"{total / 1e9:.3f} GB tensor data in {nfiles} files "
          f"({time.time() - t0:.1f} s)")
    return out


# ---------------------------------------------------------------------------
# Validation (parses everything back; does not trust the generator)
# ---------------------------------------------------------------------------
def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"{path}: truncated header")
    if n % 8:
        raise ValueError(f"{path}: header length {n} not a multiple of 8")
    body = raw.rstrip(b" ")
    if not body.endswith(b"}"):
        raise ValueError(f"{path}: header is not a JSON object padded with spaces")
    return n, json.loads(body.decode("utf-8"))


def check(d, sample=True):
    d = os.path.abspath(d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    wm = idx["weight_map"]
    problems = []

    class A:  # expected layout from config.json
        hidden = cfg["hidden_size"]; heads = cfg["num_attention_heads"]
        kv_heads = cfg["num_key_value_heads"]; intermediate = cfg["intermediate_size"]
        layers = cfg["num_hidden_layers"]; vocab = cfg["vocab_size"]
    expected = {n: s for n, s, _ in tensor_list(A)}
    for k, v in [("model_type", "llama"), ("tie_word_embeddings", False),
                 ("torch_dtype", "bfloat16")]:
        if cfg.get(k) != v:
            problems.append(f"config.json {k}={cfg.get(k)!r}, want {v!r}")

    seen, total_data = {}, 0
    files = sorted(set(wm.values()))
    on_disk = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    if files != on_disk:
        problems.append(f"index files {files} != on disk {on_disk}")
    for fname in on_disk:
        path = os.path.join(d, fname)
        n, hdr = read_header(path)
        hdr.pop("__metadata__", None)
        spans = []
        for name, e in hdr.items():
            b, en = e["data_offsets"]
            if e["dtype"] != "BF16":
                problems.append(f"{fname}:{name} dtype {e['dtype']}")
            if en - b != nbytes(e["shape"], e["dtype"]):
                problems.append(f"{fname}:{name} span {en - b} != shape*size")
            spans.append((b, en, name))
            if name in seen:
                problems.append(f"{name} in both {seen[name][0]} and {fname}")
            seen[name] = (fname, e["shape"], b)
            if wm.get(name) != fname:
                problems.append(f"index maps {name} to {wm.get(name)}, found in {fname}")
        spans.sort()
        pos = 0
        for b, en, name in spans:  # offsets must tile [0, data_len) exactly
            if b != pos:
                problems.append(f"{fname}: gap/overlap at {pos} before {name} ({b})")
            pos = en
        data_len = os.path.getsize(path) - 8 - n
        if pos != data_len:
            problems.append(f"{fname}: tensors end at {pos}, data section is {data_len}")
        total_data += data_len
        if sample:  # spot-check values: first/last 4096 elements of each tensor
            with open(path, "rb") as f:
                for b, en, name in spans:
                    for at in (b, max(b, en - 8192)):
                        f.seek(8 + n + at)
                        raw = f.read(min(8192, en - at))
                        v = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
                        if not np.all(np.isfinite(v)) or np.max(np.abs(v)) >= 2.0 \
                                or np.min(np.abs(v)) < 2 ** -8:
                            problems.append(f"{fname}:{name} values out of range")
                            break
    if set(seen) != set(wm):
        problems.append(f"index/header tensor sets differ: {sorted(set(seen) ^ set(wm))[:5]}")
    if set(seen) != set(expected):
        problems.append(f"tensor names differ from HF Llama: {sorted(set(seen) ^ set(expected))[:5]}")
    for name, s in expected.items():
        if name in seen and seen[name][1] != s:
            problems.append(f"{name} shape {seen[name][1]} != {s}")
    if idx["metadata"]["total_size"] != total_data:
        problems.append(f"total_size {idx['metadata']['total_size']} != {total_data}")
    for p in problems[:20]:
        print("FAIL:", p)
    if problems:
        print(f"{d}: {len(problems)} problem(s)")
        return False
    print(f"{d}: OK ({len(seen)} tensors in {len(on_disk)} files, "
          f"{total_data} bytes = {total_data / 1e9:.3f} GB tensor data, "
          f"largest file {max(os.path.getsize(os.path.join(d, f)) for f in on_disk) / 1e6:.1f} MB)")
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/shardkit-bench/llama-6L")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-file-mb", type=float, default=200.0,
                   help="max size of one .safetensors file (MB, 1e6 bytes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--check", metavar="DIR",
                   help="only validate an existing checkpoint directory")
    p.add_argument("--no-check", action="store_true",
                   help="skip the validation pass after generating")
    a = p.parse_args()
    if a.check:
        sys.exit(0 if check(a.check) else 1)
    out = generate(a)
    if not a.no_check and not check(out):
        sys.exit(1)


if __name__ == "__main__":
    main()
