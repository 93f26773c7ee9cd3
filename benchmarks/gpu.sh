#!/usr/bin/env bash
# One prepared GPU run for issue #11: one JSON line per case on stdout, each case bounded by `timeout`.
#
#   bash benchmarks/gpu.sh                       # on a CUDA machine, from the repository root (at most 8 min: the sum of the timeouts)
#   bash benchmarks/gpu.sh --device cpu --dry-run  # smoke test of every case on a CPU (tiny presets, 2 steps)
#
# Environment: it uses the python on PATH (PYTHON=... to choose) and needs clipl and the dev extras
# importable; with SETUP=1 it first runs `pip install -e .[dev]` (a fresh checkout on a bare machine).
# Cases (the budget of each in seconds is its timeout; all together stay under 8 minutes):
#   train_step       clipl vs open_clip train step, vit_b32 and vit_b16, bf16, batch 256, same weights,
#                    interleaved rounds (benchmarks/train_step.py, module level), with MFU
#   patch_dropout    vit_b16 with model.image.patch_dropout=0.5 vs 0, bf16, batch 256 (benchmarks/patch_dropout.py)
#   mfu              perf/mfu as a clipl run logs it (Trainer.fit + PerfMonitor), vit_b16 and rn50x4, bf16
#   tests_gpu        the GPU tests (DeepSpeed ZeRO-2/3 fits through Lightning, eval): pytest -m gpu tests/gpu
#   accumulation_memory  peak memory of vit_b32 with contrastive accumulation k = 1, 4, 16 at micro-batch 64
# A case that fails or times out prints {"case": ..., "error": ..., "rc": ...} and the script goes on.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=cuda
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "unknown argument $1 (use --device cpu|cuda, --dry-run)" >&2; exit 2 ;;
  esac
done
if [ "${SETUP:-0}" = 1 ]; then
  $PY -m pip install -q -e ".[dev]" >&2 || { echo '{"case": "setup", "error": "pip install -e .[dev] failed"}'; exit 1; }
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 WANDB_MODE=offline

if [ "$DRY" = 1 ]; then
  # Tiny presets and few steps; the budgets stretch x4 (a loaded CPU is slow, not wrong).
  VIT_SMALL=tiny_vit VIT_BIG=tiny_vit RN=tiny_rn BATCH=8 PREC=32-true STRETCH=4
  STEP_ARGS="--steps 2 --warmup 1 --rounds 2 --trainer-rounds 0 --peak-tflops 1"
  MFU_ARGS="--steps 4 --peak-tflops 1"
  ACC_ARGS="--preset tiny_vit --micro 8 --ks 1 4 --steps 2"
else
  VIT_SMALL=vit_b32 VIT_BIG=vit_b16 RN=rn50x4 BATCH=256 PREC=bf16-mixed STRETCH=1
  STEP_ARGS="--steps 10 --warmup 3 --rounds 4 --trainer-rounds 0"
  MFU_ARGS="--steps 30"
  ACC_ARGS="--preset vit_b32 --micro 64 --ks 1 4 16 --steps 3"
fi

# run NAME SECONDS CMD...: the command's JSON lines go to stdout, its log to $LOGS/NAME.log.
LOGS=${LOGS:-runs/gpu_bench}
mkdir -p "$LOGS"
run() {
  local name=$1 budget=$(( $2 * STRETCH )); shift 2
  local out="$LOGS/$name.log"
  timeout --signal=TERM --kill-after=1 "$budget" "$@" > "$out.json" 2> "$out"
  local rc=$?
  grep '^{' "$out.json"
  if [ $rc -ne 0 ]; then
    echo "{\"case\": \"$name\", \"rc\": $rc, \"error\": \"$([ $rc -eq 124 ] && echo "timeout after ${budget}s" || echo failed); see $out\"}"
  fi
}

PRESETS="$VIT_SMALL $VIT_BIG"
[ "$VIT_SMALL" = "$VIT_BIG" ] && PRESETS=$VIT_SMALL
run train_step 140 $PY benchmarks/train_step.py --json --device "$DEVICE" --presets $PRESETS \
  --batch "$BATCH" --precision "$PREC" $STEP_ARGS
run patch_dropout 60 $PY benchmarks/patch_dropout.py --device "$DEVICE" --presets "$VIT_BIG" --batch "$BATCH" \
  --precision "$PREC" $( [ "$DRY" = 1 ] && echo "--steps 2 --rounds 2" || echo "--steps 10 --warmup 3 --rounds 4" )
run mfu 75 $PY benchmarks/mfu.py --device "$DEVICE" --presets "$VIT_BIG" "$RN" --batch "$BATCH" --precision "$PREC" \
  $MFU_ARGS
if [ "$DEVICE" = cuda ]; then
  run tests_gpu 115 $PY benchmarks/pytest_json.py -m gpu tests/gpu
else  # the GPU tests skip themselves without CUDA: collect them only, to catch import errors
  run tests_gpu 115 $PY benchmarks/pytest_json.py -m gpu --collect-only tests/gpu
fi
run accumulation_memory 85 $PY benchmarks/accumulation_memory.py --device "$DEVICE" --precision "$PREC" $ACC_ARGS
