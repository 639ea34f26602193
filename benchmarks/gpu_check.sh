#!/usr/bin/env bash
# The GPU check of issue 26, one script of at most ~8 minutes on a CUDA machine:
#
#   1. benchmarks/feed.py on CUDA: loader samples/s per core (official, ours) against the step's
#      samples/s of nano and s at batch 64 with AMP, and the data wait with 4 loader cores;
#   2. two epochs of study/cli/train.py on the embedded data, AMP + channels_last, augmentation on
#      the device (augment_on: auto), frame cache on;
#   3. two nano trials sharing the GPU (two processes at once: what a fractional GPU is) against
#      the one alone of step 2;
#   4. sliced inference on CUDA (benchmarks/sliced.py);
#   5. pytest -m gpu.
#
# Then one table: step, seconds, result. Usage, from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT]      # OUT defaults to a temporary folder
#
# Each step has its own time limit, so one that hangs cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
export YOLOX_FLOW_CACHE="$OUT/cache"  # the embedded data and the frame cache, built here
PY=${PYTHON:-python}
ROWS=()

step() {  # step NAME LIMIT_S COMMAND... : run, keep its log, add a row
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  ROWS+=("$name|$((SECONDS - t0))|rc $rc")
  echo "== $name: rc $rc after $((SECONDS - t0)) s (log $OUT/$name.log)"
  tail -n 25 "$OUT/$name.log"
  return 0
}

ips() {  # images/s of a training run from its metrics.json
  $PY -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"{m.get('images_per_s', float('nan')):.1f}\")" \
    "$1/metrics.json" 2>/dev/null || echo "n/a"
}

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
  || { echo "gpu_check: no CUDA device; nothing to check"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv 2>/dev/null || true

step feed 150 $PY benchmarks/feed.py --device cuda --sizes nano,s --frames 16 --samples 16 \
  --iters 5 --official "${YOLOX_OFFICIAL:-/work/.mirror/Megvii-BaseDetection+YOLOX/repo}"

TRAIN=(--config configs/nano_embedded.yaml --device cuda --set pretrain=none --set epochs=2
  --set no_aug_epochs=1 --set warmup_epochs=1 --set eval_interval=1 --set amp=true
  --set channels_last=true --set workers=4 --set cache_images=false --set frame_cache=true
  --set augment_on=auto)
step train_alone 120 $PY study/cli/train.py "${TRAIN[@]}" --out "$OUT/alone"
ALONE=$(ips "$OUT/alone")
ROWS[-1]="${ROWS[-1]}; $ALONE img/s alone"

t0=$SECONDS
timeout 150 $PY study/cli/train.py "${TRAIN[@]}" --out "$OUT/shared_a" >"$OUT/shared_a.log" 2>&1 &
A=$!
timeout 150 $PY study/cli/train.py "${TRAIN[@]}" --out "$OUT/shared_b" >"$OUT/shared_b.log" 2>&1 &
B=$!
wait $A; RA=$?
wait $B; RB=$?
SA=$(ips "$OUT/shared_a"); SB=$(ips "$OUT/shared_b")
ROWS+=("two_trials_one_gpu|$((SECONDS - t0))|rc $RA/$RB; $SA + $SB img/s sharing vs $ALONE alone")
echo "== two trials on one GPU: $SA + $SB img/s (alone $ALONE)"

step sliced 90 $PY benchmarks/sliced.py --device cuda --frames 12
step pytest_gpu 120 $PY -m pytest -q -m gpu

echo
echo "gpu_check on $($PY -c 'import torch; print(torch.cuda.get_device_name(0))'), output in $OUT"
printf '%-22s %8s  %s\n' step seconds result
for row in "${ROWS[@]}"; do
  IFS='|' read -r name secs result <<<"$row"
  printf '%-22s %8s  %s\n' "$name" "$secs" "$result"
done
grep -E "ours \(loader|samples/s|^(nano|s) " "$OUT/feed.log" || true
grep -E "passed|failed" "$OUT/pytest_gpu.log" | tail -n 1 || true
