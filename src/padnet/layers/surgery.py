"""Model surgery under `get_pad_model`: replace the convolutions of any `nn.Module` by dynamic or PAD-Net
convolutions, all or nothing, for every padding mode."""

from __future__ import annotations

import fnmatch

import torch.nn.functional as F
from torch import nn

from padnet.errors import ConfigError, PadnetError
from padnet.layers.conv_base import DynamicConvBase
from padnet.layers.registry import resolve_conv


class PadInput(nn.Module):
    """Pads its input as an `nn.Conv2d` with a non-zero `padding_mode` does before it convolves.

    Args:
        amounts: `F.pad` amounts (left, right, top, bottom), as `nn.Conv2d._reversed_padding_repeated_twice`.
        mode: `"reflect"`, `"replicate"` or `"circular"`.

    Input (B, C, H, W) → (B, C, H + top + bottom, W + left + right).
    """

    def __init__(self, amounts: tuple[int, ...], mode: str):
        super().__init__()
        self.amounts, self.mode = tuple(int(a) for a in amounts), mode

    def forward(self, x):
        return F.pad(x, self.amounts, mode=self.mode)

    def extra_repr(self) -> str:
        return f"amounts={self.amounts}, mode={self.mode!r}"


def _is_plain_conv(module: nn.Module) -> bool:
    """An `nn.Conv2d` or a subclass that computes what `nn.Conv2d` computes (forward not overridden)."""
    cls = type(module)
    return (
        isinstance(module, nn.Conv2d)
        and cls.forward is nn.Conv2d.forward
        and cls._conv_forward is nn.Conv2d._conv_forward
    )


def find_convs(model: nn.Module, skip_first: bool = True, targets=None, exclude=(), min_channels: int = 1):
    """The convolutions [`convert`][padnet.adapter.model.convert] would replace: `[(name, conv)]` in module order.

    `targets`: glob patterns of names to convert (None: every `nn.Conv2d`, the first left out with
    `skip_first`). Raises ConfigError naming the first matched `nn.Conv2d` subclass that overrides
    `forward` (its computation is not a plain convolution) and the `exclude_modules=` remedy.
    """
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if skip_first and targets is None and found:
        found = found[1:]
    if targets is not None:
        found = [(n, m) for n, m in found if any(fnmatch.fnmatch(n, p) for p in targets)]
    found = [
        (n, m)
        for n, m in found
        if m.in_channels >= min_channels and not any(fnmatch.fnmatch(n, p) for p in exclude)
    ]
    for name, module in found:
        if not _is_plain_conv(module):
            raise ConfigError(
                f"cannot convert {name}: {type(module).__name__} overrides nn.Conv2d's forward; "
                f"leave it static with exclude_modules=[{name!r}]"
            )
    return found


def build_replacement(name: str, conv: nn.Conv2d, cls, init_from_static: bool, options: dict) -> nn.Module:
    """The module that replaces `conv`: the dynamic layer, preceded by [`PadInput`][padnet.layers.surgery.PadInput] for a padding mode
    other than zeros. Raises ConfigError naming the layer and the `exclude_modules=` remedy."""
    try:
        if conv.padding_mode == "zeros":
            return cls.from_conv(conv, init_from_static=init_from_static, **options)
        layer = cls.from_conv(conv, init_from_static=init_from_static, padding=0, **options)
        return nn.Sequential(PadInput(conv._reversed_padding_repeated_twice, conv.padding_mode), layer)
    except PadnetError as exc:
        raise ConfigError(
            f"cannot convert {name}: {exc}; leave it static with exclude_modules=[{name!r}]"
        ) from None


def replace_convs(
    model: nn.Module,
    conv: str = "pad",
    init_from_static: bool = True,
    skip_first: bool = True,
    exclude: tuple[str, ...] = (),
    min_channels: int = 1,
    targets: tuple[str, ...] | None = None,
    **options,
) -> nn.Module:
    """Replace the `nn.Conv2d` layers of `model` (in place) by convolutions of type `conv`; the surgery
    [`padnet.get_pad_model`][padnet.adapter.model.get_pad_model] (and its alias [`padnet.convert`][padnet.adapter.model.convert]) runs, in the layers' option names.

    All or nothing: every replacement is built before the first is put in, so on any error the model is
    unchanged. Every padding mode works: a layer with `padding_mode` reflect, replicate or circular becomes
    `nn.Sequential(PadInput(...), layer)` (pad, then convolve). `nn.Conv2d` subclasses that keep its
    `forward` are converted; one that overrides it is refused (ConfigError naming it).

    Args:
        model: any module; it is modified in place and returned.
        conv: `"dy"` (DY-Conv), `"pad"` (PAD-Net), `"condconv"`, `"odconv"`, `"dcd"`, their PAD-Net
            forms `"pad-condconv"`, `"pad-odconv"`, `"pad-dcd"`, `"sdconv"`, or another registered type.
        init_from_static: start every dynamic kernel (and PAD's static parameters Θ̄) from the existing
            weight. DY-Conv and PAD-Net (softmax routing) then compute what the original did until trained;
            CondConv's sigmoid routing, ODConv's attentions and DCD's Λ(x) scale that output. Mode partition
            right after this finds no signal (every kernel equals Θ̄): train first (see `PadConfig.partition_at`).
        skip_first: leave the first convolution (the stem) static, as the papers do (ignored with `targets`).
        exclude: glob patterns of module names to leave static (e.g. `("head.*",)`).
        min_channels: leave convolutions with fewer input channels static.
        targets: glob patterns of the module names to convert (default: every convolution).
        **options: layer options (`num_kernels`, `reduction`, `temperature`, `granularity`,
            `scale_mode`, ...).

    Returns:
        `model`. Raises ConfigError for an unknown `conv` name, a layer that cannot be converted (named,
        with the `exclude_modules=` remedy), or when nothing was converted.
    """
    cls, defaults = resolve_conv(conv)
    if cls is nn.Conv2d:
        return model
    if not issubclass(cls, DynamicConvBase):
        raise ConfigError(f"conv type {conv!r} cannot be built from an nn.Conv2d")
    merged = {**defaults, **options}
    found = find_convs(model, skip_first, targets, exclude, min_channels)
    if not found:
        raise ConfigError("convert found no nn.Conv2d to replace")
    replacements = [
        (name, build_replacement(name, module, cls, init_from_static, merged)) for name, module in found
    ]
    for name, layer in replacements:
        model.set_submodule(name, layer)
    return model
