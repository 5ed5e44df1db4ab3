#!/usr/bin/env python3
"""Convert a sharded safetensors checkpoint (as written by make_checkpoint.py)
into the other two input formats `shardkit shard` reads, for bench-formats.sh.

Needs torch, safetensors, h5py and numpy (the fixtures venv has them):

    /work/venv-fixtures/bin/python Benchmarks/convert_checkpoint.py --to bin SRC OUT
    /work/venv-fixtures/bin/python Benchmarks/convert_checkpoint.py --to h5  SRC OUT
    /work/venv-fixtures/bin/python Benchmarks/convert_checkpoint.py --check --to bin SRC OUT  # validate only

SRC is a directory with model.safetensors.index.json + model-0000k-of-0000n.safetensors
(or a single model.safetensors). OUT gets:

  --to bin  PyTorch torch.save (zip) files, the same tensor grouping as SRC:
            pytorch_model-0000k-of-0000n.bin for each model-0000k-of-0000n.safetensors
            (one torch.save({name: tensor}) per file, each tensor with its own
            storage of exactly its bytes, as save_pretrained writes them) +
            pytorch_model.bin.index.json ({"metadata": {"total_parameters",
            "total_size"}, "weight_map": {name: file}}, HF's shape). A single
            model.safetensors becomes a single pytorch_model.bin.
  --to h5   model.h5: every tensor a root-level dataset named like the tensor,
            same shape, contiguous layout, no filters, track_times=False,
            libver=("earliest", "v110") (the system libhdf5 shardkit links is
            1.10). BF16 is stored as a custom HDF5 float type with bfloat16's
            layout (sign bit 15, exponent bits 7..14 with bias 127, mantissa
            bits 0..6: what shardkit reads as BF16, see docs/formats.md and
            fixtures/make_hdf5.py), written from the raw uint16 bits with the
            same type as memory type, so no conversion happens. Other dtypes
            use the matching little-endian HDF5 type.

Both also copy SRC's other files (config.json, generation_config.json, ...;
everything except the weights and their index), byte for byte.

Memory: the h5 conversion holds one tensor at a time; the bin conversion one
source file's tensors (one torch.save dict per output file; ~180 MB for the
default 0.8 GB checkpoint). Measured on that checkpoint: peak anonymous RSS
~0.56 GB for either, of which ~0.30 GB is `import torch` itself (GNU time's
max RSS shows ~1 GB because it also counts torch's mapped libraries and the
mmapped checkpoint files, which are page cache). ~5 s (bin) / ~3.5 s (h5),
write + check, warm cache.

The output is written to OUT.partial-<pid> and renamed to OUT only after it
has been checked, so an existing OUT is always complete. The check (also run
alone with --check) re-reads everything: for bin, torch.load(weights_only=True,
mmap=True) of every file gives exactly SRC's names, dtypes, shapes and bits,
every tensor contiguous at offset 0 of a storage of exactly its size, and the
index matches the files; for h5, every dataset is contiguous, unfiltered,
allocated, of the expected type and shape, and the bytes at H5Dget_offset()
in the file are SRC's bytes (what shardkit's in-place reader will read), and
libhdf5's own conversion of the first values to float32 agrees.
"""
import argparse
import json
import os
import shutil
import sys
import time

import h5py
import numpy as np
import torch
from h5py import h5d, h5p, h5s, h5t
from safetensors import safe_open

# bfloat16 as an HDF5 float type: the one definition, shared with the fixtures.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from make_hdf5 import bf16_type  # noqa: E402

LIBVER = ("earliest", "v110")
ST_TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
            "F64": torch.float64, "I8": torch.int8, "I16": torch.int16,
            "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8, "BOOL": torch.bool}
# dtype -> little-endian numpy dtype for h5py (BF16 handled separately)
ST_NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2",
            "I32": "<i4", "I64": "<i8", "U8": "u1", "BOOL": "?"}


# ---------------------------------------------------------------------------
# source
# ---------------------------------------------------------------------------
def source_files(src):
    """[(safetensors file name, [tensor names in file order])], aux file names."""
    idx = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
        weights = set(files) | {"model.safetensors.index.json"}
    elif os.path.exists(os.path.join(src, "model.safetensors")):
        files = ["model.safetensors"]
        weights = set(files)
    else:
        sys.exit(f"{src}: no model.safetensors.index.json or model.safetensors")
    out = []
    for fn in files:
        with safe_open(os.path.join(src, fn), "pt") as f:
            out.append((fn, list(f.keys())))
    aux = sorted(x for x in os.listdir(src)
                 if x not in weights and os.path.isfile(os.path.join(src, x)))
    return out, aux


def st_dtype(f, name):
    return f.get_slice(name).get_dtype()


def raw_bytes(t):
    """A tensor's bytes (C order), whatever its dtype."""
    t = t.contiguous()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def own_storage(t):
    """The tensor with a storage of exactly its own bytes (torch.save writes
    whole storages)."""
    if (not t.is_contiguous() or t.storage_offset() != 0
            or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def bin_name(fn):
    return "pytorch_model" + fn[len("model"):-len(".safetensors")] + ".bin"


def copy_aux(src, dst, aux):
    for fn in aux:
        shutil.copyfile(os.path.join(src, fn), os.path.join(dst, fn))


# ---------------------------------------------------------------------------
# PyTorch .bin
# ---------------------------------------------------------------------------
def write_bin(src, dst, files, aux):
    weight_map, total_size, total_params = {}, 0, 0
    for fn, names in files:
        out_fn = bin_name(fn)
        sd = {}
        with safe_open(os.path.join(src, fn), "pt") as f:
            for k in names:
                t = own_storage(f.get_tensor(k))
                sd[k] = t
                weight_map[k] = out_fn
                total_size += t.numel() * t.element_size()
                total_params += t.numel()
        torch.save(sd, os.path.join(dst, out_fn))
        del sd
        print(f"  {out_fn}: {len(names)} tensors, "
              f"{os.path.getsize(os.path.join(dst, out_fn)) / 1e6:.1f} MB", flush=True)
    if len(files) > 1 or files[0][0] != "model.safetensors":
        with open(os.path.join(dst, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {"total_parameters": total_params, "total_size": total_size},
                       "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            f.write("\n")
    copy_aux(src, dst, aux)


def check_bin(src, dst, files, aux):
    problems, weight_map, n = [], {}, 0
    for fn, names in files:
        out_fn = bin_name(fn)
        sd = torch.load(os.path.join(dst, out_fn), map_location="cpu",
                        weights_only=True, mmap=True)
        if list(sd) != names:
            problems.append(f"{out_fn}: tensors {sorted(set(sd) ^ set(names))[:5]} differ from {fn}")
        with safe_open(os.path.join(src, fn), "pt") as f:
            for k in names:
                if k not in sd:
                    continue
                a, b = f.get_tensor(k), sd[k]
                if (b.dtype != ST_TORCH[st_dtype(f, k)] or a.dtype != b.dtype
                        or a.shape != b.shape):
                    problems.append(f"{out_fn}:{k} {b.dtype}{list(b.shape)} != {a.dtype}{list(a.shape)}")
                elif not (b.is_contiguous() and b.storage_offset() == 0
                          and b.untyped_storage().nbytes() == b.numel() * b.element_size()):
                    problems.append(f"{out_fn}:{k} not contiguous with its own storage")
                elif raw_bytes(a) != raw_bytes(b):
                    problems.append(f"{out_fn}:{k} bytes differ")
                weight_map[k] = out_fn
                n += 1
        del sd
    idx = os.path.join(dst, "pytorch_model.bin.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            bi = json.load(f)
        if bi.get("weight_map") != weight_map:
            problems.append("pytorch_model.bin.index.json weight_map does not match the files")
        with open(os.path.join(src, "model.safetensors.index.json")) as f:
            si = json.load(f)
        if bi["metadata"].get("total_size") != si["metadata"].get("total_size"):
            problems.append(f"index total_size {bi['metadata']} != source {si['metadata']}")
    elif len(files) > 1:
        problems.append("pytorch_model.bin.index.json missing")
    return problems, n


# ---------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------
def write_h5(src, dst, files, aux):
    bf16 = bf16_type()
    n = 0
    with h5py.File(os.path.join(dst, "model.h5"), "w", libver=LIBVER) as h:
        for fn, names in files:
            with safe_open(os.path.join(src, fn), "pt") as f:
                for k in names:
                    if "/" in k:
                        sys.exit(f"{k}: '/' in a tensor name would make an HDF5 group")
                    code, t = st_dtype(f, k), f.get_tensor(k).contiguous()
                    if code == "BF16":
                        bits = t.view(torch.int16).numpy().view("<u2")
                        dcpl = h5p.create(h5p.DATASET_CREATE)
                        dcpl.set_obj_track_times(False)
                        dcpl.set_layout(h5d.CONTIGUOUS)
                        space = h5s.create_simple(tuple(t.shape)) if t.dim() else h5s.create(h5s.SCALAR)
                        ds = h5d.create(h.id, k.encode(), bf16, space, dcpl=dcpl)
                        ds.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(bits), mtype=bf16)
                        ds.close()
                    elif code in ST_NUMPY:
                        arr = t.numpy().astype(ST_NUMPY[code], copy=False)
                        h.create_dataset(k, data=arr, track_times=False)
                    else:
                        sys.exit(f"{fn}:{k}: dtype {code} not supported")
                    n += 1
                    del t
    print(f"  model.h5: {n} datasets, "
          f"{os.path.getsize(os.path.join(dst, 'model.h5')) / 1e6:.1f} MB", flush=True)
    copy_aux(src, dst, aux)


def check_h5(src, dst, files, aux):
    path = os.path.join(dst, "model.h5")
    problems, n = [], 0
    expected = [k for _, names in files for k in names]
    with h5py.File(path, "r") as h, open(path, "rb") as raw:
        got = []
        h.visit(got.append)
        if sorted(got) != sorted(expected):
            problems.append(f"datasets {sorted(set(got) ^ set(expected))[:5]} differ from the source")
        for fn, names in files:
            with safe_open(os.path.join(src, fn), "pt") as f:
                for k in names:
                    if k not in h:
                        continue
                    ds, code, t = h[k], st_dtype(f, k), f.get_tensor(k)
                    pl = ds.id.get_create_plist()
                    off, size = ds.id.get_offset(), ds.id.get_storage_size()
                    want = raw_bytes(t)
                    if tuple(ds.shape) != tuple(t.shape):
                        problems.append(f"{k}: shape {ds.shape} != {list(t.shape)}")
                        continue
                    if pl.get_layout() != h5d.CONTIGUOUS or pl.get_nfilters() != 0 \
                            or off is None or size != len(want):
                        problems.append(f"{k}: not one contiguous unfiltered range "
                                        f"(layout {pl.get_layout()}, offset {off}, size {size})")
                        continue
                    ft = ds.id.get_type()
                    if code == "BF16":
                        ok = (isinstance(ft, h5t.TypeFloatID) and
                              (ft.get_size(), ft.get_order(), ft.get_fields(), ft.get_ebias(),
                               ft.get_precision(), ft.get_offset(), ft.get_norm())
                              == (2, h5t.ORDER_LE, (15, 7, 8, 0, 7), 127, 16, 0, h5t.NORM_IMPLIED))
                    else:
                        ok = ds.dtype == np.dtype(ST_NUMPY[code])
                    if not ok:
                        problems.append(f"{k}: HDF5 type does not match {code}")
                        continue
                    raw.seek(off)
                    if raw.read(size) != want:
                        problems.append(f"{k}: bytes at H5Dget_offset differ from the source")
                        continue
                    if code == "BF16" and t.dim() and t.numel():  # libhdf5's own bf16 -> f32 agrees
                        lead = (0,) * (t.dim() - 1)     # first values of the first row
                        m = min(t.shape[-1], 64)
                        got32 = ds[lead + (slice(0, m),)].astype("<f4")
                        want32 = t[lead][:m].to(torch.float32).numpy()
                        if not np.array_equal(got32, want32):
                            problems.append(f"{k}: libhdf5 reads different values")
                    n += 1
    return problems, n


# ---------------------------------------------------------------------------
def check(kind, src, dst, files, aux):
    problems, n = (check_bin if kind == "bin" else check_h5)(src, dst, files, aux)
    for fn in aux:
        with open(os.path.join(src, fn), "rb") as a, open(os.path.join(dst, fn), "rb") as b:
            if a.read() != b.read():
                problems.append(f"{fn} differs from the source's")
    for p in problems[:20]:
        print("FAIL:", p)
    if problems:
        print(f"{dst}: {len(problems)} problem(s)")
        return False
    size = sum(os.path.getsize(os.path.join(dst, x)) for x in os.listdir(dst))
    print(f"{dst.split('.partial-')[0]}: OK ({n} tensors identical to {src}, {size / 1e9:.3f} GB on disk, "
          f"aux files {', '.join(aux) or 'none'})")
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--to", choices=("bin", "h5"), required=True)
    p.add_argument("--check", action="store_true", help="only validate an existing OUT")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("src")
    p.add_argument("out")
    a = p.parse_args()
    src, out = os.path.abspath(a.src), os.path.abspath(a.out)
    files, aux = source_files(src)
    if a.check:
        sys.exit(0 if check(a.to, src, out, files, aux) else 1)
    if os.path.exists(out):
        if not a.force:
            sys.exit(f"{out} exists (use --force to replace it)")
    tmp = f"{out}.partial-{os.getpid()}"
    os.makedirs(tmp)
    t0 = time.time()
    try:
        (write_bin if a.to == "bin" else write_h5)(src, tmp, files, aux)
        t1 = time.time()
        if not check(a.to, src, tmp, files, aux):
            sys.exit(1)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    print(f"wrote {out} ({a.to}): {t1 - t0:.1f} s to write, {time.time() - t1:.1f} s to check")


if __name__ == "__main__":
    main()
