"""Convolution types by name, so models and [`padnet.convert`][padnet.adapter.model.convert] pick a layer with one string."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.layers.dcd import DCDConv2d, PADDCDConv2d
from padnet.layers.dynamic_conv import DynamicConv2d, PADConv2d
from padnet.layers.odconv import ODConv2d, PADODConv2d
from padnet.layers.sdconv import SparseDynamicConv2d

# CondConv (Yang et al. 2019): 8 kernels, one linear + a plain sigmoid (no temperature: T = 1)
CONDCONV = {"num_kernels": 8, "routing": "sigmoid", "reduction": 0, "temperature": 1.0}
ANNEAL_FROM = 30.0  # the start of the temperature annealing of the other dynamic layers (Chen et al. 2020)
MAX_TEMPERATURE = 1e4  # an attention temperature is a float32 buffer; far above this the attention is uniform

# name -> (class, default options). Static convolutions are plain `nn.Conv2d`. Every PAD-Net form is
# named "pad-<its fully dynamic layer>"; "pad" is PAD-Net over DY-Conv (the paper's main setting).
CONV_TYPES: dict[str, tuple[type[nn.Module], dict]] = {
    "static": (nn.Conv2d, {}),
    "dy": (DynamicConv2d, {"num_kernels": 4}),
    "pad": (PADConv2d, {"num_kernels": 4}),
    "condconv": (DynamicConv2d, CONDCONV),
    "pad-condconv": (PADConv2d, CONDCONV),
    "odconv": (ODConv2d, {"num_kernels": 4}),
    "pad-odconv": (PADODConv2d, {"num_kernels": 4}),
    "dcd": (DCDConv2d, {}),
    "pad-dcd": (PADDCDConv2d, {}),
    "sdconv": (SparseDynamicConv2d, {"num_kernels": 4}),
}
LAYER_LABELS = {
    "static": "Static",
    "dy": "DY-Conv",
    "pad": "PAD-Net",
    "condconv": "CondConv",
    "pad-condconv": "PAD-CondConv",
    "odconv": "ODConv",
    "pad-odconv": "PAD-ODConv",
    "dcd": "DCD",
    "pad-dcd": "PAD-DCD",
    "sdconv": "SD-Conv",
}
ALIASES = {
    "dyconv": "dy",
    "dynamic": "dy",
    "padnet": "pad",
    "pad-net": "pad",
    "pad-dy": "pad",
    "conv": "static",
    "sd-conv": "sdconv",
    "sd": "sdconv",
}


def register_conv(name: str, cls: type[nn.Module], **defaults) -> None:
    """Make `cls` available as `conv=name` in [`create_model`][padnet.models.registry.create_model] and [`convert`][padnet.adapter.model.convert].

    `cls` takes `nn.Conv2d`'s arguments plus its own keyword options; `defaults` fills them.
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
    """Whether convolutions of type `name` are partially dynamic (have masks to partition)."""
    return bool(getattr(resolve_conv(name)[0], "partial", False))


def is_dynamic(name: str) -> bool:
    """Whether convolutions of type `name` are dynamic (take attention options and a temperature)."""
    return resolve_conv(name)[0] is not nn.Conv2d


def accepted_options(name: str) -> tuple[str, ...]:
    """Keyword options that convolutions of type `name` take (e.g. `num_kernels`; none for static)."""
    return tuple(getattr(resolve_conv(name)[0], "OPTIONS", ()))


def start_temperature(name: str) -> float:
    """The temperature a run of conv type `name` starts from when none is given: 1 for CondConv's sigmoid
    routing (no temperature), [`ANNEAL_FROM`][padnet.layers.registry.ANNEAL_FROM] for the others."""
    return 1.0 if resolve_conv(name)[1].get("routing") == "sigmoid" else ANNEAL_FROM


def effective_option(name: str, key: str, value):
    """`value`, or the option `key`'s default for type `name` when `value` is None (None if it has none)."""
    if value is not None:
        return value
    cls, defaults = resolve_conv(name)
    if key in defaults:
        return defaults[key]
    param = inspect.signature(cls.__init__).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def layer_options(name: str, **values) -> dict:
    """The options among `values` that type `name` takes, leaving out `None` (= the type's default).

    Raises:
        ConfigError: a value other than None for `num_kernels` or `reduction` that the type does not take.
    """
    accepted = accepted_options(name)
    for key in ("num_kernels", "reduction"):
        if values.get(key) is not None and key not in accepted and is_dynamic(name):
            raise ConfigError(f"conv type {canonical_conv(name)!r} has no option {key}")
    return {k: v for k, v in values.items() if v is not None and k in accepted}


def conv_factory(name: str, **options) -> Callable[..., nn.Module]:
    """A function with `nn.Conv2d`'s signature that builds convolutions of type `name`.

    `options` (e.g. `num_kernels`, `reduction`, `granularity`) are passed to dynamic layers and
    ignored for static ones.
    """
    cls, defaults = resolve_conv(name)
    if cls is nn.Conv2d:
        return nn.Conv2d
    merged = {**defaults, **options}

    def build(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        return cls(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, **merged)

    return build
