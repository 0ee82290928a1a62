#!/usr/bin/python3
"""The ablation's table from docs/ablation/results.json (written by tools/ablation.sh), as Markdown.

  tools/ablation_report.py [docs/ablation/results.json]

Per variant: the runs' top-1, mean ± sample standard deviation, parameters and mean training time; then each
variant against the baseline (Q-Shift, Bi-WKV) paired by seed (the same initialisation and data order wherever the
parameters coincide): the mean difference, its standard error, t = mean / s.e. with n - 1 degrees of freedom, and
how many seeds have the baseline ahead. Only seeds that both variants have are paired.
"""
import json
import math
import os
import sys

ORDER = ["vrwkv", "shift_none", "shift_1d", "wkv_uni", "rwkv"]
LABELS = {
    "vrwkv": ("Q-Shift", "bi", "VRWKV", 75.1),
    "shift_none": ("none", "bi", "Variant 1", 71.5),
    "shift_1d": ("1-D", "bi", "Variant 2", 74.7),
    "wkv_uni": ("Q-Shift", "uni", "Variant 3", 72.8),
    "rwkv": ("1-D", "uni", "RWKV", 71.1),
}
# Two-sided 95 % quantiles of Student's t for 1..9 degrees of freedom.
T95 = [12.71, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262]


def mean_std(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return m, s


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../docs/ablation/results.json")
    runs = json.load(open(path))
    by = {}
    for r in runs:
        by.setdefault(r["name"], {})[r["seed"]] = r
    print("| variant | shift | attention | paper (ImageNet, VRWKV-T) | runs (seed: top-1 %) | top-1 % mean ± std "
          "| parameters | wall minutes per run |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ORDER:
        if name not in by:
            continue
        shift, att, paper_name, paper = LABELS[name]
        rs = [by[name][s] for s in sorted(by[name])]
        m, s = mean_std([r["top1"] for r in rs])
        each = ", ".join(f"{r['seed']}: {r['top1']:.2f}" for r in rs)
        minutes = sum(r["seconds"] for r in rs) / len(rs) / 60
        std = "" if math.isnan(s) else f" ± {s:.2f}"
        print(f"| {paper_name} | {shift} | {att} | {paper} | {each} | **{m:.2f}**{std} | {rs[0]['params']:,} "
              f"| {minutes:.0f} |")
    paired = [n for n in ORDER[1:] if "vrwkv" in by and set(by.get(n, {})) & set(by["vrwkv"])]
    if not paired:
        return
    print()
    print("| baseline − variant (paired by seed) | seeds | mean difference (points) | standard error | t | "
          "95 % interval | baseline ahead |")
    print("|---|---|---|---|---|---|---|")
    for name in paired:
        seeds = sorted(set(by[name]) & set(by["vrwkv"]))
        d = [by["vrwkv"][s]["top1"] - by[name][s]["top1"] for s in seeds]
        m, s = mean_std(d)
        if len(d) > 1:
            se = s / math.sqrt(len(d))
            t = m / se if se > 0 else float("inf")
            half = T95[min(len(d) - 2, len(T95) - 1)] * se
            stats = f"{se:.2f} | {t:.1f} | [{m - half:+.2f}, {m + half:+.2f}]"
        else:
            stats = "– | – | –"
        ahead = sum(x > 0 for x in d)
        print(f"| VRWKV − {LABELS[name][2]} ({LABELS[name][0]}, {LABELS[name][1]}) | {len(d)} | {m:+.2f} | {stats} | "
              f"{ahead} of {len(d)} |")


if __name__ == "__main__":
    main()
