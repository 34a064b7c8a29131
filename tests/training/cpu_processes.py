"""What the multi-process and subprocess tests share: torchrun with 2 processes, and their environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# CPU processes on gloo even where GPUs exist (CI has none): what these tests check is the CPU path, where
# bit-identical resumes are promised
ENV = {
    **os.environ,
    "PYTHONPATH": str(SRC),
    "OMP_NUM_THREADS": "1",
    "PADNET_ALLOCATOR": "0",
    "HF_HUB_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",
}
