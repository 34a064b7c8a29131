"""Importance scores for mode partition: which elements deserve to stay dynamic.

* `snip` — PAD-Net eq. 7–8: the magnitude of ∂L/∂M accumulated over N minibatches, with the mask
  relaxed to a real number (M = current mask). The gradient of the loss over the N batches is
  summed before taking the magnitude (eq. 7 with D_b = those batches); normalising by Σ|g| (eq. 8)
  does not change a ranking, so scores are returned unnormalised.
* `magnitude` — |Θᵢ| of the dynamic factors (mean over the k factors for a shared mask).
* `random` — uniform noise (the "Random" partition of appendix D).

Each function returns one score tensor per masked tensor, with the mask's shape. For filter-granular masks
the element scores are summed per filter (`PartialMode.pool_scores`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

from padnet.errors import ConfigError, DataError, first_line
from padnet.layers.modes import mode_tensors, whole
from padnet.parallel import current

IGNORED_LABEL = -100  # F.cross_entropy's default ignore_index: a target it skips
MaskedTensor = tuple[str, nn.Module, torch.Tensor]  # (name, PartialMode, dynamic factors (k, *shape))


def masked_tensors(model: nn.Module) -> list[MaskedTensor]:
    """Every tensor of `model` whose mask mode partition sets (`Mode.partial`), each once."""
    return [t for t in mode_tensors(model) if t[1].partial]


def magnitude_scores(tensors: list[MaskedTensor]) -> list[torch.Tensor]:
    """|Θᵢ| per mask element (mean over the k factors when the mask is shared)."""
    scores = []
    for _, mode, factors in tensors:
        mag = whole(factors.detach()).float().abs()
        per_element = mag if mode.granularity == "kernel" else mag.mean(0, keepdim=True)
        scores.append(mode.pool_scores(per_element))
    return scores


def random_scores(tensors: list[MaskedTensor], generator: torch.Generator) -> list[torch.Tensor]:
    """Uniform random scores, reproducible through `generator`."""
    return [torch.rand(mode.mask.shape, generator=generator).to(mode.mask.device) for _, mode, _ in tensors]


def snip_scores(
    model: nn.Module,
    tensors: list[MaskedTensor],
    batches: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_batches: int = 10,
    batch_loss: Callable[[nn.Module, object], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """|Σ_b ∂L_b/∂M| over `num_batches` batches of (x, y) (PAD-Net eq. 7).

    `batch_loss(model, batch)`, when given, computes the loss of other batches (e.g. the keyword dicts of
    a Hugging Face model) instead of `loss_fn(model(x), y)`.

    The model runs in training mode (as in training); BatchNorm running statistics and parameter
    gradients are left exactly as they were. A filter-granular mask is relaxed to one value per element
    for the gradient, whose magnitudes are then summed per filter.

    Raises:
        ConfigError: `batches` yields nothing.
        DataError: a batch the model or the loss cannot take, naming the batch (from 0) and what did not fit:
            the input shape against the model's first layer, labels outside the model's classes, or the
            first line of torch's error.
    """
    modes = [mode for _, mode, _ in tensors]
    saved = [mode.mask for mode in modes]
    for mode in modes:
        mode.mask = mode.element_mask().clone()
    masks = [mode.mask for mode in modes]
    buffers = {k: v.clone() for k, v in model.named_buffers() if not k.endswith("mask")}
    grads = [torch.zeros_like(m, dtype=torch.float32) for m in masks]  # scores in float32 in any precision
    was_training = model.training
    model.train()
    seen = 0
    try:
        for m in masks:
            m.requires_grad_(True)
        device = masks[0].device
        for index, batch in enumerate(itertools.islice(batches, num_batches)):
            loss = (
                _loss(model, batch, index, loss_fn, device)
                if batch_loss is None
                else _checked(f"partition batch {index}: the batch loss failed", batch_loss, model, batch)
            )
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


def _checked(what: str, compute: Callable, *args):
    """`compute(*args)`, with torch's errors of a batch that does not fit turned into a DataError
    `what (reason)`."""
    try:
        return compute(*args)
    except (RuntimeError, IndexError, ValueError) as exc:
        raise DataError(f"{what} ({first_line(exc)})") from None


def _expected_input(model: nn.Module) -> str:
    """The input shape `model`'s first convolution or linear layer takes, for a message ("" if it has none)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return f", which expects (N, {module.in_channels}, H, W)"
        if isinstance(module, nn.Linear):
            return f", which expects (N, {module.in_features})"
    return ""


def _loss(model: nn.Module, batch, index: int, loss_fn: Callable, device) -> torch.Tensor:
    """`loss_fn(model(x), y)` of an (inputs, targets) batch; DataError naming batch `index` and what does not
    fit. Integer labels are checked against the model's classes before the loss (on a GPU an index out of range
    is a device-side assert, not an error)."""
    if not (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, torch.Tensor) for t in batch)
    ):
        raise DataError(
            f"partition batch {index} is not an (inputs, targets) pair of tensors; pass batch_loss= for "
            "other batches"
        )
    x, y = batch
    out = _checked(
        f"partition batch {index}: inputs of shape {tuple(x.shape)} do not fit the model"
        f"{_expected_input(model)}",
        model,
        x.to(device),
    )
    if (
        isinstance(out, torch.Tensor)
        and out.dim() >= 2
        and not (y.is_floating_point() or y.dtype == torch.bool)
    ):
        labels = y[y != IGNORED_LABEL]
        classes = out.shape[1]
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < classes):
            raise DataError(
                f"partition batch {index}: labels must be in [0, {classes - 1}] for the model's "
                f"{classes} classes, got {int(labels.min())}..{int(labels.max())}"
            )
    return _checked(f"partition batch {index}: the loss failed", loss_fn, out, y.to(device))
