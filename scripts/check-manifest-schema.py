#!/usr/bin/env python3
"""Validate ShardKit manifest.json files against docs/manifest.schema.json.

Usage: scripts/check-manifest-schema.py [--schema FILE] MANIFEST_OR_DIR [...]

A directory argument means DIR/manifest.json. Besides the schema, checks the cross-field
rules JSON Schema cannot express (world ranks 0..pp*tp-1 with their coordinates, one piece
per holding rank in order, "order" lists every tensor once, each piece's file is one of its
rank's files). It does not recompute
intervals from rules or read the rank files: `shardkit verify` does that.

Exit status: 0 if every manifest passes, 1 if any fails, 2 on usage errors.
Needs Python 3 and the `jsonschema` package. Not used by the test suite.
"""
import argparse
import json
import os
import sys

try:
    import jsonschema
except ImportError:
    sys.exit("check-manifest-schema: needs the jsonschema package (pip install jsonschema)")

DEFAULT_SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "manifest.schema.json")


def cross_field_errors(m):
    errors = []
    tp = m["tp"]
    pp, ep = m.get("pp", 1), m.get("ep", 1)
    world = pp * tp
    if [r["rank"] for r in m["ranks"]] != list(range(world)):
        errors.append(f"ranks must list 0..{world - 1} in order")
    for r in m["ranks"]:
        if "pp" in r and (r["pp"], r["tp"]) != divmod(r["rank"], tp):
            errors.append(f"rank {r['rank']}: coordinates pp {r['pp']}, tp {r['tp']}")
    if tp % ep:
        errors.append(f"ep {ep} does not divide tp {tp}")
    rank_files = {r["rank"]: set(r["files"]) for r in m["ranks"]}
    if sorted(m["order"]) != sorted(m["tensors"]):
        errors.append('"order" must list every tensor once')
    for name, t in m["tensors"].items():
        group = t.get("ep_group")
        ways = tp // ep if group is not None else tp
        holders = []
        for s in t.get("stages", [0]):
            first = s * tp + (group or 0) * (tp // ep)
            holders += list(range(first, first + ways))
        if [p["rank"] for p in t["pieces"]] != holders:
            errors.append(f"tensor {name}: pieces must be ranks {holders}")
            continue
        for p in t["pieces"]:
            if p["file"] not in rank_files.get(p["rank"], ()):
                errors.append(f"tensor {name}: rank {p['rank']} piece names file {p['file']}, not one of the rank's files")
    return errors


def check(path, validator):
    if os.path.isdir(path):
        path = os.path.join(path, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        return path, [f"cannot read: {e}"]
    errors = []
    for e in sorted(validator.iter_errors(m), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        errors.append(f"{where}: {e.message}")
    if not errors:
        errors = cross_field_errors(m)
    return path, errors


def main():
    ap = argparse.ArgumentParser(description="Validate ShardKit manifests against the JSON Schema.")
    ap.add_argument("--schema", default=DEFAULT_SCHEMA, help="schema file (default: docs/manifest.schema.json)")
    ap.add_argument("manifests", nargs="+", help="manifest.json files or shard set directories")
    args = ap.parse_args()
    with open(args.schema, encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    failed = False
    for arg in args.manifests:
        path, errors = check(arg, validator)
        if errors:
            failed = True
            print(f"FAIL {path}")
            for e in errors[:20]:
                print(f"  {e}")
            if len(errors) > 20:
                print(f"  ... {len(errors) - 20} more")
        else:
            print(f"ok   {path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
