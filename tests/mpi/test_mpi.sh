#!/usr/bin/env bash
# Data-parallel training through mpirun (issue: "Data-parallel training over MPI"; docs/DISTRIBUTED.md).
#   test_mpi.sh VRWKV MPIEXEC      (ctest passes both; MPIEXEC empty: this build has no MPI layer → skipped)
# A tiny VRWKV on 288 Fashion-MNIST images, global batch 12, 48 steps, with every per-sample random stream on
# (crop, flip, erasing, Mixup/CutMix, drop path) plus EMA, clipping and a sharded evaluation:
#   - 2 and 3 ranks match 1 rank: every weight within 1e-5 of its tensor's scale, every logged loss within 1e-5
#     (float32 sums in another order; the runs measured here differ by ~2e-7);
#   - mpirun -np 1 is byte-identical to the plain program, and repeated 2-rank runs are byte-identical;
#   - ZeRO-1 ("zero": 1) is byte-identical to the unsharded run, for 2 and 3 ranks, and resumes from its
#     checkpoint to the same bytes;
#   - a rank killed with SIGKILL ends the job within 20 s, leaves an intact checkpoint, and --resume with the
#     same ranks gives a final model byte-identical to an uninterrupted run; resuming with 3 ranks says so;
#   - a global batch that does not divide by the ranks is exit 2 before any training, with one message (a bad
#     flag too).
set -euo pipefail
VRWKV=$(realpath "$1")
MPIEXEC=${2:-}
if [ -z "$MPIEXEC" ]; then
  echo "SKIP: this vrwkv was built without MPI (install libopenmpi-dev and openmpi-bin, then configure again)"
  exit 77
fi
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG=$HERE/tiny.json
COMPARE=$HERE/compare.py
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
MPIRUN=("$MPIEXEC" --oversubscribe)  # 3 and 5 ranks on a 2-core machine

fail() { echo "FAIL: $*"; exit 1; }
train() {  # train RANKS OUT [ARGS...]: one thread per rank
  local n=$1 out=$2
  shift 2
  "${MPIRUN[@]}" -np "$n" "$VRWKV" train -c "$CONFIG" -o "$out" --threads 1 --no-progress "$@" >"$out.log" 2>&1 ||
    { tail -n 20 "$out.log"; fail "$n-rank training into $out failed"; }
}
resume() {  # resume RANKS OUT
  "${MPIRUN[@]}" -np "$1" "$VRWKV" train -o "$2" --resume --threads 1 --no-progress >>"$2.log" 2>&1 ||
    { tail -n 20 "$2.log"; fail "$1-rank --resume of $2 failed"; }
}
same() { cmp -s "$1/model.safetensors" "$2/model.safetensors" || fail "$1 and $2: the models differ (expected identical bytes)"; echo "ok: $1 = $2 (identical bytes)"; }

echo "== N ranks against 1"
"$VRWKV" train -c "$CONFIG" -o plain --threads 1 --no-progress >plain.log 2>&1 || fail "plain training failed"
train 1 r1
same plain r1
train 2 r2
train 2 r2again
same r2 r2again
train 3 r3
for n in 2 3; do
  "$COMPARE" r1 "r$n" 1e-5 || fail "$n ranks differ from 1 rank by more than 1e-5"
done
grep -q '"comm_seconds_per_step"' r2/metrics.jsonl || fail "the 2-rank metrics have no comm_seconds_per_step"
grep -q "on 2 ranks (6 images each per step)" r2.log || fail "the 2-rank run did not say how it splits the batch"

echo "== ZeRO-1"
sed 's/"log_every": 1/"log_every": 1, "zero": 1/' "$CONFIG" >zero.json
grep -q '"zero": 1' zero.json || fail "could not make the ZeRO-1 configuration"
for n in 2 3; do
  "${MPIRUN[@]}" -np "$n" "$VRWKV" train -c zero.json -o "z$n" --threads 1 --no-progress >"z$n.log" 2>&1 ||
    { tail -n 20 "z$n.log"; fail "ZeRO-1 on $n ranks failed"; }
  grep -q "ZeRO-1" "z$n.log" || fail "the ZeRO-1 run did not say so"
  same "r$n" "z$n"
done
# A ZeRO-1 checkpoint (rank 0 collects the moments slice by slice) resumes to the same bytes.
"${MPIRUN[@]}" -np 3 "$VRWKV" train -c zero.json -o zpart --threads 1 --no-progress --stop-after 21 >zpart.log 2>&1 ||
  { tail -n 20 zpart.log; fail "ZeRO-1 on 3 ranks, stopped after 21 steps, failed"; }
[ ! -f zpart/model.safetensors ] || fail "the stopped ZeRO-1 run did not stop"
resume 3 zpart
same z3 zpart

echo "== SIGKILL of one rank, then --resume"
long=(--epochs 40)  # 960 steps: long enough to be killed in the middle
train 2 whole "${long[@]}"
"${MPIRUN[@]}" -np 2 "$VRWKV" train -c "$CONFIG" -o killed --threads 1 --no-progress "${long[@]}" >killed.log 2>&1 &
launcher=$!
for _ in $(seq 600); do  # wait until 200 steps are logged
  [ -f killed/metrics.jsonl ] && [ "$(grep -c '"loss"' killed/metrics.jsonl || true)" -ge 200 ] && break
  sleep 0.05
done
victim=""
for p in $(pgrep -P "$launcher" || true); do
  tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$p
done
[ -n "$victim" ] || fail "rank 1 of the run to be killed was not found"
start=$(date +%s.%N)
kill -KILL "$victim"
rc=0
wait "$launcher" || rc=$?
took=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
echo "mpirun ended $took s after the SIGKILL of rank 1 (exit $rc)"
[ "$rc" != 0 ] || fail "the job survived the kill of a rank"
python3 -c "import sys; sys.exit(0 if $took <= 20 else 1)" || fail "the job took $took s to end after a rank died"
[ ! -f killed/model.safetensors ] || fail "the killed run finished before the kill; make it longer"
cp killed/checkpoint.safetensors killed_checkpoint.safetensors
resume 2 killed
grep -q "resuming at step" killed.log || fail "the resumed run did not say where it resumed"
same whole killed

echo "== resume with another number of ranks"
cp -r killed other
cp killed_checkpoint.safetensors other/checkpoint.safetensors
rm other/model.safetensors
: >other.log
resume 3 other
grep -q "written by 2 ranks, this run has 3" other.log || fail "resuming 2 ranks' checkpoint on 3 did not say so"
"$COMPARE" whole other 1e-4 || fail "the run resumed on 3 ranks strays from the 2-rank run"

echo "== a global batch that does not divide"
rc=0
"${MPIRUN[@]}" -np 5 "$VRWKV" train -c "$CONFIG" -o five --threads 1 >five.log 2>&1 || rc=$?
[ "$rc" = 2 ] || { cat five.log; fail "batch 12 over 5 ranks: exit $rc, expected 2"; }
grep -q "batch_size 12 (the global batch) does not divide over the 5 ranks" five.log || fail "no clear message"
[ "$(grep -c '^vrwkv:' five.log)" = 1 ] || fail "expected one message, got: $(grep '^vrwkv:' five.log)"
[ ! -e five/metrics.jsonl ] || fail "the refused run wrote a metrics file"
echo "ok: exit 2 with: $(grep '^vrwkv:' five.log)"
rc=0
"${MPIRUN[@]}" -np 2 "$VRWKV" train --no-such-flag >flag.log 2>&1 || rc=$?
[ "$rc" = 2 ] && [ "$(grep -c '^vrwkv:' flag.log)" = 1 ] || { cat flag.log; fail "a bad flag under mpirun: exit $rc, expected 2 and one message"; }
echo "ok: a bad flag under mpirun is exit 2 with one message"
echo "PASS"
