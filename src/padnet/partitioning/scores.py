"""Importance scores for mode partition: which elements deserve to stay dynamic.

* ``snip`` — PAD-Net eq. 7–8: the magnitude of ∂L/∂M accumulated over N minibatches, with the mask
  relaxed to a real number (M = current mask). The gradient of the loss over the N batches is
  summed before taking the magnitude (eq. 7 with D_b = those batches); normalising by Σ|g| (eq. 8)
  does not change a ranking, so scores are returned unnormalised.
* ``magnitude`` — |Θᵢ| of the dynamic factors (mean over the k factors for a shared mask).
* ``random`` — uniform noise (the "Random" partition of appendix D).

Each function returns one score tensor per masked tensor, with the mask's shape. For filter-granular masks
the element scores are summed per filter (``PartialMode.pool_scores``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.modes import mode_tensors
from padnet.parallel import current

MaskedTensor = tuple[str, nn.Module, torch.Tensor]  # (name, PartialMode, dynamic factors (k, *shape))


def masked_tensors(model: nn.Module) -> list[MaskedTensor]:
    """Every tensor of ``model`` whose mask mode partition sets (``Mode.partial``), each once."""
    return [t for t in mode_tensors(model) if t[1].partial]


def magnitude_scores(tensors: list[MaskedTensor]) -> list[torch.Tensor]:
    """|Θᵢ| per mask element (mean over the k factors when the mask is shared)."""
    scores = []
    for _, mode, factors in tensors:
        mag = factors.detach().abs()
        per_element = mag if mode.granularity == "kernel" else mag.mean(0, keepdim=True)
        scores.append(mode.pool_scores(per_element))
    return scores


def random_scores(tensors: list[MaskedTensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Uniform random scores, reproducible through ``generator``."""
    return [torch.rand(mode.mask.shape, generator=generator).to(mode.mask.device) for _, mode, _ in tensors]


def snip_scores(
    model: nn.Module,
    tensors: list[MaskedTensor],
    batches: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_batches: int = 10,
    batch_loss: Callable[[nn.Module, object], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """|Σ_b ∂L_b/∂M| over ``num_batches`` batches of (x, y) (PAD-Net eq. 7).

    ``batch_loss(model, batch)``, when given, computes the loss of other batches (e.g. the keyword dicts of
    a Hugging Face model) instead of ``loss_fn(model(x), y)``.

    The model runs in training mode (as in training); BatchNorm running statistics and parameter
    gradients are left exactly as they were. A filter-granular mask is relaxed to one value per element
    for the gradient, whose magnitudes are then summed per filter. Raises ConfigError when ``batches``
    yields nothing.
    """
    modes = [mode for _, mode, _ in tensors]
    saved = [mode.mask for mode in modes]
    for mode in modes:
        mode.mask = mode.element_mask().clone()
    masks = [mode.mask for mode in modes]
    buffers = {k: v.clone() for k, v in model.named_buffers() if not k.endswith("mask")}
    grads = [torch.zeros_like(m) for m in masks]
    was_training = model.training
    model.train()
    seen = 0
    try:
        for m in masks:
            m.requires_grad_(True)
        device = masks[0].device
        for batch in itertools.islice(batches, num_batches):
            if batch_loss is None:
                x, y = batch
                loss = loss_fn(model(x.to(device)), y.to(device))
            else:
                loss = batch_loss(model, batch)
            for acc, g in zip(grads, torch.autograd.grad(loss, masks)):
                acc += g
            seen += 1
    finally:
        for mode, mask in zip(modes, saved):
            mode.mask = mask
        with torch.no_grad():
            for k, v in buffers.items():
                model.get_buffer(k).copy_(v)
        model.train(was_training)
    if seen == 0:
        raise ConfigError("mode partition needs at least one batch of training data")
    current().all_reduce_(grads)  # data-parallel runs: every process scores the batches of all, same masks
    return [mode.pool_scores(g.abs()) for mode, g in zip(modes, grads)]
