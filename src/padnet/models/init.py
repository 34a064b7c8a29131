"""Weight initialisation shared by the model zoo."""

from __future__ import annotations

import functools

from torch import nn


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions, BatchNorm γ = 1 and β = 0.

    Dynamic convolutions initialise every kernel (and PAD-Net's static kernel Θ̄) the same way, through their
    `init_kernels_`, so a dynamic model starts from kernels distributed as its static counterpart's.
    `linear_std`: when given, linear layers outside dynamic convolutions get N(0, std²) weights and zero
    bias (MobileNetV2's classifier); otherwise they keep PyTorch's default.
    """
    kaiming = functools.partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")
    inside_dynamic: set[int] = set()
    for m in model.modules():  # pre-order: a dynamic layer comes before its submodules
        if id(m) in inside_dynamic:
            continue
        if isinstance(m, nn.Conv2d):
            kaiming(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif hasattr(m, "init_kernels_"):
            m.init_kernels_(kaiming)
            inside_dynamic.update(id(sub) for sub in m.modules())
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
