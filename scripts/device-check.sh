#!/usr/bin/env bash
# padnet's checks on a CUDA machine (issue 19 E), in under 8 minutes on one GPU:
#   1. tests/core/test_cuda.py: every layer type, formulation and granularity against the CPU result (outputs and
#      gradients), the deployed form and its TorchScript export and saved folder, the MoE layers, a short
#      training run; fp16 autocast with GradScaler and bf16 per layer family, torch.compile, channels_last;
#   2. a short DDP run over NCCL (bf16, channels_last) when the machine has two GPUs or more;
#   3. padnet bench --quick --device cuda: layer, ResNet-18, MoE and compile/bf16/channels_last timings with CUDA
#      events after warm-up.
# Everything goes to $OUT (default runs/device-check). Uses .venv when its torch sees a GPU, else python3
# with src/ on the path (a machine image that already holds torch, numpy, safetensors, transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device-check}
mkdir -p "$OUT"

PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"

{ nvidia-smi -L; "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"; } \
    | tee "$OUT/machine.txt"

echo "== 1. CUDA tests" | tee -a "$OUT/machine.txt"
timeout 240 "$PY" -m pytest tests/core/test_cuda.py -q -p no:warnings -p no:cacheprovider 2>&1 | tee "$OUT/test_cuda.txt"

GPUS=$(nvidia-smi -L | grep -c '^GPU')
if [ "$GPUS" -ge 2 ]; then
    echo "== 2. DDP over NCCL, 2 processes" | tee -a "$OUT/machine.txt"
    timeout 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m padnet train --device cuda \
        --dataset digits --epochs 1 --batch-size 64 --conv pad --precision bf16 --channels-last --progress false \
        --out "$OUT/ddp" 2>&1 \
        | tee "$OUT/ddp.txt"
else
    echo "== 2. DDP skipped: one GPU" | tee -a "$OUT/machine.txt"
fi

echo "== 3. padnet bench --quick --device cuda" | tee -a "$OUT/machine.txt"
timeout 300 "$PY" -m padnet bench --quick --device cuda --parts layers models moe compile --out "$OUT/bench" 2>&1 \
    | tee "$OUT/bench.txt"
