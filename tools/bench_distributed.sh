#!/usr/bin/env bash
# Data-parallel training throughput on this machine (docs/DISTRIBUTED.md): VRWKV-T at 224², global batch 16,
# 2 ranks × 1 thread (mpirun) against 1 rank × 2 threads, in alternating runs, each STEPS steps of
# `vrwkv train` on Fashion-MNIST images resized to 224² with the official recipe's augmentations (Mixup/CutMix,
# RandomResizedCrop, flip, drop path 0.1). Prints one line per run and the medians; writes them as JSON.
#   tools/bench_distributed.sh [--rounds N] [--steps N] [--json docs/distributed/results.json]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3 STEPS=24 JSON=""
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    *) echo "bench_distributed.sh: unknown option $1 (expected --rounds N, --steps N, --json FILE)" >&2; exit 2 ;;
  esac
done
VRWKV=$PWD/build/vrwkv
[ -x "$VRWKV" ] || { echo "bench_distributed.sh: build/vrwkv is missing: build first" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "bench_distributed.sh: mpirun is missing (tools/setup.sh installs openmpi-bin)" >&2; exit 2; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/config.json" <<JSON
{
  "model": {"preset": "vrwkv_t", "in_channels": 3, "image_size": [224, 224]},
  "data": {"train": "fashion-mnist:train", "val": "", "train_limit": $((16 * STEPS)),
           "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
  "augment": {"random_resized_crop": true, "hflip": 0.5, "mixup_alpha": 0.8, "cutmix_alpha": 1.0},
  "optim": {"lr": 5e-4, "weight_decay": 0.05, "clip_grad": 5.0, "warmup_epochs": 0, "drop_path": 0.1},
  "epochs": 1, "batch_size": 16, "seed": 0, "eval_every": 0, "checkpoint_every": 0, "log_every": 1
}
JSON
# Median images/s over the steps after the first 4 (start-up), and the median wait/communication per step.
summary() {
  /usr/bin/python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][4:]
med = lambda k: statistics.median(r[k] for r in rows) if rows and k in rows[0] else 0.0
print(f'{med("images_per_second"):.3f} {med("wait_seconds_per_step"):.4f} {med("comm_seconds_per_step"):.4f} {len(rows)}')
PY
}
results=()
for round in $(seq "$ROUNDS"); do
  for mode in threads ranks; do
    out=$WORK/$mode$round
    if [ $mode = threads ]; then "$VRWKV" train -c "$WORK/config.json" -o "$out" --threads 2 --no-progress 2>"$out.log"
    else mpirun -np 2 "$VRWKV" train -c "$WORK/config.json" -o "$out" --threads 1 --no-progress 2>"$out.log"; fi
    read -r ips wait comm n <<<"$(summary "$out/metrics.jsonl")"
    echo "round $round: $([ $mode = threads ] && echo '1 rank  x 2 threads' || echo '2 ranks x 1 thread ') $ips images/s (median of $n steps); wait $wait s, all-reduce $comm s per step"
    results+=("$mode $ips $wait $comm")
  done
done
printf '%s\n' "${results[@]}" >"$WORK/results.txt"
/usr/bin/python3 - "$WORK/results.txt" "$JSON" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
t = [float(r[1]) for r in rows if r[0] == "threads"]
m = [float(r[1]) for r in rows if r[0] == "ranks"]
w = [float(r[2]) for r in rows if r[0] == "ranks"]
c = [float(r[3]) for r in rows if r[0] == "ranks"]
out = {"model": "vrwkv_t", "resolution": 224, "global_batch": 16, "runs_each": len(t),
       "one_rank_two_threads_images_per_second": t, "two_ranks_one_thread_images_per_second": m,
       "median_one_rank_two_threads": statistics.median(t), "median_two_ranks_one_thread": statistics.median(m),
       "ratio": statistics.median(m) / statistics.median(t),
       "median_wait_seconds_per_step": statistics.median(w), "median_allreduce_seconds_per_step": statistics.median(c)}
print("median: 1 rank x 2 threads %.2f images/s, 2 ranks x 1 thread %.2f images/s: ratio %.3f; per step: "
      "wait %.4f s, all-reduce %.4f s" % (out["median_one_rank_two_threads"], out["median_two_ranks_one_thread"],
                                          out["ratio"], out["median_wait_seconds_per_step"],
                                          out["median_allreduce_seconds_per_step"]))
if sys.argv[2]:
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
PY
