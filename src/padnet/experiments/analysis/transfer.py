"""Transfer of a trained model to another data set by linear or full fine-tuning (SD-Conv §4.2, Fig. 4)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.training.data import ImageData, make_loader
from padnet.training.engine.schedule import build_scheduler
from padnet.training.engine.trainer import evaluate

MODES = ("linear", "full")


def resized(data: ImageData, size: tuple[int, int]) -> ImageData:
    """`data` with its images resized bilinearly to `size` (H, W), kept uint8; statistics unchanged
    (resizing keeps channel means and changes deviations little; the source model's input size matters more)."""
    if tuple(data.images.shape[-2:]) == tuple(size):
        return data
    images = F.interpolate(data.images.float(), size=size, mode="bilinear", align_corners=False)
    return ImageData(
        images.round().clamp(0, 255).to(torch.uint8),
        data.labels,
        data.num_classes,
        data.mean,
        data.std,
        data.classes,
        data.flip,
    )


def _replace_classifier(model: nn.Module, num_classes: int) -> nn.Linear:
    old = model.get_classifier()
    name = next(n for n, m in model.named_modules() if m is old)
    new = nn.Linear(old.in_features, num_classes)  # nn.Linear's Kaiming-uniform initialisation, as the paper
    model.set_submodule(name, new)
    return new


def fine_tune(
    model: nn.Module,
    train: ImageData,
    test: ImageData,
    mode: str = "linear",
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    seed: int = 0,
) -> tuple[nn.Module, float]:
    """Fine-tune a copy of `model` on (`train`, `test`) and return it with its test top-1 (%).

    The classifier is replaced by a freshly initialised one with `train.num_classes` outputs.
    `mode="linear"` trains only that classifier on the frozen representation (BatchNorm statistics frozen
    too: the backbone runs in eval mode); `"full"` trains every parameter. SGD (momentum 0.9) with warm-up
    and a cosine schedule over `epochs`; images are resized to the model's training size beforehand by
    the caller ([`resized`][padnet.experiments.analysis.transfer.resized]). `model` is not modified.

    Raises:
        ConfigError: unknown mode, or epochs / lr not positive.
    """
    check_choice("fine-tuning mode", mode, MODES)
    if epochs < 1 or not lr > 0:
        raise ConfigError(f"epochs and lr must be positive, got {epochs} and {lr}")
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    head = _replace_classifier(model, train.num_classes)
    params = (
        list(head.parameters()) if mode == "linear" else [p for p in model.parameters() if p.requires_grad]
    )
    for p in model.parameters():
        p.requires_grad_(mode == "full" or any(p is q for q in head.parameters()))
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = len(make_loader(train, batch_size, train=True, seed=seed, epoch=0))
    scheduler = build_scheduler(optimizer, epochs * steps, steps // 2)
    for epoch in range(epochs):
        model.train(mode == "full")
        head.train()
        for x, y in make_loader(train, batch_size, train=True, seed=seed, epoch=epoch, augment=False):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, evaluate(model, make_loader(test, 512, train=False))
