#!/usr/bin/env bash
# The ablation experiment (docs/ABLATION.md): five variants of the VRWKV block
# (configs/ablation/*.json), three seeds each, on Fashion-MNIST, one recipe.
#
#   tools/ablation.sh                 # run (or resume) every missing run, in seed-major order
#   tools/ablation.sh --seeds 0,1     # only these seeds
#   tools/ablation.sh --list          # what is done and what is left
#
# Each run trains in runs/ablation/VARIANT/seedN with 2 threads (a run stopped
# part-way resumes from its checkpoint, bit-exact at the same thread count),
# is evaluated on the 10,000 test images, and is appended to
# docs/ablation/results.json as {variant: {shift, wkv_direction, wkv_decay},
# name, seed, top1, top5, epochs, params, seconds}; `seconds` is the wall time
# of its training, summed over resumed parts. Runs already in results.json
# are skipped, so the script can be stopped and started at any time. Seed 0's
# trained models are copied to docs/ablation/models/VARIANT_seed0.safetensors
# for the receptive-field figure.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANTS=(vrwkv shift_none shift_1d wkv_uni rwkv)
SEEDS=(0 1 2)
LIST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) [ $# -ge 2 ] || { echo "ablation.sh: --seeds needs a list such as 0,1" >&2; exit 2; }
             IFS=, read -r -a SEEDS <<< "$2"; shift 2 ;;
    --list) LIST=1; shift ;;
    *) echo "ablation.sh: unknown option '$1' (expected --seeds LIST or --list)" >&2; exit 2 ;;
  esac
done

PY=/usr/bin/python3
VRWKV=${VRWKV:-build/vrwkv}  # VRWKV=PATH runs another build (e.g. a copy kept apart from rebuilds)
RESULTS=docs/ablation/results.json
[ -x "$VRWKV" ] || { echo "ablation.sh: $VRWKV is missing: build first (cmake --build build)" >&2; exit 2; }
mkdir -p docs/ablation
[ -f "$RESULTS" ] || echo "[]" > "$RESULTS"

done_run() {  # done_run VARIANT SEED: whether results.json has it
  "$PY" - "$RESULTS" "$1" "$2" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))
sys.exit(0 if any(r["name"] == sys.argv[2] and r["seed"] == int(sys.argv[3]) for r in runs) else 1)
EOF
}

for seed in "${SEEDS[@]}"; do
  for v in "${VARIANTS[@]}"; do
    if done_run "$v" "$seed"; then
      [ "$LIST" = 1 ] && echo "done  $v seed $seed"
      continue
    fi
    if [ "$LIST" = 1 ]; then echo "to do $v seed $seed"; continue; fi
    out="runs/ablation/$v/seed$seed"
    mkdir -p "$out"
    args=(-o "$out" --threads 2)
    if [ -f "$out/checkpoint.safetensors" ]; then args+=(--resume)  # its stored configuration
    else args+=(-c "configs/ablation/$v.json" --seed "$seed" --force); fi
    if [ ! -f "$out/model.safetensors" ]; then
      echo "== $v seed $seed: training (${args[*]})"
      start=$(date +%s)
      rc=0
      "$VRWKV" train "${args[@]}" || rc=$?
      # The time of this part, also when it was stopped (a later --resume adds the next part's).
      echo $(( $(cat "$out/seconds" 2>/dev/null || echo 0) + $(date +%s) - start )) > "$out/seconds.new"
      mv "$out/seconds.new" "$out/seconds"
      [ "$rc" = 0 ] || exit "$rc"
    fi
    # Seed 0's models are kept with the results (runs/ is not): the receptive-field figure draws them.
    [ "$seed" = 0 ] && mkdir -p docs/ablation/models && cp "$out/model.safetensors" "docs/ablation/models/${v}_seed0.safetensors"
    eval_json=$("$VRWKV" eval --model "$out/model.safetensors" --data fashion-mnist:test --json --threads 2)
    params=$("$VRWKV" info "$out/model.safetensors" | awk '/^parameters/ {print $2}')
    seconds=$(cat "$out/seconds" 2>/dev/null || echo 0)
    "$PY" - "$RESULTS" "configs/ablation/$v.json" "$v" "$seed" "$params" "$seconds" "$eval_json" <<'EOF'
import json, os, sys
path, config, name, seed, params, seconds, ev = sys.argv[1:]
m = json.load(open(config))["model"]
e = json.loads(ev)
runs = json.load(open(path))
runs.append({"variant": {"shift": m["shift"], "wkv_direction": m["wkv_direction"], "wkv_decay": m["wkv_decay"]},
             "name": name, "seed": int(seed), "top1": e["top1"], "top5": e["top5"],
             "epochs": json.load(open(config))["epochs"], "params": int(params), "seconds": int(seconds)})
runs.sort(key=lambda r: (r["seed"], r["name"]))
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(runs, f, indent=1)
    f.write("\n")
os.replace(tmp, path)
print(f"== {name} seed {seed}: top-1 {e['top1']:.2f} %")
EOF
  done
done
