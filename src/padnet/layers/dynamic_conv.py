"""Dynamic convolution (DY-Conv) and its partially dynamic form (PAD-Net convolution).

`DynamicConv2d` follows "Dynamic Convolution: Attention over Convolution Kernels" (Chen et al. 2020,
PAD-Net eq. 1): k kernels mixed per sample by [`KernelAttention`][padnet.layers.attention.KernelAttention]. `PADConv2d` adds the mask,
static parameters and scale factors of PAD-Net eq. 3–4 through [`PartialMode`][padnet.layers.modes.PartialMode].

The layer runs one of the exact formulations of [`padnet.layers.formulations`][padnet.layers.formulations], chosen per input shape
and grad mode by a rule measured here (`formulation="auto"`), fixed by the user, or measured on the model
by [`autotune`][padnet.layers.autotune.autotune]; the choice is cached per shape. A PAD-Net layer with filter-granular masks computes
its static filters as one plain convolution and only its dynamic filters through the dynamic path.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers import formulations as forms
from padnet.layers.attention import KernelAttention
from padnet.layers.conv_base import PAD_OPTIONS, BaseForm, DynamicConvBase
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.modes import StructuredSplit, make_mode, with_masks
from padnet.layers.options import check_size_option


class DynamicConv2d(forms.FormulationChoice, DynamicConvBase):
    """DY-Conv: Θ̂(x) = Σᵢ πᵢ(x) Θᵢ, y = conv(x, Θ̂(x)) (PAD-Net eq. 1).

    Input (B, Cin, H, W) → (B, Cout, H', W') with H', W' as `nn.Conv2d`.

    Args:
        in_channels: as `nn.Conv2d`.
        out_channels: as `nn.Conv2d`.
        kernel_size: as `nn.Conv2d`.
        stride: as `nn.Conv2d`.
        padding: as `nn.Conv2d`; also accepts `"same"`/`"valid"`.
        dilation: as `nn.Conv2d`.
        groups: as `nn.Conv2d`.
        bias: as `nn.Conv2d`.
        num_kernels: k (4 for DY-Conv, 8 for CondConv).
        reduction: attention reduction ratio r (hidden = C/r).
        temperature: initial attention temperature.
        routing: `"softmax"` (DY-Conv) or `"sigmoid"` (CondConv).
        formulation: `"auto"` (measured rule or [`autotune`][padnet.layers.autotune.autotune]'s choice), `"grouped"`,
            `"per_sample"` or `"batched"` (see [`padnet.layers.formulations`][padnet.layers.formulations]).

    Attributes:
        weight: the k kernels, (k, Cout, Cin/groups, kh, kw).
        bias: (k, Cout), or None.
        attention: the routing branch ([`KernelAttention`][padnet.layers.attention.KernelAttention]).

    Raises:
        ConfigError: channels not divisible by `groups`, or k < 1.
    """

    OPTIONS = ("num_kernels", "reduction", "temperature", "routing", "formulation")
    folds_batchnorm = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        num_kernels: int = 4,
        reduction: int = 4,
        temperature: float = 30.0,
        routing: str = "softmax",
        formulation: str = "auto",
        **mode_kwargs,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        check_size_option("num_kernels", num_kernels)
        self.formulation = formulation
        self.num_kernels = num_kernels
        shape = self.kernel_shape
        self.weight = nn.Parameter(torch.empty(num_kernels, *shape))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels)) if bias else None
        self.attention = KernelAttention(in_channels, num_kernels, reduction, temperature, routing)
        self.reset_parameters()
        self._build_modes(shape, **mode_kwargs)

    def _build_modes(self, shape: tuple[int, ...], **options) -> None:
        opts = self._pad_options(options)
        static_w = None
        if self.partial:
            static_w = torch.empty(shape)
            nn.init.kaiming_uniform_(static_w, a=math.sqrt(5))
        self.weight_mode = make_mode(self.partial, shape, self.num_kernels, static_init=static_w, **opts)
        self.bias_mode = make_mode(
            self.partial and self.bias is not None,
            (self.out_channels,),
            self.num_kernels,
            static_init=torch.zeros(self.out_channels),
            **opts,
        )
        # static filters can run as one plain convolution: filter masks with static semantics, groups 1 or
        # depthwise (decided once; `structured` switches it off)
        self._structurable = (
            self.partial
            and opts["granularity"] == "filter"
            and opts["semantics"] == "static"
            and (self.groups == 1 or self.depthwise)
        )
        self.structured = self._structurable

    @property
    def structured(self) -> bool:
        """Whether a filter-granular PAD-Net layer runs its static filters as one plain convolution and only its
        dynamic filters through the dynamic path (default where possible). `False` forces the element-wise
        form, which computes the same; setting `True` where the layer cannot split raises ConfigError."""
        return self._structured

    @structured.setter
    def structured(self, value: bool) -> None:
        if value and not self._structurable:
            raise ConfigError(
                f"{type(self).__name__} cannot run structured: that needs filter-granular masks "
                "with static semantics and groups 1 or depthwise"
            )
        self._structured = bool(value)
        self._rule = forms.filter_rule if self._structured else forms.rule
        self.formulation = self.formulation  # the per-shape choices follow the rule

    def mode_pairs(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """(suffix, mode, dynamic factors) of the masked kernels and biases (`MaskedLayer` protocol)."""
        pairs = [("weight", self.weight_mode, self.weight)]
        if self.bias is not None:
            pairs.append(("bias", self.bias_mode, self.bias))
        return with_masks(pairs)

    def reset_parameters(self) -> None:
        """Initialise each kernel like `nn.Conv2d` (Kaiming-uniform, a = √5)."""
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0][0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def run(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """Forward pass in formulation `path` (every formulation gives the same result)."""
        coeffs = self.attention(x)  # (B, k)
        lam_s, lam_d = self.scales()
        bias = None if self.bias is None else self.bias_mode.aggregate(coeffs, self.bias, lam_s, lam_d)
        split = self.structured_split()
        if split is not None:
            static, dynamic = split[0], split[1]
            out = forms.filter_split(
                x,
                coeffs,
                self.weight_mode.static[static] * lam_s,
                self.weight[:, dynamic] * lam_d,
                split,
                path,
                self.geometry,
                self.depthwise,
            )
        elif path == "batched":
            out = forms.batched(
                x,
                coeffs,
                self.weight_mode.dynamic_part(self.weight, lam_d),
                self.weight_mode.static_part(lam_s),
                self.geometry,
            )
        else:
            weight = self.weight_mode.aggregate(coeffs, self.weight, lam_s, lam_d)
            return forms.PER_SAMPLE[path](x, weight, bias, self.geometry)
        return out if bias is None else out + bias[..., None, None]

    def deployed(self, bn: nn.BatchNorm2d | None = None) -> DeployedConv2d:
        """The compact inference form, λs, λd and `bn` folded in:
        [`DeployedConv2d.from_layer`][padnet.layers.deployed.DeployedConv2d.from_layer], in eval mode."""
        return DeployedConv2d.from_layer(self, bn).eval()

    @torch.no_grad()
    def base_layer(self) -> BaseForm:
        """The layer as a plain `nn.Conv2d` ([`BaseForm`][padnet.layers.conv_base.BaseForm]).

        With static parameters (PAD-Net, `mask_semantics="static"`): kernel λs·Θ̄ (Cout, Cin/groups, kh, kw) and
        bias λs·b̄ — PAD-Net eq. 4 with M = 0, so exact when every mask is static; where M = 1 the dynamic
        elements are dropped and Θ̄ keeps the value it had there (it gets no gradient where (1 − M̄) = 0: the
        pretrained weight when converted with `init_from_pretrained`). Without them (DY-Conv, CondConv,
        SD-Conv, zero semantics): the mean of the k kernels Θᵢ and biases, each a copy of the original weight
        at conversion (`load_static`).
        """
        lam_s = self.scales()[0].detach()
        if self.weight_mode.static is not None:
            bias = None if self.bias is None else self.bias_mode.static * lam_s
            return BaseForm(
                self.plain_conv(self.weight_mode.static * lam_s, bias), "static", self.all_static()
            )
        bias = None if self.bias is None else self.bias.mean(0)
        return BaseForm(self.plain_conv(self.weight.mean(0), bias), "kernels", False)

    def structured_split(self) -> StructuredSplit | None:
        """The static and dynamic filters when the structured path applies (`structured` and a fixed mask;
        mode partition differentiates a relaxed one), else None. Cached per mask pattern (`SplitCache`)."""
        return self.weight_mode.structured_split() if self._structured else None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.num_kernels}, bias={self.bias is not None}"


class PADConv2d(DynamicConv2d):
    """PAD-Net convolution: DY-Conv with a mask M, static parameters Θ̄ and scale factors (eq. 3–4).

    Takes the arguments and holds the attributes of [`DynamicConv2d`][padnet.layers.dynamic_conv.DynamicConv2d],
    plus those below.

    Keyword Args:
        granularity: `"shared"` (one mask for the k kernels, default), `"kernel"` (one per kernel) or
            `"filter"` (one mask element per output filter, see `structured`).
        scale_mode: scale-factor setting of Table 3 (default `"constrained"`: λs + λd = 2).
        mask_semantics: `"static"` (PAD-Net, default) or `"zero"` (masked elements pruned).

    Attributes:
        weight_mode.static: Θ̄, (Cout, Cin/groups, kh, kw), Kaiming-initialised independently of the kernels
            (`load_static` copies a static kernel into it); a parameter.
        bias_mode.static: (Cout,) when `bias`; a parameter.
        scales: the scale factors λs, λd (φ); parameters.
        weight_mode.mask: buffer, ones (fully dynamic until partitioned).
        bias_mode.mask: buffer, ones (fully dynamic until partitioned).
    """

    partial = True
    OPTIONS = DynamicConv2d.OPTIONS + tuple(PAD_OPTIONS)
