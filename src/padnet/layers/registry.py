"""Convolution types by name, so models and :func:`padnet.convert` pick a layer with one string."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import check_choice
from .dynamic_conv import DynamicConv2d, PADConv2d

# name -> (class, default options). Static convolutions are plain ``nn.Conv2d``.
CONV_TYPES: dict[str, tuple[type[nn.Module], dict]] = {
    "static": (nn.Conv2d, {}),
    "dy": (DynamicConv2d, {"num_kernels": 4}),
    "pad": (PADConv2d, {"num_kernels": 4}),
}
ALIASES = {"dyconv": "dy", "dynamic": "dy", "padnet": "pad", "pad-net": "pad", "conv": "static"}


def register_conv(name: str, cls: type[nn.Module], **defaults) -> None:
    """Make ``cls`` available as ``conv=name`` in :func:`create_model` and :func:`convert`.

    ``cls`` takes ``nn.Conv2d``'s arguments plus its own keyword options; ``defaults`` fills them.
    """
    CONV_TYPES[name] = (cls, defaults)


def canonical_conv(name: str) -> str:
    """The registered name of a convolution type (aliases and case folded); ConfigError if unknown."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    check_choice("conv type", key, CONV_TYPES)
    return key


def resolve_conv(name: str) -> tuple[type[nn.Module], dict]:
    """Class and default options of a convolution type; ConfigError for an unknown name."""
    return CONV_TYPES[canonical_conv(name)]


def is_partial(name: str) -> bool:
    """Whether convolutions of type ``name`` are partially dynamic (have masks to partition)."""
    return bool(getattr(resolve_conv(name)[0], "partial", False))


def is_dynamic(name: str) -> bool:
    """Whether convolutions of type ``name`` are dynamic (take attention options and a temperature)."""
    return resolve_conv(name)[0] is not nn.Conv2d


def conv_factory(name: str, **options) -> Callable[..., nn.Module]:
    """A function with ``nn.Conv2d``'s signature that builds convolutions of type ``name``.

    ``options`` (e.g. ``num_kernels``, ``reduction``, ``granularity``) are passed to dynamic layers and
    ignored for static ones.
    """
    cls, defaults = resolve_conv(name)
    if cls is nn.Conv2d:
        return nn.Conv2d
    merged = {**defaults, **options}

    def build(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        return cls(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, **merged)

    return build
