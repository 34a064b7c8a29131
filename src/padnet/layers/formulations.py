"""Exact formulations of a convolution whose kernel is a per-sample mix of k kernels.

Every formulation computes, for each sample b, `conv(x_b, Σᵢ π_bi Θᵢ + S) + bias_b` (PAD-Net eq. 1 and 4
with the static term S); they differ only in speed and memory:

* `grouped` — aggregate one kernel per sample, then one convolution with groups = batch × groups.
  Fast on large maps (measured here, batch 64, 2 threads, forward + backward: 1.1× the static
  convolution at 32×32, 1.3× at 16×16), slow on small ones (8.6× at 512 channels 4×4).
* `per_sample` — aggregate, then one convolution per sample over `unbind` views (never `w[i]`
  indexing, whose backward builds a full zero gradient per slice). The batch-1 fast path: one plain
  convolution. Best for inference on mid-size maps (2.8× at 8×8 vs 4.1× grouped).
* `batched` — one ordinary convolution with (k [+ 1])·Cout outputs (each kernel and the static kernel),
  then the π-weighted sum. Convolution is linear in the kernel, so this is exact; it costs k× the FLOPs
  but no per-sample kernels (B·|Θ| memory), so it wins on small maps (5.1× at 4×4) and exports to ONNX
  with a dynamic batch dimension (no batch-sized `groups`).

`ConvGeometry` carries `nn.Conv2d`'s stride, padding, dilation and groups.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from padnet.errors import check_choice
from padnet.layers.modes import StructuredSplit, aggregate

FORMULATIONS = ("grouped", "per_sample", "batched")


class ConvGeometry(NamedTuple):
    """`F.conv2d`'s arguments after the bias, in its order (so `F.conv2d(x, w, b, *geo)` works)."""

    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int


def grouped(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry
) -> torch.Tensor:
    """`x` (B, Cin, H, W), per-sample `weight` (B, Cout, Cin/g, kh, kw), `bias` (B, Cout) or None
    → (B, Cout, H', W') as one grouped convolution."""
    batch, cout = x.shape[0], weight.shape[1]
    # (1, B·Cin, H, W) convolved with B·groups groups
    out = F.conv2d(
        x.reshape(1, -1, *x.shape[2:]),
        weight.reshape(-1, *weight.shape[2:]),
        None if bias is None else bias.reshape(-1),
        geo.stride,
        geo.padding,
        geo.dilation,
        batch * geo.groups,
    )
    return out.reshape(batch, cout, *out.shape[2:])


def per_sample(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry
) -> torch.Tensor:
    """As [`grouped`][padnet.layers.formulations.grouped], one convolution per sample (one plain convolution for batch 1)."""
    if x.shape[0] == 1:
        return F.conv2d(x, weight[0], None if bias is None else bias[0], *geo)
    biases = [None] * x.shape[0] if bias is None else bias.unbind(0)
    return torch.cat(
        [F.conv2d(xb.unsqueeze(0), wb, bb, *geo) for xb, wb, bb in zip(x.unbind(0), weight.unbind(0), biases)]
    )


def batched(
    x: torch.Tensor,
    coeffs: torch.Tensor,
    kernels: torch.Tensor,
    static: torch.Tensor | None,
    geo: ConvGeometry,
) -> torch.Tensor:
    """Σᵢ π_bi conv(x_b, Θᵢ) + conv(x_b, S) without per-sample kernels.

    `coeffs` π (B, k), `kernels` (k, Cout, Cin/g, kh, kw), `static` S (Cout, Cin/g, kh, kw) or None
    → (B, Cout, H', W'). No bias (callers add it).
    """
    batch, g = x.shape[0], geo.groups
    if static is not None:
        kernels = torch.cat([kernels, static.unsqueeze(0)])
        coeffs = torch.cat([coeffs, coeffs.new_ones(batch, 1)], dim=1)
    n, cout = kernels.shape[:2]
    per_group = cout // g
    # output channels ordered (group, kernel, channel-in-group) so each group sees its own inputs
    stacked = kernels.reshape(n, g, per_group, *kernels.shape[2:]).transpose(0, 1)
    out = F.conv2d(
        x,
        stacked.reshape(g * n * per_group, *kernels.shape[2:]),
        None,
        geo.stride,
        geo.padding,
        geo.dilation,
        g,
    )
    out = out.reshape(batch, g, n, per_group, *out.shape[2:])  # (B, g, n, Cout/g, H', W')
    return torch.einsum("bn,bgnchw->bgchw", coeffs, out).reshape(batch, cout, *out.shape[4:])


def keep_format(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`out` (B, C', H', W') in the memory format of the layer input `x`: channels_last when `x` is
    channels_last (and not also contiguous), so a dynamic layer keeps the format of the network around it as
    `nn.Conv2d` does. The formulations' reshapes work in the contiguous format."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out


def rule(batch: int, pixels: int, grad: bool) -> str:
    """The formulation measured fastest here for a batch of `batch` maps of `pixels` output pixels.

    Measured at ResNet-18 shapes (batch 64, 2 threads, `padnet bench`): grouped from 100 pixels; on
    8×8 maps grouped when training, per-sample for inference; batched below; one plain convolution for
    batch 1. [`padnet.layers.autotune`][padnet.layers.autotune] measures instead of assuming.
    """
    if batch == 1:
        return "per_sample"
    if pixels >= 100 or (pixels >= 32 and grad):
        return "grouped"
    return "per_sample" if pixels >= 32 else "batched"


def filter_rule(batch: int, pixels: int, grad: bool) -> str:
    """[`rule`][padnet.layers.formulations.rule] for the dynamic filters of a filter-structured layer: a fraction of Cout, where
    per-sample convolutions lose to grouped ones also on 8×8 maps (77 of 256 filters, batch 64: 43.7 ms
    per-sample vs 11.5 ms grouped)."""
    if batch == 1:
        return "per_sample"
    return "grouped" if pixels >= 32 else "batched"


def filter_split(
    x: torch.Tensor,
    coeffs: torch.Tensor,
    static: torch.Tensor,
    kernels: torch.Tensor,
    split: StructuredSplit,
    path: str,
    geo: ConvGeometry,
    depthwise: bool,
) -> torch.Tensor:
    """Structured PAD-Net convolution: static filters as one plain convolution, dynamic filters through `path`.

    `static` (n_static, Cin/g, kh, kw) and `kernels` (k, n_dynamic, Cin/g, kh, kw) hold the filters of
    `split` = (static filter indices, dynamic filter indices, inverse order), which puts the outputs
    back in the original channel order. Needs groups = 1 or a depthwise convolution.
    """
    static_idx, dynamic_idx, inverse = split
    parts = []
    for filters, weight in ((static_idx, static), (dynamic_idx, kernels)):
        if not len(filters):
            continue
        xs, g = x, geo
        if depthwise:  # each filter sees only its own channel
            xs, g = x.index_select(1, filters), geo._replace(groups=len(filters))
        if weight is static:
            parts.append(F.conv2d(xs, weight, None, *g))
        elif path == "batched":
            parts.append(batched(xs, coeffs, weight, None, g))
        else:
            parts.append(PER_SAMPLE[path](xs, aggregate(coeffs, weight), None, g))
    out = torch.cat(parts, 1)
    return out if len(parts) == 1 else out.index_select(1, inverse)


PER_SAMPLE = {"grouped": grouped, "per_sample": per_sample}


class FormulationChoice:
    """Mixin: the formulation of a dynamic convolution, decided once per (input shape, grad mode).

    Hosts set `self._formulation` via the `formulation` property, provide `output_size`, implement
    `run(x, path)` and may set `_rule` (a function like [`rule`][padnet.layers.formulations.rule]) at construction.
    """

    _rule = staticmethod(rule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return keep_format(self.run(x, self.path_for(x.shape)), x)

    def path_for(self, shape: torch.Size) -> str:
        """The formulation for inputs of `shape` in the current grad mode (decided once, then cached). While
        `torch.compile` traces, `"auto"` follows the layer's rule only: a graph that read the per-shape cache
        (and [`autotune`][padnet.layers.autotune.autotune]'s eager measurements in it) would recompile whenever
        an eager call added to it."""
        if self._formulation != "auto":
            return self._formulation
        grad = torch.is_grad_enabled()
        if torch.compiler.is_compiling():  # the rule alone: a graph guarded on the cache would recompile
            return self._rule(shape[0], math.prod(self.output_size(shape[2:])), grad)
        key = (tuple(shape), grad)
        if key not in self._paths:
            self._paths[key] = self._rule(shape[0], math.prod(self.output_size(shape[2:])), grad)
        return self._paths[key]

    @property
    def chosen_paths(self) -> dict[tuple[tuple[int, ...], bool], str]:
        """What `"auto"` has chosen so far: (input shape, grad mode) → formulation (a copy)."""
        return dict(self._paths)

    def set_path(self, shape: tuple[int, ...], grad: bool, path: str) -> None:
        """Fix the formulation `"auto"` uses for inputs of `shape` in grad mode `grad`."""
        check_choice("formulation", path, FORMULATIONS)
        self._paths[(tuple(shape), grad)] = path

    @property
    def formulation(self) -> str:
        """`"auto"` or a fixed formulation; setting it clears the per-shape choices."""
        return self._formulation

    @formulation.setter
    def formulation(self, value: str) -> None:
        check_choice("formulation", value, ("auto", *FORMULATIONS))
        self._formulation = value
        self._paths = {}


@contextlib.contextmanager
def force_formulation(model: nn.Module, formulation: str) -> Iterator[nn.Module]:
    """Run every dynamic convolution of `model` that chooses a formulation (DY-Conv, CondConv, PAD-Net,
    deployed) with `formulation` inside the block, e.g. for counting or export. The layers' own settings
    and cached choices are restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, FormulationChoice)]
    saved = [(m._formulation, m._paths) for m in layers]
    try:
        for m in layers:
            m.formulation = formulation
        yield model
    finally:
        for m, (form, paths) in zip(layers, saved):
            m._formulation, m._paths = form, paths
