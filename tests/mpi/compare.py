#!/usr/bin/python3
"""Compares two training runs (their model.safetensors and metrics.jsonl) for tests/mpi/test_mpi.sh.

compare.py RUN_A RUN_B TOLERANCE
  every weight: |a - b| <= TOLERANCE * max(1, max |a| of its tensor)  (relative to the tensor's scale)
  every logged loss and validation figure: |a - b| <= TOLERANCE * max(1, |a|)
Prints the largest differences found; exit 1 when a bound is exceeded, 2 when the runs cannot be compared.
"""
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"compare.py: {path}: tensor {name} is {info['dtype']}, expected F32")
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(data[lo:hi], dtype="<f4").astype(np.float64)
    return out


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    a_dir, b_dir, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
    a, b = read_safetensors(f"{a_dir}/model.safetensors"), read_safetensors(f"{b_dir}/model.safetensors")
    if a.keys() != b.keys():
        print(f"compare.py: the models hold different tensors: {sorted(a.keys() ^ b.keys())}")
        return 2
    worst_w, worst_name = 0.0, ""
    for name in a:
        scale = max(1.0, float(np.abs(a[name]).max()))
        d = float(np.abs(a[name] - b[name]).max()) / scale
        if d > worst_w:
            worst_w, worst_name = d, name
    ma, mb = read_metrics(f"{a_dir}/metrics.jsonl"), read_metrics(f"{b_dir}/metrics.jsonl")
    if [r["step"] for r in ma] != [r["step"] for r in mb]:
        print("compare.py: the metrics files log different steps")
        return 2
    worst_m, worst_key = 0.0, ""
    for ra, rb in zip(ma, mb):
        for key in ("loss", "val_top1", "val_top5", "val_loss"):
            if key in ra:
                d = abs(ra[key] - rb[key]) / max(1.0, abs(ra[key]))
                if d > worst_m:
                    worst_m, worst_key = d, f"{key} at step {ra['step']}"
    print(f"weights: largest relative difference {worst_w:.3g} ({worst_name or 'none'}); "
          f"metrics: {worst_m:.3g} ({worst_key or 'none'}); {len(a)} tensors, {len(ma)} records; bound {tol:g}")
    return 0 if worst_w <= tol and worst_m <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
