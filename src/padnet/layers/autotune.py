"""One-time measurement of the fastest formulation of every dynamic convolution of a model."""

from __future__ import annotations

import time

import torch
from torch import nn

from padnet.errors import check_module
from padnet.layers.formulations import FORMULATIONS, FormulationChoice


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FormulationChoice)]


def _signature(layer: nn.Module, shape: tuple[int, ...], grad: bool) -> tuple:
    """Layers with equal signatures run equally fast: measure one of them."""
    shapes = tuple((n, tuple(t.shape)) for n, t in layer.state_dict().items())
    masks = tuple(int(b.sum()) for n, b in layer.named_buffers() if n.endswith("mask"))
    return (type(layer), layer.extra_repr(), shapes, masks, shape, grad)


def _seconds(layer: nn.Module, x: torch.Tensor, path: str, grad: bool, repeats: int) -> float:
    params = [p for p in layer.parameters() if p.requires_grad] if grad else []
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = layer.run(x, path)
            if grad:
                torch.autograd.grad(out.sum(), [x, *params], allow_unused=True)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def autotune(
    model: nn.Module,
    example: torch.Tensor,
    train: bool = True,
    repeats: int = 3,
    candidates: tuple[str, ...] = FORMULATIONS,
) -> dict[str, str]:
    """Measure every candidate formulation of each dynamic convolution at the shape it sees for `example`.

    Args:
        model: any model with [`DynamicConv2d`][padnet.layers.dynamic_conv.DynamicConv2d] / PAD-Net / deployed layers.
        example: an input batch (B, C, H, W) of the size the model will run at.
        train: time forward + backward (training) or forward under `no_grad` (inference).
        repeats: timed runs per candidate (the minimum counts), after one warm-up run.
        candidates: formulations to try.

    Layers with `formulation="auto"` then use the fastest one for that shape and grad mode; the choice
    is cached in the layer (`layer.set_path`), so later forward passes pay nothing. Identical layers at
    the same shape are measured once. Parameter gradients and RNG state are untouched (inputs are drawn
    from a private generator).

    Returns:
        `{layer name: formulation}` for every layer that ran. Raises ConfigError for a `model` that is not an
        `nn.Module`.
    """
    check_module(model, "autotune")
    layers = _layers(model)
    shapes: dict[str, torch.Size] = {}

    def record(name):
        def hook(module, args):
            shapes.setdefault(name, args[0].shape)  # returns None: the input is left as it is

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in layers]
    was_training = model.training
    model.eval()  # shapes only: no BatchNorm statistics updated, no dropout drawing from the RNG
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    generator = torch.Generator().manual_seed(0)
    measured: dict[tuple, str] = {}
    choices = {}
    model.train(train)
    try:
        for name, layer in layers:
            if name not in shapes:
                continue
            shape = tuple(shapes[name])
            key = _signature(layer, shape, train)
            if key not in measured:
                param = next(layer.parameters())
                x = torch.randn(shape, generator=generator).to(param)
                x.requires_grad_(train)
                measured[key] = min(candidates, key=lambda path: _seconds(layer, x, path, train, repeats))
            layer.set_path(shape, train, measured[key])
            choices[name] = measured[key]
    finally:
        model.train(was_training)
    return choices
