"""Omni-dimensional dynamic convolution (ODConv) and its PAD-Net form.

ODConv ("Omni-Dimensional Dynamic Convolution", Li et al. 2022) attends to four dimensions of the kernel
space with one squeeze branch h = ReLU(FC(GAP(x))) and four heads, each divided by a temperature T:

* channel attention α_c (B, Cin), sigmoid — scales the input channels;
* filter attention α_f (B, Cout), sigmoid — scales the output channels (absent for depthwise layers,
  where it would repeat α_c);
* spatial attention α_s (B, kh·kw), sigmoid — scales the kernel positions (absent for 1×1 kernels);
* kernel attention α_w (B, k), softmax — mixes the k kernels (absent for k = 1).

y = α_f ⊙ conv(α_c ⊙ x, α_s ⊙ Σᵢ α_wi Θᵢ). The squeeze branch has no BatchNorm here (ODConv has one), so
the layer works with batch 1 in training mode.

`PADODConv2d` (PAD-Net paper 001, appendix C) makes both kinds of dynamic parameters partially
dynamic with the shared PAD logic: the kernels through a [`PartialMode`][padnet.layers.modes.PartialMode]
(λd · Σᵢ α_wi Mᵢ ⊙ Θᵢ + λs · (1 − M̄) ⊙ Θ̄, only for k > 1: one kernel is static already) and each attention
vector through [`DynamicVector`][padnet.layers.vectors.DynamicVector] (static elements start at 1, "no attention").

Neither has a compact inference form ([`padnet.deploy`][padnet.deployment.deploy.deploy] keeps them and warns); their
base form ([`ODConv2d.base_layer`][padnet.layers.odconv.ODConv2d.base_layer]) is one plain convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from padnet.layers.attention import TemperatureRouting
from padnet.layers.conv_base import PAD_OPTIONS, BaseForm, DynamicConvBase
from padnet.layers.formulations import keep_format
from padnet.layers.modes import FullyDynamic, make_mode, with_masks
from padnet.layers.options import check_size_option
from padnet.layers.vectors import DynamicVector


class OmniAttention(TemperatureRouting):
    """The four attention heads of ODConv on one squeeze branch.

    Args:
        in_channels: Cin, from the geometry of the convolution.
        out_channels: Cout, from the geometry of the convolution.
        kernel_size: (kh, kw), from the geometry of the convolution.
        num_kernels: k, from the geometry of the convolution.
        depthwise: skip the filter attention.
        reduction: hidden width `max(Cin // reduction, min_hidden)` (ODConv: 1/16, at least 16).
        temperature: initial T.
        partial: PAD-Net form of the channel, filter and spatial attentions.
        semantics: `"static"` or `"zero"` for the partial heads.

    `forward(x, lam_s, lam_d)`: x (B, Cin, H, W) → (α_c (B, Cin), α_f (B, Cout) or None,
    α_s (B, kh·kw) or None, α_w (B, k) or None).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        num_kernels: int,
        depthwise: bool,
        reduction: int = 16,
        temperature: float = 1.0,
        min_hidden: int = 16,
        partial: bool = False,
        semantics: str = "static",
    ):
        super().__init__(temperature)
        check_size_option("reduction", reduction, low=1)
        self.reduction = reduction
        hidden = max(in_channels // reduction, min_hidden)
        self.fc = nn.Linear(in_channels, hidden, bias=False)
        vector = {"partial": partial, "semantics": semantics, "static_value": 1.0}
        self.channel = DynamicVector(hidden, in_channels, "sigmoid", **vector)
        self.filter = None if depthwise else DynamicVector(hidden, out_channels, "sigmoid", **vector)
        spatial = kernel_size[0] * kernel_size[1]
        self.spatial = DynamicVector(hidden, spatial, "sigmoid", **vector) if spatial > 1 else None
        self.kernel = DynamicVector(hidden, num_kernels, "softmax") if num_kernels > 1 else None

    def forward(self, x: torch.Tensor, lam_s=1.0, lam_d=1.0):
        h = torch.relu(self.fc(x.mean(dim=(2, 3))))  # (B, hidden)
        t = self.temperature
        return tuple(
            None if head is None else head(h, t, lam_s, lam_d)
            for head in (self.channel, self.filter, self.spatial, self.kernel)
        )

    def vector_pairs(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """Masked attention vectors as (suffix, mode, factors), for the layer's `mode_pairs` (a name of its
        own, so they are not collected twice)."""
        return [
            pair
            for name in ("channel", "filter", "spatial")
            if getattr(self, name) is not None
            for pair in getattr(self, name).mode_pair(f"attention.{name}")
        ]


class ODConv2d(DynamicConvBase):
    """ODConv: y = α_f ⊙ conv(α_c ⊙ x, α_s ⊙ Σᵢ α_wi Θᵢ) (Li et al. 2022).

    Input (B, Cin, H, W) → (B, Cout, H', W').

    Args:
        in_channels: as `nn.Conv2d`.
        out_channels: as `nn.Conv2d`.
        kernel_size: as `nn.Conv2d`.
        stride: as `nn.Conv2d`.
        padding: as `nn.Conv2d`.
        dilation: as `nn.Conv2d`.
        groups: as `nn.Conv2d`.
        bias: as `nn.Conv2d`. The bias is static, added after the filter attention.
        num_kernels: k (ODConv ×1 and ×4 in PAD-Net Table 7).
        reduction: squeeze ratio (hidden = max(Cin // reduction, 16)).
        temperature: initial attention temperature.

    Attributes:
        weight: the k kernels, (k, Cout, Cin/groups, kh, kw).
        bias: (Cout), or None.
        attention: the four attention heads ([`OmniAttention`][padnet.layers.odconv.OmniAttention]).

    Raises:
        ConfigError: invalid geometry, k < 1, reduction < 1, unexpected options.
    """

    OPTIONS = ("num_kernels", "reduction", "temperature")

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=False,
        num_kernels: int = 4,
        reduction: int = 16,
        temperature: float = 1.0,
        **options,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        check_size_option("num_kernels", num_kernels)
        opts = self._pad_options(options)
        self.num_kernels = num_kernels
        shape = self.kernel_shape
        self.weight = nn.Parameter(torch.empty(num_kernels, *shape))
        for w in self.weight:
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.attention = OmniAttention(
            in_channels,
            out_channels,
            self.kernel_size,
            num_kernels,
            self.depthwise,
            reduction,
            temperature,
            partial=self.partial,
            semantics=opts["semantics"],
        )
        static_w = None
        if self.partial and num_kernels > 1:
            static_w = torch.empty(shape)
            nn.init.kaiming_normal_(static_w, mode="fan_out", nonlinearity="relu")
        # one kernel is static already: only a bank of k > 1 kernels gets a mask
        self.weight_mode = make_mode(
            self.partial and num_kernels > 1, shape, num_kernels, static_init=static_w, **opts
        )
        self.bias_mode = FullyDynamic()  # the bias is static and unmasked
        # chosen once: one shared kernel (k = 1 and a 1×1 kernel) or a kernel per sample
        self._per_sample = self.attention.kernel is not None or self.attention.spatial is not None

    def mode_pairs(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """(suffix, mode, dynamic factors) of the masked kernels (k > 1) and attention vectors
        (`MaskedLayer` protocol)."""
        return with_masks([("weight", self.weight_mode, self.weight)]) + self.attention.vector_pairs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam_s, lam_d = self.scales()
        channel, filt, spatial, kernel = self.attention(x, lam_s, lam_d)
        x = x * channel[:, :, None, None]
        if self._per_sample:
            if kernel is None:
                weight = self.weight  # (1, Cout, Cin/g, kh, kw), broadcast over the batch below
            else:
                weight = self.weight_mode.aggregate(
                    kernel, self.weight, lam_s, lam_d
                )  # (B, Cout, Cin/g, kh, kw)
            if spatial is not None:
                weight = weight * spatial.reshape(-1, 1, 1, *self.kernel_size)
            out = self.per_sample_conv(x, weight.expand(x.shape[0], *weight.shape[1:]), None)
        else:
            out = nn.functional.conv2d(
                x, self.weight[0], None, self.stride, self.padding, self.dilation, self.groups
            )
        if filt is not None:
            out = out * filt[:, :, None, None]
        return keep_format(out if self.bias is None else out + self.bias[:, None, None], x)

    @torch.no_grad()
    def base_layer(self) -> BaseForm:
        """The layer as a plain `nn.Conv2d` ([`BaseForm`][padnet.layers.conv_base.BaseForm]); ODConv has no compact
        inference form.

        With static parameters (PAD form, `mask_semantics="static"`): the layer with M = 0 (PAD-Net eq. 4), one
        kernel (Cout, Cin/groups, kh, kw) = λs·Θ̄ (the only kernel for k = 1) scaled by the static attention
        values λs·v̄ of the channel, filter and spatial heads — exact when every mask is static; dynamic elements
        are dropped otherwise. Without them (ODConv, zero semantics): the mean of the k kernels with every
        attention left out, i.e. the original weight while the kernels are the copies made at conversion. The
        bias (Cout,) is static in both.
        """
        heads = self.attention.channel, self.attention.filter, self.attention.spatial
        if heads[0].mode.static is None:
            return BaseForm(self.plain_conv(self.weight.mean(0), self.bias), "kernels", False)
        lam_s = self.scales()[0].detach()
        channel, filt, spatial = (None if head is None else head.mode.static * lam_s for head in heads)
        kernel = self.weight[0] if self.weight_mode.static is None else self.weight_mode.static * lam_s
        cout, cin_g = self.kernel_shape[:2]  # α_c of the input channels each filter reads (its group's)
        per_filter = channel.reshape(self.groups, 1, cin_g).expand(self.groups, cout // self.groups, cin_g)
        kernel = kernel * per_filter.reshape(cout, cin_g, 1, 1)
        if spatial is not None:
            kernel = kernel * spatial.reshape(1, 1, *self.kernel_size)
        if filt is not None:
            kernel = kernel * filt.reshape(-1, 1, 1, 1)
        return BaseForm(self.plain_conv(kernel, self.bias), "static", self.all_static())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.num_kernels}, bias={self.bias is not None}"


class PADODConv2d(ODConv2d):
    """PAD-Net form of ODConv (paper 001, appendix C, Table 7).

    Takes the arguments and holds the attributes of [`ODConv2d`][padnet.layers.odconv.ODConv2d], plus those
    below. With every mask 1 the layer is ODConv; with every mask 0 and λs = 1 it is a static convolution with
    kernel Θ̄ (scaled by the static attentions, which start at 1).

    Keyword Args:
        granularity: kernel mask shared by the k kernels (`"shared"`, default) or one per kernel (`"kernel"`).
        scale_mode: λs + λd = 2 by default; one pair per layer, used by the kernels and the attentions.
        mask_semantics: `"static"` (PAD-Net, default) or `"zero"` (masked elements pruned).

    Attributes:
        weight_mode.mask: mask of the kernels (k > 1).
        attention.channel.mode.mask: mask of the channel attention.
        attention.filter.mode.mask: mask of the filter attention (absent for depthwise layers).
        attention.spatial.mode.mask: mask of the spatial attention (absent for 1×1 kernels).
    """

    partial = True
    OPTIONS = ODConv2d.OPTIONS + tuple(PAD_OPTIONS)
