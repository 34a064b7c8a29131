"""Parameter and FLOPs accounting in the papers' conventions.

* Parameters: every parameter of the model (classifier included), except that a partially dynamic layer
  counts only what a compact model must store (`compact=True`): static parameters at positions that are
  not fully dynamic, dynamic factors at dynamic positions, the attention and the scale factors
  (PAD-Net §4.2, "post-processing"). BatchNorm affine parameters count; running statistics do not.
* FLOPs: multiply-accumulates (MACs) of one image, counted by `torch.utils.flop_counter.FlopCounterMode`
  (which reports 2 FLOPs per MAC, halved here): convolutions, linear layers and the kernel aggregation
  Σᵢ πᵢ Θᵢ (k MACs per kernel element). Element-wise work (BatchNorm, ReLU, pooling, adding the static
  term) is not counted, as in the papers. For a partially dynamic layer only the dynamic elements are
  aggregated in the compact form, so its aggregation MACs are counted on dynamic elements only; likewise a
  static element of an input-generated vector (ODConv attention, DCD's Λ/Φ) needs no row of its head.
* SD-Conv (paper 002 §4.3): parameters are the kept (non-zero) kernel weights; FLOPs are counted on the
  aggregated sparse kernel — a position zero in all k kernels costs no convolution MAC — and the aggregation
  on the kept weights only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from padnet.errors import ConfigError, check_module
from padnet.layers.formulations import force_formulation
from padnet.layers.modes import MaskedLayer, mode_tensors


@torch.no_grad()
def count_parameters(model: nn.Module, compact: bool = True) -> int:
    """Number of parameters (see module docstring); `compact=False` counts every stored element.

    Each mode says what a compact model stores of its tensor (`Mode.compact_counts`), in place of its
    dynamic factors and static parameters.

    Raises:
        ConfigError: a `model` that is not an `nn.Module`.
    """
    check_module(model, "count_parameters")
    total = sum(p.numel() for p in model.parameters())
    if not compact:
        return total
    for _, mode, factors in mode_tensors(model):
        counts = mode.compact_counts(factors)
        stored = factors.numel() + (0 if mode.static is None else mode.static.numel())
        total += counts["dynamic"] + counts["static"] - stored
    return total


def _output_pixels(out) -> int:
    """Output positions of one sample of a layer's output (B, C, *spatial); 1 without spatial dimensions."""
    return math.prod(out.shape[2:]) if isinstance(out, torch.Tensor) and out.dim() > 2 else 1


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...], compact: bool = True) -> int:
    """Multiply-accumulates for one input of `input_shape` (C, H, W) (see the module docstring).

    The model runs once in eval mode (its mode is restored) with every dynamic convolution in the grouped
    formulation, so the count does not depend on the formulation a layer would choose.
    `compact=False` also counts aggregating the static positions of PAD-Net layers and the pruned weights of
    SD-Conv layers; otherwise each mode subtracts what the compact form skips (`Mode.skipped_macs`).

    Raises:
        ConfigError: `model` is not an `nn.Module`; the input shape does not fit the model.
    """
    check_module(model, "count_flops")
    was_training = model.training
    model.eval()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedLayer)]
    pixels: dict[str, int] = {}  # output positions of each layer with dynamic factors
    hooks = [
        m.register_forward_hook(lambda mod, args, out, n=n: pixels.__setitem__(n, _output_pixels(out)))
        for n, m in layers
    ]
    try:
        param = next(model.parameters())
        x = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
        counter = FlopCounterMode(display=False)
        # count the per-sample convolution + aggregation, whatever formulation the layers run
        try:
            with force_formulation(model, "grouped"), counter:
                model(x)
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0]
            raise ConfigError(f"input shape {tuple(input_shape)} does not fit the model ({reason})") from None
        macs = counter.get_total_flops() // 2
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not compact:
        return macs
    skipped, seen = 0, set()
    for name, layer in layers:
        for _, mode, factors in layer.mode_pairs():
            if id(mode) not in seen:
                seen.add(id(mode))
                skipped += mode.skipped_macs(factors, pixels.get(name, 0))
    return macs - skipped
