"""What every input-dependent convolution shares: `nn.Conv2d`'s geometry, its output size,
construction from an existing `nn.Conv2d` (used by [`padnet.convert`][padnet.adapter.model.convert]), and the
two forms a layer is turned into: its compact inference form ([`deployed`][padnet.layers.conv_base.DynamicConvBase.deployed],
what [`padnet.deploy`][padnet.deployment.deploy.deploy] asks for) and its base form
([`base_layer`][padnet.layers.conv_base.DynamicConvBase.base_layer], what
[`PadModel.unload`][padnet.adapter.model.PadModel.unload] asks for)."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from padnet.errors import ConfigError
from padnet.layers.attention import TemperatureRouting
from padnet.layers.formulations import ConvGeometry, grouped
from padnet.layers.modes import ScaleFactors

PAD_OPTIONS = {"granularity": "shared", "scale_mode": "constrained", "mask_semantics": "static"}

# where the weights of a layer's base form come from (BaseForm.source), as unload reports them
BASE_SOURCES = {
    "static": "their static weights λs·Θ̄ (PAD-Net eq. 4 with M = 0)",
    "kernels": "the mean of their k kernels",
    "W0": "DCD's static kernel W₀",
    "experts": "the mean of their experts' computational parameters",
    "expert bank": "their experts' computational parameters (PAD-Net eq. 4 per expert)",
}


@runtime_checkable
class Deployable(Protocol):
    """What [`padnet.deploy`][padnet.deployment.deploy.deploy] asks of a layer: every dynamic convolution
    ([`DynamicConvBase`][padnet.layers.conv_base.DynamicConvBase]), MoE layer
    ([`MoEFeedForward`][padnet.layers.moe.MoEFeedForward]) and expert bank
    ([`ExpertBank`][padnet.layers.experts.ExpertBank]) implements it.

    - `folds_batchnorm`: whether `deployed(bn)` absorbs a `BatchNorm2d` that directly and only follows the
      layer.
    - `deployed(bn=None)`: the compact inference form (in eval mode it computes what the layer and `bn`
      compute), or None when the layer has none (deploy then keeps it as it is and says so).
    """

    folds_batchnorm: bool

    def deployed(self, bn: nn.BatchNorm2d | None = None) -> nn.Module | None: ...


class BaseForm(NamedTuple):
    """A dynamic convolution's base form ([`base_layer`][padnet.layers.conv_base.DynamicConvBase.base_layer]).

    Attributes:
        layer: a plain `nn.Conv2d` with the layer's geometry, weight (Cout, Cin/groups, kh, kw), bias (Cout,)
            where the layer has one.
        source: where its weights come from, a key of `BASE_SOURCES` — `"static"` (the static parameters,
            PAD-Net eq. 4 with M = 0), `"kernels"` (the mean of the k kernels, each a copy of the original
            weight at conversion) or `"W0"` (DCD's static kernel).
        exact: whether it computes what the layer computes in eval mode (a PAD-Net layer whose every mask is
            static).
    """

    layer: nn.Conv2d
    source: str
    exact: bool


class DynamicConvBase(nn.Module):
    """Geometry of a convolution, validated as `nn.Conv2d` does, for dynamic layers to build on.

    Args:
        in_channels: as `nn.Conv2d`.
        out_channels: as `nn.Conv2d`.
        kernel_size: as `nn.Conv2d`.
        stride: as `nn.Conv2d`.
        padding: as `nn.Conv2d`; also accepts `"same"`/`"valid"`.
        dilation: as `nn.Conv2d`.
        groups: as `nn.Conv2d`.

    Layers with a bank of kernels `weight` (k, Cout, Cin/groups, kh, kw), optional `bias` (k, Cout)
    and modes `weight_mode`/`bias_mode` inherit `load_static` and `init_kernels_`; others override
    them. Every subclass implements `mode_pairs()` (its masked tensors, for mode partition) and
    [`base_layer`][padnet.layers.conv_base.DynamicConvBase.base_layer] (its plain convolution), and overrides
    [`deployed`][padnet.layers.conv_base.DynamicConvBase.deployed] where it has a compact inference form (the
    [`Deployable`][padnet.layers.conv_base.Deployable] protocol). The class attribute `partial` says whether the
    layer is a PAD-Net form; `OPTIONS` names the keyword options it takes beyond `nn.Conv2d`'s arguments.

    Raises:
        ConfigError: non-positive channels or groups, channels not divisible by `groups`, `"same"` with
            stride > 1.
    """

    partial = False
    OPTIONS: tuple[str, ...] = ()
    folds_batchnorm = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        if groups < 1 or in_channels < 1 or out_channels < 1:
            raise ConfigError(
                f"channels and groups must be >= 1, got {in_channels}, {out_channels}, {groups}"
            )
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible "
                f"by groups {groups}"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        if padding == "same" and self.stride != (1, 1):
            raise ConfigError("padding='same' needs stride 1 (as nn.Conv2d)")

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """Shape of one kernel: (Cout, Cin/groups, kh, kw)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def depthwise(self) -> bool:
        """Whether every group has one input and one output channel."""
        return self.groups == self.in_channels == self.out_channels

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Output (H', W') for an input map of `size` (H, W), as `nn.Conv2d` computes it."""
        if self.padding == "same":
            return tuple(size)
        padding = (0, 0) if self.padding == "valid" else self.padding
        return tuple(
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(size, padding, self.dilation, self.kernel_size, self.stride)
        )

    def _pad_options(self, options: dict) -> dict:
        """Validate the PAD-Net options of a layer and build `self.scales`.

        Returns `{"granularity", "semantics"}` for [`make_mode`][padnet.layers.modes.make_mode]. A fully dynamic
        layer takes no such option and gets λs = λd = 1 (`ScaleFactors("none")`, no parameters).
        """
        allowed = PAD_OPTIONS if self.partial else {}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"{type(self).__name__} got unexpected options: {', '.join(unknown)}")
        merged = {**PAD_OPTIONS, **options}
        self.scales = ScaleFactors(merged["scale_mode"] if self.partial else "none")
        return {"granularity": merged["granularity"], "semantics": merged["mask_semantics"]}

    @property
    def geometry(self) -> ConvGeometry:
        """Stride, padding, dilation and groups, as the formulations take them."""
        return ConvGeometry(self.stride, self.padding, self.dilation, self.groups)

    def per_sample_conv(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """Convolve each sample with its own kernel (grouped formulation).

        `x` (B, Cin, H, W), `weight` (B, Cout, Cin/groups, kh, kw), `bias` (B, Cout) or None
        → (B, Cout, H', W').
        """
        return grouped(x, weight, bias, self.geometry)

    @torch.no_grad()
    def init_kernels_(self, init_fn) -> None:
        """Apply `init_fn` (e.g. `nn.init.kaiming_normal_`) to each kernel Θᵢ and to Θ̄ if present."""
        for w in self.weight:
            init_fn(w)
        if self.weight_mode.static is not None:
            init_fn(self.weight_mode.static)

    @torch.no_grad()
    def load_static(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Copy a static kernel (Cout, Cin/groups, kh, kw) into every kernel and into Θ̄ if present.

        With softmax routing (Σπ = 1) DY-Conv then computes what the static convolution did; CondConv's
        sigmoid routing and ODConv's attentions scale that output.
        """
        self.weight.copy_(weight.expand_as(self.weight))
        if bias is not None:
            self.bias.copy_(bias.expand_as(self.bias))  # (k, Cout) per kernel, or one static (Cout)
        for mode, value in ((self.weight_mode, weight), (self.bias_mode, bias)):
            if value is not None and mode.static is not None:
                mode.static.copy_(value)

    def _apply(self, fn, recurse=True):
        """`nn.Module._apply` (what `.to()`, `.half()`, `.cuda()` and `to_empty` run) with each 5-d kernel bank
        (k, Cout, Cin/g, kh, kw) — and its masks — converted as the k·Cout filters it holds: `model.to(
        memory_format=torch.channels_last)` then lays every kernel out channels_last (torch refuses 5-d
        tensors for that format) and keeps the 5-d shape."""

        def per_filter(t: torch.Tensor) -> torch.Tensor:
            return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2]) if t.dim() == 5 else fn(t)

        return super()._apply(per_filter, recurse)

    def update_temperature(self, temperature: float) -> None:
        """Set the temperature T of the layer's routing branches (none for DCD)."""
        for module in self.modules():
            if isinstance(module, TemperatureRouting):
                module.update_temperature(temperature)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, init_from_static: bool = True, padding=None, **kwargs):
        """Build a layer with the geometry of `conv` (on its device and dtype).

        With `init_from_static` the layer's kernels start from `conv.weight` (see `load_static`).
        `padding` replaces `conv.padding` (`padnet.convert` pads inputs itself for other padding modes).

        Raises:
            ConfigError: a padding mode other than zeros unless `padding` is given.
        """
        if conv.padding_mode != "zeros" and padding is None:
            raise ConfigError(
                f"only zero padding is supported here, got padding_mode={conv.padding_mode!r} "
                "(padnet.convert supports every mode)"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding if padding is None else padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            **kwargs,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        if init_from_static:
            layer.load_static(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())
        return layer

    def deployed(self, bn: nn.BatchNorm2d | None = None) -> nn.Module | None:
        """The compact inference form of the layer, or None: it has none ([`padnet.deploy`][padnet.deployment.deploy.deploy]
        keeps the layer in its training form and warns). ODConv and DCD (and their PAD-Net forms) have none; the
        exact plain convolution of a PAD-Net layer whose every mask is static is its
        [`base_layer`][padnet.layers.conv_base.DynamicConvBase.base_layer]. `bn` is only passed to layers that
        fold BatchNorm (`folds_batchnorm`)."""
        return None

    def base_layer(self) -> BaseForm:
        """The layer as a plain `nn.Conv2d` and where its weights come from ([`BaseForm`][padnet.layers.conv_base.BaseForm]):
        what [`PadModel.unload`][padnet.adapter.model.PadModel.unload] puts back. Every padnet layer states its
        own; a layer registered with `register_conv` that does not is refused.

        Raises:
            ConfigError: the layer type defines no base form, in one line.
        """
        raise ConfigError(
            f"{type(self).__name__} states no base form: define base_layer() to unload it to an nn.Conv2d"
        )

    def all_static(self) -> bool:
        """Whether the layer is a PAD-Net form whose every mask is static (M = 0): it then computes
        λs-scaled static parameters only, independent of the input (PAD-Net eq. 4)."""
        return self.partial and not any(bool(mode.mask.any()) for _, mode, _ in self.mode_pairs())

    @torch.no_grad()
    def plain_conv(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
        """An `nn.Conv2d` with this layer's geometry holding copies of `weight` (Cout, Cin/groups, kh, kw) and
        `bias` (Cout,) or None, on their device and dtype."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=bias is not None,
        ).to(weight)
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s
