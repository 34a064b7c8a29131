"""Kernel attention of dynamic convolution and its temperature.

DY-Conv ("Dynamic Convolution: Attention over Convolution Kernels", Chen et al. 2020; PAD-Net eq. 1)
computes k mixing coefficients per sample with a squeeze-and-excitation branch:
global average pool → FC(C → C/r) → ReLU → FC(→ k) → softmax(z / T). CondConv uses a sigmoid
instead of the softmax (per-kernel routing weights that need not sum to one).
"""

from __future__ import annotations

import torch
from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.layers.options import check_size_option


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


ROUTING_FUNCTIONS = {"softmax": _softmax, "sigmoid": torch.sigmoid}  # DY-Conv's and CondConv's normalisation
ROUTINGS = tuple(ROUTING_FUNCTIONS)


class TemperatureRouting(nn.Module):
    """Base of every input-dependent routing branch whose logits are divided by a temperature T.

    Holds the `temperature` buffer (a 0-d float, dimensionless, > 0) that
    [`set_temperature`][padnet.layers.attention.set_temperature] and the trainer's annealing schedule update
    (a buffer, so a compiled model does not recompile when it changes).
    """

    def __init__(self, temperature: float = 30.0):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(1.0))
        self.update_temperature(temperature)

    def update_temperature(self, temperature: float) -> None:
        """Set T (> 0) for the following forward passes.

        Raises:
            ConfigError: T not > 0.
        """
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature.fill_(float(temperature))

    def normalise(self, logits: torch.Tensor, activation, like: torch.Tensor) -> torch.Tensor:
        """`activation(logits / T)` computed in float32 (also inside `torch.autocast` and in a model cast to
        half precision: at T = 30 the logits' differences are what bfloat16 rounds away), returned in the
        dtype of `like` (the routing's input), as transformers' Mixtral keeps its router in float32."""
        with torch.autocast(logits.device.type, enabled=False):
            out = activation(logits.float() / self.temperature.float())
        return out.to(like.dtype)


class KernelAttention(TemperatureRouting):
    """Squeeze-and-excitation attention over k kernels.

    Args:
        in_channels: C, channels of the layer input.
        num_kernels: k.
        reduction: r; hidden width is `max(C // r, min_hidden)`. `0`: no hidden layer, one linear map
            C → k (CondConv's routing function).
        temperature: initial softmax temperature T (Chen et al. anneal 30 → 1).
        routing: `"softmax"` (DY-Conv) or `"sigmoid"` (CondConv; the temperature divides the logits too).
        min_hidden: lower bound of the hidden width.

    Input (B, C, H, W) → coefficients π (B, k) in the input's dtype, normalised in float32
    ([`normalise`][padnet.layers.attention.TemperatureRouting.normalise]).
    """

    def __init__(
        self,
        in_channels: int,
        num_kernels: int,
        reduction: int = 4,
        temperature: float = 30.0,
        routing: str = "softmax",
        min_hidden: int = 4,
    ):
        super().__init__(temperature)
        check_choice("routing", routing, ROUTINGS)
        check_size_option("num_kernels", num_kernels)
        check_size_option("reduction", reduction)
        self.routing, self.reduction = routing, reduction
        self._normalise = ROUTING_FUNCTIONS[routing]
        if reduction == 0:
            hidden, self.fc1, self.act = in_channels, nn.Identity(), nn.Identity()
        else:
            hidden = max(in_channels // reduction, min_hidden)
            self.fc1, self.act = nn.Linear(in_channels, hidden, bias=False), nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # (B, C)
        logits = self.fc2(self.act(self.fc1(pooled)))  # (B, k)
        return self.normalise(logits, self._normalise, x)


class TemperatureSchedule:
    """Linear temperature annealing per iteration (Chen et al. 2020: 30 → 1 over the first epochs).

    Args:
        start: T at step 0 (dimensionless, > 0).
        end: T at the last annealing step `steps - 1` and after it (> 0).
        steps: number of iterations of the linear decay (0 = constant `end`).

    Calling the schedule with an iteration index returns T for that iteration: `start` at step 0, `end` at
    step `steps - 1`, linear in between, so a run of `steps` iterations trains its last one at `end`.
    [`anneals`][padnet.layers.attention.TemperatureSchedule.anneals] says whether T at a step differs from T at the step before.

    Raises:
        ConfigError: a non-positive temperature or negative `steps`.
    """

    def __init__(self, start: float = 30.0, end: float = 1.0, steps: int = 0):
        if start <= 0 or end <= 0 or steps < 0:
            raise ConfigError(f"temperatures must be > 0 and steps >= 0, got {start}, {end}, {steps}")
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def __call__(self, step: int) -> float:
        if step >= self.steps - 1:
            return self.end
        return self.start + (self.end - self.start) * step / (self.steps - 1)

    def anneals(self, step: int) -> bool:
        """Whether the temperature changes at `step` (from step 1 to the last annealing step)."""
        return 0 < step < self.steps and self.start != self.end


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature of every routing branch ([`TemperatureRouting`][padnet.layers.attention.TemperatureRouting]) in `model`.

    Returns how many were set.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, TemperatureRouting):
            module.update_temperature(temperature)
            count += 1
    return count
