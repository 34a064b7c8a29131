"""Measures of how dynamic a network is, for the PAD-Net analyses (paper 001 §5.2–5.3).

* [`normalised_performance`][padnet.metrics.dynamics.normalised_performance] — Fig. 3: (x − x̄) / x̄ against the mean of all experiments.
* [`parameter_variance`][padnet.metrics.dynamics.parameter_variance] — Fig. 5a: how much a layer's computational kernel changes with the input.
* [`output_variances`][padnet.metrics.dynamics.output_variances] — Fig. 5b: how much each layer's output changes with the input.
* [`layer_dynamic_ratios`][padnet.metrics.dynamics.layer_dynamic_ratios] — Fig. 4: the dynamic ratio of every layer after mode partition.
* [`mask_structure`][padnet.metrics.dynamics.mask_structure] — appendix E: how far a mask is made of whole dynamic or static rows and columns.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.modes import MaskedLayer


def normalised_performance(values) -> list[float]:
    """(x − x̄) / x̄ for every x in `values`, x̄ their mean (PAD-Net Fig. 3, footnote 1).

    Raises:
        ConfigError: no values, or a zero mean.
    """
    values = [float(v) for v in values]
    if not values:
        raise ConfigError("normalised performance needs at least one value")
    mean = sum(values) / len(values)
    if mean == 0:
        raise ConfigError("normalised performance is undefined for a zero mean")
    return [(v - mean) / mean for v in values]


def parameter_variance(coeffs: torch.Tensor, factors: torch.Tensor) -> float:
    """Variance across inputs of a layer's computational kernel, averaged over its elements (PAD-Net Fig. 5a).

    The kernel of sample b is C + Σᵢ π_bi Dᵢ (C the static term, Dᵢ the masked, scaled dynamic factors), so its
    variance across samples is Dᵀ Σ_π D per element: the mean over E elements is tr(Σ_π G) / E with
    Σ_π the population covariance of π across samples and G = D Dᵀ. A static layer (k = 0 or constant π) gives 0.

    Args:
        coeffs: π, (N, k) attention coefficients of N samples.
        factors: D, (k, *shape) dynamic factors as the layer aggregates them.

    Returns:
        The mean over elements of the per-element variance across the N samples (population variance).
    """
    pi = coeffs.double()
    dyn = factors.double().reshape(factors.shape[0], -1)  # (k, E)
    if pi.shape[1] != dyn.shape[0]:
        raise ConfigError(f"{pi.shape[1]} coefficients per sample for {dyn.shape[0]} dynamic factors")
    centred = pi - pi.mean(0)
    covariance = centred.T @ centred / pi.shape[0]  # (k, k)
    return float((covariance * (dyn @ dyn.T)).sum() / dyn.shape[1])


def run_with_hooks(model: nn.Module, loader, hooks) -> None:
    """Run `model` in eval mode over the (images, labels) batches of `loader`, then remove the forward
    `hooks` (the handles that collected what the caller measures) and restore the model's mode."""
    was_training = model.training
    model.eval()
    try:
        for x, _ in loader:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


@torch.no_grad()
def output_variances(model: nn.Module, loader, layers: list[str]) -> dict[str, float]:
    """Variance across inputs of each named layer's output, averaged over its elements (PAD-Net Fig. 5b).

    The model runs in eval mode (its mode is restored).

    Args:
        model: the model to run.
        loader: yields (images, labels).
        layers: names of the modules whose outputs are measured.

    Returns:
        Layer name → the mean over output elements (C·H'·W') of the population variance over all samples.

    Raises:
        ConfigError: a name the model does not have.
    """
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ConfigError(f"the model has no layer {missing[0]!r}")
    sums: dict[str, list] = {}  # name → [Σ y, Σ y², samples] per output element

    def record(name):
        def hook(module, args, out):
            flat = out.detach().double().flatten(1)  # (B, elements)
            if name not in sums:
                sums[name] = [
                    torch.zeros(flat.shape[1], dtype=torch.float64),
                    torch.zeros(flat.shape[1], dtype=torch.float64),
                    0,
                ]
            sums[name][0] += flat.sum(0)
            sums[name][1] += flat.square().sum(0)
            sums[name][2] += flat.shape[0]

        return hook

    hooks = [modules[n].register_forward_hook(record(n)) for n in layers]
    run_with_hooks(model, loader, hooks)
    out = {}
    for name in layers:
        total, squares, count = sums[name]
        mean = total / count
        out[name] = float((squares / count - mean.square()).clamp_min(0).mean())
    return out


def layer_dynamic_ratios(model: nn.Module) -> dict[str, float]:
    """Dynamic ratio ‖M‖₀ / |M| of every partially dynamic layer of `model` (PAD-Net Fig. 4), module name →
    ratio; a layer's masked tensors (kernel, bias, attention vectors) are pooled by their element counts. Masks
    shared by several layers count once, with the first."""
    out, seen = {}, set()
    for name, module in model.named_modules():
        if not isinstance(module, MaskedLayer):
            continue
        dynamic = elements = 0
        for _, mode, _ in module.mode_pairs():
            if mode.partial and id(mode) not in seen:
                seen.add(id(mode))
                dynamic, elements = dynamic + int(mode.mask.sum()), elements + mode.mask.numel()
        if elements:
            out[name] = dynamic / elements
    return out


def mask_structure(mask: torch.Tensor) -> dict[str, float]:
    """How much a 2-D binary mask is organised in whole rows and columns (PAD-Net appendix E, Fig. 7).

    Agreement of a column: the fraction of its elements in the column's majority mode (1.0 when the column is
    all dynamic or all static, about 0.5 for a balanced random column); the mean over columns, and likewise
    over rows. `random_*` are the expected agreements of a random mask with the same dynamic ratio p:
    E[max(X, n − X)] / n for X ~ Binomial(n, p), n the column (row) length.

    Args:
        mask: (rows, columns) of 0/1 values.

    Returns:
        `dynamic_ratio`, `column_agreement`, `row_agreement`, `random_column_agreement`,
            `random_row_agreement`.

    Raises:
        ConfigError: a mask that is not 2-D or not binary.
    """
    if mask.dim() != 2:
        raise ConfigError(f"mask structure needs a 2-D mask, got shape {tuple(mask.shape)}")
    m = mask.detach().double()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ConfigError("mask structure needs a binary (0/1) mask")
    p = float(m.mean())

    def agreement(dim: int) -> float:
        share = m.mean(dim)  # dynamic fraction of every column (dim 0) or row (dim 1)
        return float(torch.maximum(share, 1 - share).mean())

    def expected(n: int) -> float:
        if p in (0.0, 1.0):
            return 1.0
        k = torch.arange(n + 1, dtype=torch.float64)
        log_pmf = (
            torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64))
            - torch.lgamma(k + 1)
            - torch.lgamma(n - k + 1)
            + k * math.log(p)
            + (n - k) * math.log1p(-p)
        )
        return float((log_pmf.exp() * torch.maximum(k, n - k)).sum() / n)

    return {
        "dynamic_ratio": p,
        "column_agreement": agreement(0),
        "row_agreement": agreement(1),
        "random_column_agreement": expected(m.shape[0]),
        "random_row_agreement": expected(m.shape[1]),
    }
