"""Accuracy under Gaussian input noise (SD-Conv §4.2, Table 3)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def noise_accuracy(model: nn.Module, loader, sigmas, std, seed: int = 0) -> dict[float, float]:
    """Top-1 accuracy (%) with noise z ~ N(0, σ²) added to every input image, for each σ in `sigmas`.

    σ is in pixel units of [0, 1] images; `loader` yields normalised images, so the noise added to
    channel c is z / std[c]. The noise is drawn from a generator seeded with `seed` (the same noise for
    every model compared). σ = 0 gives the clean accuracy. The model's train/eval mode is restored.

    Args:
        model: a classifier. loader: (images (B, C, H, W), labels (B,)) batches. sigmas: iterable of σ ≥ 0.
        std: per-channel standard deviation used to normalise the images (C values).
    """
    scale = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    was_training = model.training
    model.eval()
    out = {}
    try:
        for sigma in sigmas:
            gen = torch.Generator().manual_seed(seed)
            correct = total = 0
            for x, y in loader:
                noisy = x + torch.randn(x.shape, generator=gen) * (float(sigma) / scale) if sigma else x
                correct += int((model(noisy).argmax(1) == y).sum())
                total += y.numel()
            out[float(sigma)] = 100.0 * correct / max(1, total)
    finally:
        model.train(was_training)
    return out
