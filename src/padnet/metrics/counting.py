"""Parameter and FLOPs accounting in the papers' conventions.

* Parameters: every parameter of the model (classifier included), except that a partially dynamic layer
  counts only what a compact model must store (``compact=True``): static parameters at positions that are
  not fully dynamic, dynamic factors at dynamic positions, the attention and the scale factors
  (PAD-Net §4.2, "post-processing"). BatchNorm affine parameters count; running statistics do not.
* FLOPs: multiply-accumulates (MACs) of one image, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (which reports 2 FLOPs per MAC, halved here): convolutions, linear layers and the kernel aggregation
  Σᵢ πᵢ Θᵢ (k MACs per kernel element). Element-wise work (BatchNorm, ReLU, pooling, adding the static
  term) is not counted, as in the papers. For a partially dynamic layer only the dynamic elements are
  aggregated in the compact form, so its aggregation MACs are counted on dynamic elements only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.dynamic_conv import force_formulation
from ..layers.modes import partial_modes


def count_parameters(model: nn.Module, compact: bool = True) -> int:
    """Number of parameters (see module docstring); ``compact=False`` counts every stored element."""
    total = sum(p.numel() for p in model.parameters())
    if not compact:
        return total
    for _, mode in partial_modes(model):
        counts = mode.compact_counts()
        stored = mode.factor_numel + (mode.static.numel() if hasattr(mode, "static") else 0)
        total += counts["dynamic"] + counts["static"] - stored
    return total


def _aggregation_surplus(model: nn.Module) -> int:
    """MACs of aggregating masked (non-dynamic) elements, which the compact form skips."""
    return sum(mode.factor_numel - mode.compact_counts()["dynamic"] for _, mode in partial_modes(model))


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...], compact: bool = True) -> int:
    """MACs for one input of ``input_shape`` (C, H, W), model in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
        counter = FlopCounterMode(display=False)
        # count the per-sample convolution + aggregation, whatever formulation the layers run
        with force_formulation(model, "grouped"), counter:
            model(x)
        macs = counter.get_total_flops() // 2
    finally:
        model.train(was_training)
    return macs - (_aggregation_surplus(model) if compact else 0)


def layer_table(model: nn.Module) -> list[dict]:
    """Per partially dynamic tensor: name, mask elements, dynamic ratio, stored dynamic/static counts."""
    rows = []
    for name, mode in partial_modes(model):
        rows.append({"layer": name, "elements": mode.numel, "dynamic_ratio": mode.dynamic_ratio(),
                     **mode.compact_counts()})
    return rows
