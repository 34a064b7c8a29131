"""Mixed-precision training of padnet's loops: `--precision fp32|bf16|fp16`.

`bf16` and `fp16` run the forward pass inside `torch.autocast` with float32 parameters (master weights); the
layers keep their numerically fragile parts in float32 there (routing softmax at temperature 30, router, scale
factors, SD-Conv's masks, load-balancing losses, mode-partition scores). `fp16` also scales the loss with
`torch.amp.GradScaler`, as its narrow exponent range needs, and runs on GPUs only (the CPU has no float16
autocast worth the name). `padnet train` uses [`Precision`][padnet.training.precision.Precision];
`padnet finetune` hands the same choice to accelerate ([`ACCELERATE_NAMES`][padnet.training.precision.ACCELERATE_NAMES]).
"""

from __future__ import annotations

import contextlib
import math

import torch

from padnet.errors import ConfigError, check_choice

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(AUTOCAST_DTYPES)
ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # accelerate's `mixed_precision`


def check_precision(precision: str, device_type: str) -> None:
    """ConfigError (one line) for an unknown precision, or fp16 on a device without it (the CPU)."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp16" and device_type != "cuda":
        raise ConfigError("precision fp16 needs a GPU (with a gradient scaler); on the CPU use bf16")


class Precision:
    """The autocast region and loss scaling of one training run.

    Args:
        precision: one of `PRECISIONS`.
        device: where the run computes.

    Raises:
        ConfigError: see [`check_precision`][padnet.training.precision.check_precision].
    """

    def __init__(self, precision: str, device: torch.device):
        check_precision(precision, device.type)
        self.precision, self.device_type = precision, device.type
        self.dtype = AUTOCAST_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The region the forward pass and the loss run in (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`, scaled for fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()`; for fp16 the scaler's step (skipped when the gradients overflowed) and update."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        """The scaler's state (JSON numbers; empty without a scaler), saved with checkpoints."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore [`state_dict`][padnet.training.precision.Precision.state_dict] (read from disk: validated).

        Raises:
            ConfigError: a scaler state that is not a mapping of the scaler's keys to finite numbers.
        """
        if self.scaler is None or not state:
            return
        expected = set(self.scaler.state_dict())
        if not (
            isinstance(state, dict)
            and set(state) == expected
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in state.values())
        ):
            raise ConfigError(
                f"the saved gradient scaler state is not a mapping of {', '.join(sorted(expected))} to finite numbers"
            )
        self.scaler.load_state_dict(state)
