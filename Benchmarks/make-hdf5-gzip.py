#!/usr/bin/env python3
"""Turn a (sharded) safetensors checkpoint, e.g. the benchmarks' 0.8 GB
$SCRATCH/llama-6L from make_checkpoint.py, into one nested-group, chunked,
shuffle + gzip HDF5 file: the input for timing ShardKit's chunked/compressed
HDF5 reader against the in-place formats.

Needs h5py and numpy only (the fixtures venv has them; torch and the
safetensors package are not used: the safetensors headers are parsed by hand
and tensors are read with numpy.memmap):

    /work/venv-fixtures/bin/python Benchmarks/make-hdf5-gzip.py SRC OUT
    /work/venv-fixtures/bin/python Benchmarks/make-hdf5-gzip.py /tmp/shardkit-bench/llama-6L \\
        /tmp/shardkit-bench/llama-6L-h5gz --force

OUT gets model.h5 + byte copies of SRC's other files (config.json,
generation_config.json, ...; everything except the safetensors files and their
index). In model.h5 every tensor is a dataset in one group per name component
(`model.layers.0.self_attn.q_proj.weight` -> groups model/layers/0/self_attn/q_proj,
dataset weight: what ShardKit reads back as the same dotted name), with
  - the same shape, and the same element bytes: BF16 as the custom HDF5 float
    type with bfloat16's layout (fixtures/make_hdf5.py's bf16_type, written
    from the raw bits with that type as memory type: no conversion), F16/F32/
    F64/integers as the matching little-endian HDF5 type;
  - chunked layout, filters shuffle then deflate (gzip) level 1 (--level), the
    pipeline h5py's shuffle=True, compression="gzip" gives;
  - chunks (--chunks): `mib` (default) = whole rows, as many as make about
    --chunk-mib MiB (1) per chunk (e.g. [256, 2048] for a [*, 2048] BF16
    matrix; 1-D tensors one chunk of up to that size); `h5py` = h5py's own
    chunk guess (chunks=True; 16 KiB-1 MiB chunks depending on the dataset
    size, i.e. many more, smaller chunks);
  - libver ("earliest", "v110") (ShardKit links libhdf5 1.10) and no timestamps,
    so the file is deterministic for a given input and zlib.

The "twin" of OUT/model.h5 is SRC itself (same names, dtypes, shapes, bytes);
the script prints both paths. The output is written to OUT.partial-<pid> and
renamed only after the check (skip with --no-check): every dataset is read back
through libhdf5 with the file's own type as memory type and compared with the
source bytes.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

import h5py
import numpy as np
from h5py import h5d, h5p, h5s, h5t

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from make_hdf5 import bf16_type  # noqa: E402

LIBVER = ("earliest", "v110")
ST_NUMPY = {"BF16": "<u2", "F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2",
            "I32": "<i4", "I64": "<i8", "U8": "u1", "BOOL": "u1"}


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return 8 + n, hdr


def source(src):
    """[(file path, data start, [(name, entry)] in offset order)], aux files."""
    idx = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        weights = set(files) | {"model.safetensors.index.json"}
    elif os.path.exists(os.path.join(src, "model.safetensors")):
        files = weights = ["model.safetensors"]
    else:
        sys.exit(f"{src}: no model.safetensors.index.json or model.safetensors")
    out = []
    for fn in files:
        p = os.path.join(src, fn)
        start, hdr = read_header(p)
        out.append((p, start, sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0])))
    aux = sorted(x for x in os.listdir(src)
                 if x not in weights and os.path.isfile(os.path.join(src, x)))
    return out, aux


def tensor(path, start, e):
    code = e["dtype"]
    if code not in ST_NUMPY:
        sys.exit(f"{path}: dtype {code} not supported")
    b, end = e["data_offsets"]
    shape = tuple(e["shape"])
    if end == b:
        return code, np.zeros(shape, dtype=ST_NUMPY[code])
    return code, np.memmap(path, dtype=ST_NUMPY[code], mode="r", offset=start + b, shape=shape)


def chunk_shape(shape, itemsize, mib):
    if not shape:
        return None
    row = int(np.prod(shape[1:])) * itemsize if len(shape) > 1 else itemsize
    rows = max(1, min(shape[0], int(mib * 2**20) // max(row, 1)))
    return (rows,) + tuple(shape[1:])


def file_type(code):
    if code == "BF16":
        return bf16_type()
    if code == "BOOL":
        sys.exit("BOOL tensors are not supported by this script")
    return h5t.py_create(np.dtype(ST_NUMPY[code]))


def nested(root, parts, cache):
    g = root
    for i in range(len(parts)):
        key = "/".join(parts[: i + 1])
        if key not in cache:
            gcpl = h5p.create(h5p.GROUP_CREATE)
            gcpl.set_obj_track_times(False)
            from h5py import h5g
            h5g.create(g.id, parts[i].encode(), gcpl=gcpl)
            cache[key] = g[parts[i]]
        g = cache[key]
    return g


def write(src_files, dst, a):
    n, raw = 0, 0
    with h5py.File(os.path.join(dst, "model.h5"), "w", libver=LIBVER) as h:
        groups = {}
        items = sorted(((k, p, s, e) for p, s, ents in src_files for k, e in ents))
        for k, path, start, e in items:
            code, arr = tensor(path, start, e)
            *parts, leaf = k.split(".")
            g = nested(h, parts, groups)
            if leaf in g:
                sys.exit(f"{k}: name collides with another tensor's group")
            ftype = file_type(code)
            dcpl = h5p.create(h5p.DATASET_CREATE)
            dcpl.set_obj_track_times(False)
            if arr.ndim and arr.size:
                if a.chunks == "h5py":
                    from h5py._hl.filters import guess_chunk
                    ch = guess_chunk(arr.shape, None, arr.dtype.itemsize)
                else:
                    ch = chunk_shape(arr.shape, arr.dtype.itemsize, a.chunk_mib)
                dcpl.set_chunk(ch)
                dcpl.set_shuffle()
                dcpl.set_deflate(a.level)
            space = h5s.create_simple(arr.shape) if arr.ndim else h5s.create(h5s.SCALAR)
            ds = h5d.create(g.id, leaf.encode(), ftype, space, dcpl=dcpl)
            if arr.size:
                ds.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(arr), mtype=ftype)
            ds.close()
            n += 1
            raw += arr.nbytes
            del arr
    return n, raw


def check(src_files, dst):
    path = os.path.join(dst, "model.h5")
    n, chunks = 0, 0
    with h5py.File(path, "r") as h:
        for p, start, ents in src_files:
            for k, e in ents:
                code, arr = tensor(p, start, e)
                ds = h[k.replace(".", "/")]
                ftype = ds.id.get_type()
                buf = np.empty(arr.shape, dtype=arr.dtype)
                if arr.size:
                    ds.id.read(h5s.ALL, h5s.ALL, buf, mtype=ftype)
                if ds.shape != arr.shape or not np.array_equal(buf.view("u1"), np.asarray(arr).view("u1")):
                    sys.exit(f"check FAILED: {k} differs from the source")
                if arr.ndim and arr.size:
                    chunks += ds.id.get_num_chunks()
                n += 1
                del arr, buf
    return n, chunks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--level", type=int, default=1, help="gzip level (default 1)")
    ap.add_argument("--chunks", choices=("mib", "h5py"), default="mib")
    ap.add_argument("--chunk-mib", type=float, default=1.0)
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ap.add_argument("--no-check", action="store_true")
    a = ap.parse_args()
    src, out = os.path.abspath(a.src), os.path.abspath(a.out)
    if os.path.exists(out) and not a.force:
        sys.exit(f"{out} exists (use --force to replace it)")
    files, aux = source(src)
    tmp = f"{out}.partial-{os.getpid()}"
    os.makedirs(tmp)
    try:
        t0 = time.time()
        n, raw = write(files, tmp, a)
        for fn in aux:
            shutil.copyfile(os.path.join(src, fn), os.path.join(tmp, fn))
        t1 = time.time()
        size = os.path.getsize(os.path.join(tmp, "model.h5"))
        print(f"wrote model.h5: {n} datasets, {raw / 1e6:.1f} MB of tensor data -> "
              f"{size / 1e6:.1f} MB ({100 * size / raw:.1f} %), gzip level {a.level} + shuffle, "
              f"chunks {a.chunks}{'' if a.chunks == 'h5py' else f' ~{a.chunk_mib:g} MiB'}; "
              f"{t1 - t0:.1f} s", flush=True)
        if not a.no_check:
            n2, chunks = check(files, tmp)
            print(f"checked: {n2} datasets ({chunks} chunks) read back through libhdf5 == source "
                  f"bytes; {time.time() - t1:.1f} s", flush=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    print(f"hdf5: {os.path.join(out, 'model.h5')}")
    print(f"twin: {src} (same tensor names, dtypes, shapes and bytes)")


if __name__ == "__main__":
    main()
