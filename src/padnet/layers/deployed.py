"""Deployment form of DY-Conv, CondConv and PAD-Net convolution: what inference needs, nothing more.

A trained layer computes (PAD-Net eq. 4, BatchNorm y = a·z + c after it):

```text
y = a ⊙ conv(x, λd Σᵢ πᵢ (Mᵢ ⊙ Θᵢ) + λs (1 − M̄) ⊙ Θ̄) + a ⊙ bias(x) + c
```

The deployed layer folds λs, λd and the BatchNorm scale a into the kernels once and keeps

* a static kernel S = a ⊙ λs (1 − M̄) ⊙ Θ̄ (the static filters only, for the `"filters"` layout),
* the dynamic factors D = a ⊙ λd Mᵢ ⊙ Θᵢ at dynamic positions only — all of them (`"dense"`, DY-Conv,
  CondConv), a flat list of elements (`"elements"`, unstructured PAD-Net), or whole filters
  (`"filters"`, filter-granular PAD-Net),
* the attention branch unchanged, a dynamic bias (k, Cout) if the layer had one, and a static bias
  a ⊙ λs (1 − M_b) ⊙ b̄ + c.

Per sample, only the dynamic elements are aggregated (Σᵢ πᵢ Dᵢ) and added to S; a filter-structured layer
runs its static filters as one plain convolution.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.layers import formulations as forms
from padnet.layers.attention import KernelAttention
from padnet.layers.conv_base import DynamicConvBase
from padnet.layers.modes import SplitCache, StructuredSplit, aggregate

LAYOUTS = ("dense", "elements", "filters")


def bn_affine(
    bn: nn.BatchNorm2d | None, channels: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as y = a·z + c: (a, c), each (Cout,); identity without BatchNorm."""
    if bn is None:
        return torch.ones(channels, dtype=like.dtype, device=like.device), like.new_zeros(channels)
    if bn.running_var is None:
        raise ConfigError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.to(like), shift.to(like)


class DeployedConv2d(forms.FormulationChoice, DynamicConvBase):
    """Inference form of a [`DynamicConv2d`][padnet.layers.dynamic_conv.DynamicConv2d] / [`PADConv2d`][padnet.layers.dynamic_conv.PADConv2d].

    Build it with [`from_layer`][padnet.layers.deployed.DeployedConv2d.from_layer] (or
    [`padnet.deploy`][padnet.deployment.deploy.deploy] for a whole model). Input (B, Cin, H, W) →
    (B, Cout, H', W') equal to the trained layer (and its BatchNorm) in eval mode.

    Args:
        in_channels: as `nn.Conv2d`.
        out_channels: as `nn.Conv2d`.
        kernel_size: as `nn.Conv2d`.
        stride: as `nn.Conv2d`.
        padding: as `nn.Conv2d`.
        dilation: as `nn.Conv2d`.
        groups: as `nn.Conv2d`.
        num_kernels: k.
        attention: the trained routing module, used as is.
        layout: one of `LAYOUTS`.
        num_dynamic: dynamic elements for `"elements"`, dynamic filters for `"filters"`; ignored for
            `"dense"`.
        dynamic_bias: whether the dynamic bias exists.
        static_bias: whether the static bias exists.
        formulation: as [`DynamicConv2d`][padnet.layers.dynamic_conv.DynamicConv2d].

    Attributes:
        dynamic_weight: (k, Cout, Cin/g, kh, kw) dense, (k, n) elements, (k, n_f, Cin/g, kh, kw) filters
            (a parameter).
        static_weight: (Cout, Cin/g, kh, kw), or (Cout − n_f, Cin/g, kh, kw) for filters, absent for dense
            (a parameter).
        dynamic_bias: (k, Cout) (a parameter).
        static_bias: (Cout,) (a parameter).
        dynamic_index: flat element indices (n,) or dynamic filter indices (n_f,) (a buffer).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        *,
        num_kernels: int,
        attention: nn.Module,
        layout: str = "dense",
        num_dynamic: int = 0,
        dynamic_bias: bool = False,
        static_bias: bool = False,
        formulation: str = "auto",
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        check_choice("deployment layout", layout, LAYOUTS)
        if layout == "filters" and not (groups == 1 or self.depthwise):
            raise ConfigError("the 'filters' layout needs groups = 1 or a depthwise convolution")
        self.num_kernels, self.layout, self.attention = num_kernels, layout, attention
        if layout == "filters":
            self._rule = forms.filter_rule
        self.formulation = formulation
        shape = self.kernel_shape
        k, cout = num_kernels, out_channels
        if layout == "dense":
            self.dynamic_weight = nn.Parameter(torch.zeros(k, *shape))
            self.static_weight = None
        elif layout == "elements":
            self.dynamic_weight = nn.Parameter(torch.zeros(k, num_dynamic))
            self.static_weight = nn.Parameter(torch.zeros(shape))
        else:
            self.dynamic_weight = nn.Parameter(torch.zeros(k, num_dynamic, *shape[1:]))
            self.static_weight = nn.Parameter(torch.zeros(cout - num_dynamic, *shape[1:]))
        if layout != "dense":
            self.register_buffer("dynamic_index", torch.zeros(num_dynamic, dtype=torch.long))
        self.dynamic_bias = nn.Parameter(torch.zeros(k, cout)) if dynamic_bias else None
        self.static_bias = nn.Parameter(torch.zeros(cout)) if static_bias else None
        self._splits = SplitCache()

    @property
    def config(self) -> dict:
        """What, besides the attention module, rebuilds this layer's skeleton (JSON-serialisable)."""
        n = 0 if self.layout == "dense" else self.dynamic_weight.shape[1]
        return {
            "layout": self.layout,
            "num_kernels": self.num_kernels,
            "num_dynamic": n,
            "dynamic_bias": self.dynamic_bias is not None,
            "static_bias": self.static_bias is not None,
        }

    @classmethod
    @torch.no_grad()
    def from_layer(cls, layer: nn.Module, bn: nn.BatchNorm2d | None = None) -> DeployedConv2d:
        """Fold a trained DY-Conv / CondConv / PAD-Net layer (and the BatchNorm that follows it) into the
        deployment form. The layer's masks choose the layout: none → `"dense"`; a `structured` layer
        (filter-granular masks, groups 1 or depthwise, static semantics) → `"filters"`; otherwise `"elements"`. SD-Conv takes
        `"dense"` with its pruned weights zero: aggregating only the positions kept in some kernel was
        measured slower here (docs/sdconv.md), and the saved file stores the kept weights only either way."""

        if not isinstance(getattr(layer, "attention", None), KernelAttention):
            raise ConfigError(
                f"cannot deploy {type(layer).__name__}: only DY-Conv, CondConv and PAD-Net "
                "convolutions have a deployment form"
            )
        lam_s, lam_d = (t.detach() for t in layer.scales())
        w_mode, b_mode = layer.weight_mode, layer.bias_mode
        scale, shift = bn_affine(bn, layer.out_channels, layer.weight)
        per_filter = scale.reshape(1, -1, 1, 1, 1)
        kernels = w_mode.dynamic_part(layer.weight, lam_d) * per_filter  # (k, Cout, Cin/g, kh, kw)
        static = w_mode.static_part(lam_s)
        if not w_mode.partial:  # DY-Conv, CondConv and SD-Conv (zeros in its kernels; see docs/sdconv.md)
            layout, dynamic = "dense", None
        elif layer.structured:
            layout, dynamic = "filters", w_mode.mask.reshape(-1) > 0
        else:
            layout, dynamic = "elements", w_mode.element_mask().amax(0).reshape(-1) > 0
        static_bias = shift if bn is not None else None
        if layer.bias is not None and b_mode.partial and b_mode.static_part(lam_s) is not None:
            b_static = b_mode.static_part(lam_s) * scale
            static_bias = b_static if static_bias is None else static_bias + b_static
        num_dynamic = 0 if dynamic is None else int(dynamic.sum())
        out = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            num_kernels=layer.num_kernels,
            attention=copy.deepcopy(layer.attention),
            layout=layout,
            num_dynamic=num_dynamic,
            dynamic_bias=layer.bias is not None,
            static_bias=static_bias is not None,
            formulation=layer.formulation,
        ).to(layer.weight)
        if layout == "dense":
            out.dynamic_weight.copy_(kernels)
        elif layout == "elements":
            index = dynamic.nonzero().flatten()
            out.dynamic_index.copy_(index)
            out.dynamic_weight.copy_(kernels.reshape(layer.num_kernels, -1)[:, index])
            if static is not None:
                out.static_weight.copy_(static * scale.reshape(-1, 1, 1, 1))
        else:
            static_idx, dynamic_idx, _ = StructuredSplit.of(dynamic)
            out.dynamic_index.copy_(dynamic_idx)
            out.dynamic_weight.copy_(kernels[:, dynamic_idx])
            out.static_weight.copy_((static * scale.reshape(-1, 1, 1, 1))[static_idx])
        if layer.bias is not None:
            out.dynamic_bias.copy_(b_mode.dynamic_part(layer.bias, lam_d) * scale)
        if out.static_bias is not None:
            out.static_bias.copy_(static_bias)
        return out.train(layer.training)

    def deployed(self, bn: nn.BatchNorm2d | None = None) -> DeployedConv2d:
        """The layer itself: it is the compact form already (deploying a deployed model changes nothing)."""
        return self

    def structured_split(self) -> StructuredSplit | None:
        """The static and dynamic filters of the `"filters"` layout (cached per `dynamic_index` pattern,
        [`SplitCache`][padnet.layers.modes.SplitCache]); None for the other layouts."""
        if self.layout != "filters":
            return None
        return self._splits(self.dynamic_index, self._split_of_index)

    def _split_of_index(self, index: torch.Tensor) -> StructuredSplit:
        dynamic = torch.zeros(self.out_channels, dtype=torch.bool, device=index.device).index_fill_(
            0, index, True
        )
        return StructuredSplit.of(dynamic, self.static_weight.shape[0])

    def dense_kernels(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dynamic factors scattered to full kernels (k, Cout, Cin/g, kh, kw) and the full static kernel or
        None (dense layout): the form the batched formulation needs."""
        k, shape = self.num_kernels, self.kernel_shape
        if self.layout == "dense":
            return self.dynamic_weight, None
        if self.layout == "elements":
            flat = self.dynamic_weight.new_zeros(k, self.static_weight.numel())
            return flat.index_copy(1, self.dynamic_index, self.dynamic_weight).reshape(
                k, *shape
            ), self.static_weight
        static_idx, dynamic_idx, _ = self.structured_split()
        kernels = self.dynamic_weight.new_zeros(k, *shape).index_copy(1, dynamic_idx, self.dynamic_weight)
        static = self.static_weight.new_zeros(shape).index_copy(0, static_idx, self.static_weight)
        return kernels, static

    def run(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """Forward pass in formulation `path` (every formulation gives the same result)."""
        coeffs = self.attention(x)  # (B, k)
        bias = None if self.dynamic_bias is None else coeffs @ self.dynamic_bias  # (B, Cout)
        if self.static_bias is not None:
            bias = self.static_bias.expand(x.shape[0], -1) if bias is None else bias + self.static_bias
        if self.layout == "filters":
            split = self.structured_split()
            out = forms.filter_split(
                x, coeffs, self.static_weight, self.dynamic_weight, split, path, self.geometry, self.depthwise
            )
        elif path == "batched":
            out = forms.batched(x, coeffs, *self.dense_kernels(), self.geometry)
        else:
            if self.layout == "dense":
                weight = aggregate(coeffs, self.dynamic_weight)
            else:  # S + Σᵢ πᵢ Dᵢ, aggregating the dynamic elements only
                flat = self.static_weight.reshape(1, -1).expand(x.shape[0], -1)
                weight = flat.index_add(1, self.dynamic_index, coeffs @ self.dynamic_weight)
                weight = weight.reshape(x.shape[0], *self.kernel_shape)
            return forms.PER_SAMPLE[path](x, weight, bias, self.geometry)
        return out if bias is None else out + bias[..., None, None]

    def extra_repr(self) -> str:
        n = "" if self.layout == "dense" else f", dynamic={self.dynamic_weight.shape[1]}"
        return f"{super().extra_repr()}, k={self.num_kernels}, layout={self.layout!r}{n}"
