#!/usr/bin/python3
"""Times the vrwkv Python package against `vrwkv bench` and against PyTorch, on the same model, in one run.

Three timings of one forward of the same configuration (default VRWKV-T, 224x224, batch 1, 2 threads):
  bench    `vrwkv bench` (the C++ program; median latency of its timed runs);
  python   `model(x)` through the package (vrwkv.create_model or vrwkv.load, a float32 NumPy input);
  pytorch  tools/compare_pytorch.py's PyTorch VRWKV (the fastest this project could write in PyTorch, with its
           BLAS settings), from a child Python process (--pytorch; by default when torch imports).
The three alternate over --rounds rounds so that a drift of the shared machine reaches all of them alike; each
round reports its median over --reps calls after --warmup untimed ones, and the table gives the median over the
rounds. The Python call overhead is python / bench - 1; the issue's bound is < 2 % at VRWKV-T 224² batch 1.

  tools/compare_python.py --vrwkv build/vrwkv --model vrwkv_t --batch 1 --res 224 --threads 2
  PYTHONPATH=build/python tools/compare_python.py --json docs/python_overhead.json

The package is imported from PYTHONPATH or an installed copy (pip install .); the build tree's build/python is
tried when neither has it. Weights are the preset's initialisation (speed does not depend on them).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vrwkv", default=os.path.join(ROOT, "build", "vrwkv"), help="the vrwkv program")
    p.add_argument("--model", default="vrwkv_t", help="a preset (vrwkv_t/s/b/l) or a checkpoint")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pytorch", action=argparse.BooleanOptionalAction, default=None,
                   help="also time PyTorch (default: when torch imports)")
    p.add_argument("--json", help="write the measurements here")
    a = p.parse_args()
    for name in ("batch", "res", "threads", "reps", "rounds"):
        if getattr(a, name) < 1:
            p.error(f"--{name}: expected a positive integer, got {getattr(a, name)}")
    if a.warmup < 0:
        p.error(f"--warmup: expected 0 or more, got {a.warmup}")
    if not os.access(a.vrwkv, os.X_OK):
        p.error(f"--vrwkv {a.vrwkv}: not an executable (build first: cmake --build build)")
    return a


def import_vrwkv():
    try:
        import vrwkv
    except ImportError:
        sys.path.insert(0, os.path.join(ROOT, "build", "python"))
        try:
            import vrwkv
        except ImportError as e:
            sys.exit(f"compare_python: cannot import vrwkv ({e}); build it (cmake --build build) or pip install .")
    return vrwkv


def time_bench(a):
    """One round of `vrwkv bench`: its median latency in ms."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        args = [a.vrwkv, "bench", "--model", a.model, "--batch", str(a.batch), "--res", str(a.res), "--threads",
                str(a.threads), "--warmup", str(a.warmup), "--reps", str(a.reps), "--json", f.name]
        r = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit(f"compare_python: {' '.join(args)} failed: {r.stderr.strip().splitlines()[-1:]}")
        return json.load(open(f.name))[0]["latency_ms_median"]


def time_calls(call, warmup, reps):
    """Median wall time of call() in ms."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def time_pytorch(a):
    """One round of PyTorch (tools/compare_pytorch.py's model and timing, with its BLAS and thread settings) in a
    child interpreter, so that torch's allocator and threads do not share this process with the package's."""
    tools = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.argv = ['compare_pytorch', '--threads', '{a.threads}']; sys.path.insert(0, {tools!r}); "
            f"import compare_pytorch as cp, torch; torch.set_num_threads({a.threads}); "
            f"print(cp.time_pytorch({a.model!r}, {a.batch}, {a.res}, {a.res}, {a.warmup}, {a.reps})[1])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"compare_python: the PyTorch timing failed: {r.stderr.strip().splitlines()[-1:]}")
    return float(r.stdout.strip().splitlines()[-1])


def main():
    a = parse()
    vrwkv = import_vrwkv()
    import numpy as np

    if os.path.isfile(a.model):
        model = vrwkv.load(a.model, threads=a.threads)
    else:
        model = vrwkv.create_model(a.model, threads=a.threads)
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.res, a.res), dtype=np.float32)

    pytorch = a.pytorch
    if pytorch is None:
        pytorch = not os.path.isfile(a.model) and subprocess.run(
            [sys.executable, "-c", "import torch"], capture_output=True).returncode == 0
    if pytorch and os.path.isfile(a.model):
        sys.exit("compare_python: --pytorch times presets only (vrwkv_t/s/b/l)")

    rows = {"bench": [], "python": [], "pytorch": []}
    for r in range(a.rounds):
        rows["bench"].append(time_bench(a))
        rows["python"].append(time_calls(lambda: model(x), a.warmup, a.reps))
        if pytorch:
            rows["pytorch"].append(time_pytorch(a))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in rows.items() if v),
              file=sys.stderr)

    median = {k: statistics.median(v) for k, v in rows.items() if v}
    overhead = median["python"] / median["bench"] - 1
    print(f"\n{a.model} {a.res}x{a.res} batch {a.batch}, {a.threads} threads, median of {a.rounds} rounds of "
          f"{a.reps} calls:")
    print(f"  vrwkv bench (C++)      {median['bench']:9.2f} ms")
    print(f"  vrwkv from Python      {median['python']:9.2f} ms   overhead {100 * overhead:+.2f} % "
          f"(per round: {', '.join(f'{100 * (p / b - 1):+.1f}' for p, b in zip(rows['python'], rows['bench']))})")
    if "pytorch" in median:
        print(f"  PyTorch from Python    {median['pytorch']:9.2f} ms   vrwkv {median['pytorch'] / median['python']:.2f}x "
              f"faster")
    if a.json:
        out = {"model": a.model, "res": a.res, "batch": a.batch, "threads": a.threads, "reps": a.reps,
               "rounds": a.rounds, "ms": rows, "median_ms": median, "python_overhead": overhead}
        if "pytorch" in median:
            out["pytorch_over_python"] = median["pytorch"] / median["python"]
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
