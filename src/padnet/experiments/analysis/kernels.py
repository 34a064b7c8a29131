"""Statistics of the aggregated kernels Ŵ(x) of dynamic layers, and magnitude pruning of DY-Conv kernels
(SD-Conv §3.1: Fig. 2 and Table 1, the study that motivates SD-Conv)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.dynamic_conv import DynamicConv2d
from padnet.layers.sdconv import SparseDynamicConv2d
from padnet.metrics.dynamics import run_with_hooks


def _dynamic_layers(model: nn.Module) -> list[tuple[str, DynamicConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicConv2d)]


@torch.no_grad()
def aggregated_kernel_stats(model: nn.Module, loader) -> list[dict]:
    """Layer-wise mean and variance of the aggregated kernels' values over a data set (SD-Conv Fig. 2).

    For every DY-Conv family layer (DY-Conv, CondConv, PAD-Net, SD-Conv) the aggregated kernel of sample b is
    Ŵ_b = C + Σᵢ π_bi Dᵢ (C: the static term, none for DY-Conv and SD-Conv; Dᵢ: the masked, scaled kernels).
    Mean and variance are taken over all elements of all samples' Ŵ_b, from π alone: Σ_b ‖Ŵ_b‖² =
    Σ_b (‖C‖² + 2 π_b·⟨D, C⟩ + π_bᵀ G π_b) with G = ⟨Dᵢ, Dⱼ⟩, so no per-sample kernel is built.

    Args:
        model: any model with dynamic convolutions; run in eval mode (its mode is restored).
        loader: yields (images, labels) batches.

    Returns:
        One dict per layer, in module order: `name`, `mean`, `variance`, `samples`.

    Raises:
        ConfigError: the model has no dynamic convolution.
    """
    layers = _dynamic_layers(model)
    if not layers:
        raise ConfigError("the model has no dynamic convolutions to measure")
    coeffs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    hooks = [
        layer.attention.register_forward_hook(lambda mod, args, out, n=name: coeffs[n].append(out.double()))
        for name, layer in layers
    ]
    run_with_hooks(model, loader, hooks)
    out = []
    for name, layer in layers:
        pi = torch.cat(coeffs[name])  # (N, k)
        lam_s, lam_d = layer.scales()
        dyn = layer.weight_mode.dynamic_part(layer.weight, lam_d).double().flatten(1)  # (k, E)
        static = layer.weight_mode.static_part(lam_s)
        const = (
            torch.zeros(dyn.shape[1], dtype=torch.float64) if static is None else static.double().flatten()
        )
        count = pi.shape[0] * dyn.shape[1]
        total = pi.shape[0] * const.sum() + (pi @ dyn.sum(1)).sum()
        squares = (
            pi.shape[0] * const.square().sum()
            + 2 * (pi @ (dyn @ const)).sum()
            + ((pi @ (dyn @ dyn.T)) * pi).sum()
        )
        mean = float(total / count)
        out.append(
            {"name": name, "mean": mean, "variance": float(squares / count) - mean**2, "samples": pi.shape[0]}
        )
    return out


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Prune the `sparsity` fraction of DY-Conv kernel weights with the lowest magnitude, over all layers.

    A global magnitude cut is an SD-Conv mask with the same threshold τ in every layer, so the result is the
    model rebuilt with [`SparseDynamicConv2d`][padnet.layers.sdconv.SparseDynamicConv2d] layers (`mask_strategy="different"`) holding the trained
    weights and τ = the cut: parameter and FLOPs counting, sparsity reports and deployment then apply as to a
    trained SD-Conv model. `model` is left unchanged. (SD-Conv §3.1, Table 1 "w/ Pruned".)

    Raises:
        ConfigError: sparsity outside [0, 1), no DY-Conv layers, or layers that are not plain DY-Conv
            (PAD-Net or already sparse).
    """
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    layers = _dynamic_layers(model)
    if not layers:
        raise ConfigError("the model has no DY-Conv layers to prune")
    if any(layer.mode_pairs() for _, layer in layers):  # masks: PAD-Net or SD-Conv
        raise ConfigError("magnitude pruning takes a DY-Conv model (not PAD-Net or SD-Conv)")
    magnitudes = torch.cat([layer.weight.abs().flatten() for _, layer in layers])
    cut = (
        float(torch.kthvalue(magnitudes, max(1, round(sparsity * magnitudes.numel()))).values)
        if sparsity
        else 0.0
    )
    pruned = copy.deepcopy(model)
    for name, layer in layers:
        sparse = SparseDynamicConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            layer.bias is not None,
            num_kernels=layer.num_kernels,
            formulation=layer.formulation,
        )
        sparse.attention = copy.deepcopy(layer.attention)  # the trained router, whatever its reduction
        sparse.weight.copy_(layer.weight)
        if layer.bias is not None:
            sparse.bias.copy_(layer.bias)
        sparse.weight_mode.threshold.fill_(cut)
        pruned.set_submodule(name, sparse)
    return pruned
