#!/usr/bin/python3
"""Runs every golden model case through `vrwkv run` and reports the largest error per output tensor,
max |vrwkv - golden| / max(1, max |golden|), the measure the tests bound by 2e-5.

  tools/golden_report.py --vrwkv build/vrwkv            # fp32, each case in its own Bi-WKV semantics
  tools/golden_report.py --vrwkv build/vrwkv --bf16     # bf16 against fp32: logit error and top-1 agreement
  tools/golden_report.py --vrwkv build/vrwkv --grad     # `vrwkv grad`: loss and every grad.* (bound 5e-5)
  tools/golden_report.py --ablation [--grad]             # the ablation cases (golden/ablation, tests/data/ablation)
                                                         # with their variant flags

Needs python3-numpy; reads ../shared/golden.
"""
import argparse
import json
import os
import struct
import subprocess
import tempfile

import numpy as np

CASES = ["tiny_default", "tiny_postnorm_ls0p5", "tiny_keynorm", "tiny_shift0", "tiny_in37x27_pad",
         "tiny_outidx01_nofinalnorm", "tiny_default_kernelwkv", "vrwkv_t_224_b2", "vrwkv_t_224_b2_kernel32"]
DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}


def read_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[key] = np.frombuffer(data[8 + n + begin:8 + n + end], dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return out


ABLATION_CASES = ["ablation/ablation_shift_none", "ablation/ablation_shift_1d", "ablation/ablation_wkv_uni",
                  "ablation/ablation_rwkv_orig"]
ABLATION_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/data/ablation")


def run_case(vrwkv, golden, case, dtype, out, command="run"):
    """case: a name under `golden` ("tiny_default", "ablation/ablation_shift_1d") or a path to a case's json stem."""
    base = case if os.path.isabs(case) else f"{golden}/{case}"
    folder = os.path.dirname(base)
    j = json.load(open(base + ".json"))
    impl = j["wkv_impl"]
    args = [vrwkv, command, "-m", f"{folder}/{j.get('checkpoint', os.path.basename(base) + '.pth')}",
            "--wkv", "paper" if impl in ("sum", "uni") else "official", "--wkv-chunks", "16" if impl == "kernel16" else "32",
            "--dtype", dtype, "-i", f"{folder}/{j['safetensors']}", "-o", out]
    if "variant" in j:  # the ablation's cases
        v = j["variant"]
        args += ["--shift", v["shift"], "--wkv-direction", v["wkv_direction"], "--wkv-decay", v["wkv_decay"],
                 "--shift-pixel", str(j["backbone"]["shift_pixel"])]
    if isinstance(j["backbone"]["out_indices"], list):
        args += ["--out-indices", ",".join(map(str, j["backbone"]["out_indices"]))]
    subprocess.run(args, check=True)
    return j, read_safetensors(out), read_safetensors(f"{folder}/{j['safetensors']}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vrwkv", default="build/vrwkv")
    p.add_argument("--golden", default=os.path.join(os.path.dirname(__file__), "../../shared/golden"))
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--grad", action="store_true")
    p.add_argument("--ablation", action="store_true")
    a = p.parse_args()
    agree = total = 0
    cases = CASES
    if a.ablation:
        cases = ABLATION_CASES + sorted(os.path.join(os.path.abspath(ABLATION_DATA), f[:-5])
                                        for f in os.listdir(ABLATION_DATA) if f.endswith(".json"))
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            if a.grad:
                gold = read_safetensors((case if os.path.isabs(case) else f"{a.golden}/{case}") + ".safetensors")
                if not any(k.startswith("grad.") for k in gold):
                    continue
                j, out, gold = run_case(a.vrwkv, a.golden, case, "fp32", f"{tmp}/grad.safetensors", "grad")
                keys = [k for k in gold if k == "loss" or k.startswith("grad.")]
                errs = {k: np.abs(out[k].astype(np.float64) - gold[k]).max() / max(1, np.abs(gold[k]).max())
                        for k in keys}
                worst = max(errs, key=errs.get)
                print(f"{os.path.basename(case):34} ({j['wkv_impl']}): {len(keys)} tensors, loss {errs['loss']:.1e}, "
                      f"worst {errs[worst]:.1e} ({worst})")
                continue
            j, out, gold = run_case(a.vrwkv, a.golden, case, "fp32", f"{tmp}/fp32.safetensors")
            if not a.bf16:
                errs = [f"{k} {np.abs(out[k].astype(np.float64) - gold[k]).max() / max(1, np.abs(gold[k]).max()):.1e}"
                        for k in sorted(out)]
                print(f"{os.path.basename(case):34} ({j['wkv_impl']}): " + ", ".join(errs))
                continue
            _, low, _ = run_case(a.vrwkv, a.golden, case, "bf16", f"{tmp}/bf16.safetensors")
            g = gold["logits"]
            same = low["logits"].argmax(1) == g.argmax(1)
            agree, total = agree + same.sum(), total + len(same)
            margins = ", ".join(f"{float(np.sort(r)[-1] - np.sort(r)[-2]):.1e}" for r in g)
            print(f"{case:28} max|logit err| bf16 {np.abs(low['logits'] - g).max():.2e} "
                  f"(fp32 {np.abs(out['logits'] - g).max():.1e}), max|logit| {np.abs(g).max():.2f}, "
                  f"top-1 agree {same.sum()}/{len(same)}, top-2 margins {margins}")
    if a.bf16:
        print(f"top-1 agreement with the goldens: {agree}/{total}")


if __name__ == "__main__":
    main()
