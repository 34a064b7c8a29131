"""Model surgery: turn the convolutions of any ``nn.Module`` into dynamic or PAD-Net convolutions."""

from __future__ import annotations

import fnmatch

from torch import nn

from .errors import ConfigError
from .layers.conv_base import DynamicConvBase
from .layers.registry import resolve_conv


def convert(
    model: nn.Module,
    conv: str = "pad",
    init_from_static: bool = True,
    skip_first: bool = True,
    exclude: tuple[str, ...] = (),
    min_channels: int = 1,
    **options,
) -> nn.Module:
    """Replace every ``nn.Conv2d`` of ``model`` (in place) by a convolution of type ``conv``.

    Args:
        model: any module; it is modified in place and returned.
        conv: ``"dy"`` (DY-Conv), ``"pad"`` (PAD-Net), ``"condconv"``, ``"odconv"``, ``"dcd"``, their PAD-Net
            forms ``"pad-condconv"``, ``"pad-odconv"``, ``"pad-dcd"``, or another registered type.
        init_from_static: start every dynamic kernel (and PAD's static parameters Θ̄) from the existing
            weight. DY-Conv and PAD-Net (softmax routing) then compute what the original did until trained;
            CondConv's sigmoid routing, ODConv's attentions and DCD's Λ(x) scale that output.
        skip_first: leave the first convolution (the stem) static, as the papers do.
        exclude: glob patterns of module names to leave static (e.g. ``("head.*",)``).
        min_channels: leave convolutions with fewer input channels static.
        **options: layer options (``num_kernels``, ``reduction``, ``temperature``, ``granularity``,
            ``scale_mode``, ...).

    Returns:
        ``model``. Raises ConfigError for an unknown ``conv`` name or when nothing was converted.
    """
    cls, defaults = resolve_conv(conv)
    if cls is nn.Conv2d:
        return model
    if not issubclass(cls, DynamicConvBase):
        raise ConfigError(f"conv type {conv!r} cannot be built from an nn.Conv2d")
    merged = {**defaults, **options}
    targets = [(name, m) for name, m in model.named_modules() if type(m) is nn.Conv2d]
    if skip_first and targets:
        targets = targets[1:]
    targets = [(n, m) for n, m in targets
               if m.in_channels >= min_channels and not any(fnmatch.fnmatch(n, p) for p in exclude)]
    if not targets:
        raise ConfigError("convert found no nn.Conv2d to replace")
    for name, module in targets:
        model.set_submodule(name, cls.from_conv(module, init_from_static=init_from_static, **merged))
    return model
