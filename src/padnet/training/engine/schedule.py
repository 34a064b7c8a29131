"""Learning-rate schedule: linear warm-up then one cosine cycle to zero (PAD-Net appendix A)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Multiplier of the peak learning rate at each step (for `torch.optim.lr_scheduler.LambdaLR`).

    Rises linearly from 1/(warmup+1) to 1 over `warmup_steps`, then follows a cosine to 0 at
    `total_steps`.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """`LambdaLR` stepping once per iteration with [`warmup_cosine`][padnet.training.engine.schedule.warmup_cosine]."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
