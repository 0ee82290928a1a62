#!/usr/bin/python3
"""Peak resident memory of each rank of an mpirun job (docs/DISTRIBUTED.md, ZeRO-1).

  tools/rank_memory.py mpirun -np 2 build/vrwkv train -c CONFIG -o OUT ...

Runs the command and reads VmHWM (the kernel's high-water mark of resident memory) of every process mpirun
started, every 20 ms, keeping the last value seen; prints one line per rank. A rank's peak after the last
reading (at most 20 ms before it exits) is not seen.
"""
import os
import subprocess
import sys
import time


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def rank_and_peak(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        rank = env.get(b"OMPI_COMM_WORLD_RANK")
        with open(f"/proc/{pid}/status") as f:
            peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        return (int(rank), peak) if rank is not None else None
    except (OSError, StopIteration, ValueError):
        return None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.Popen(sys.argv[1:], env=env, stderr=subprocess.PIPE, text=True)
    peaks = {}
    while proc.poll() is None:
        for pid in children(proc.pid):
            found = rank_and_peak(pid)
            if found:
                peaks[found[0]] = max(peaks.get(found[0], 0), found[1])
        time.sleep(0.02)
    err = proc.stderr.read().strip().splitlines()
    print(f"exit {proc.returncode}: {err[-1] if err else ''}")
    for rank in sorted(peaks):
        print(f"rank {rank}: peak RSS {peaks[rank] / 1024:.0f} MiB")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
