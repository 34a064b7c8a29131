"""Dynamic convolution decomposition (DCD) and its PAD-Net form.

DCD ("Revisiting Dynamic Convolution via Matrix Decomposition", Li et al. 2021) writes the dynamic kernel as
a static kernel plus a low-rank dynamic residual: W(x) = Λ(x) W₀ + P (Φ(x) + I) Qᵀ, where

* W₀ (Cout, Cin/groups, kh, kw) is static and Λ(x) (B, Cout) is a dynamic channel-wise scale, the hard sigmoid
  of the authors' code relu6(z + 3) / 3: in [0, 2] and 1 at z = 0, so a new layer starts near W₀;
* Qᵀ compresses the Cin input channels to a latent space of L = ⌊√Cin⌋ channels (a 1×1 convolution with the
  layer's stride), Φ(x) (B, L, L) fuses them per sample ("dynamic channel fusion", no activation), the
  identity path adds the latent input back, and P expands L → Cout (1×1). As in the authors' code, the latent
  input and the fused latent are batch-normalised: z = BN(Qᵀx), residual P (BN(Φ z) + z). Without these
  normalisations the residual starts at 3–4× the main path's standard deviation; with them at 0.5–0.8×.

Λ and Φ come from one squeeze branch h = ReLU(FC(GAP(x))) of width `max(Cin // reduction, min_hidden)`.
Differences from the authors' code, kept for simplicity and documented in docs/zoo.md: their branch has no ReLU
and a small squeeze-excitation on h (h ⊙ hsigmoid(W h)); their ResNet basic blocks pool to 2×2 and use a latent
size of √(4·Cin) there (padnet: global pooling and ⌊√Cin⌋ everywhere); their branch width has no lower bound.
A depthwise layer mixes no channels, so it gets no channel-fusion residual: there DCD is the dynamic
channel-wise scale Λ(x) W₀ alone (with a residual there, MobileNetV2 ×1.0 would cost 432 MMACs instead of 366;
the paper gives 318). Grouped (non-depthwise) layers keep the residual across groups.

`PADDCDConv2d` (PAD-Net paper 001, appendix C, Table 6): Λ and Φ are the layer's dynamic parameters, so each
is mixed element-wise with a static counterpart (Λ̄ starts at 1, Φ̄ at 0, where the dynamic Λ also starts)
through [`DynamicVector`][padnet.layers.vectors.DynamicVector]; with every mask 0 and λs = 1 the layer (in eval mode,
where BatchNorm is affine) is the static convolution W₀ plus a static low-rank residual.

Neither has a compact inference form ([`padnet.deploy`][padnet.deployment.deploy.deploy] keeps them and warns); their
base form ([`DCDConv2d.base_layer`][padnet.layers.dcd.DCDConv2d.base_layer]) is one plain convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.conv_base import BaseForm, DynamicConvBase
from padnet.layers.deployed import bn_affine
from padnet.layers.formulations import keep_format
from padnet.layers.options import check_size_option
from padnet.layers.vectors import DynamicVector


class DCDConv2d(DynamicConvBase):
    """DCD: y = Λ(x) ⊙ conv(x, W₀) + P (BN(Φ(x) z) + z), z = BN(Qᵀx) (Li et al. 2021 eq. 8, as their code
    computes it: identity path and BatchNorm in the latent space, Λ = relu6(· + 3) / 3).

    Input (B, Cin, H, W) → (B, Cout, H', W').

    Args:
        in_channels: as `nn.Conv2d`.
        out_channels: as `nn.Conv2d`.
        kernel_size: as `nn.Conv2d`.
        stride: as `nn.Conv2d`.
        padding: as `nn.Conv2d`. It must keep the 1×1 residual aligned with the main convolution:
            2·padding = dilation·(kernel − 1) in each dimension, or `"same"`.
        dilation: as `nn.Conv2d`.
        groups: as `nn.Conv2d`.
        bias: as `nn.Conv2d`.
        reduction: squeeze ratio of the branch (DCD: 16).
        min_hidden: lower bound of the branch width.

    Attributes:
        weight: W₀, (Cout, Cin/groups, kh, kw).
        bias: (Cout), or None.
        fc: the squeeze branch.
        scale: the Λ head.
        q: Qᵀ, (L, Cin, 1, 1); not in depthwise layers.
        p: P, (Cout, L, 1, 1); not in depthwise layers.
        fusion: the Φ head; not in depthwise layers.
        q_norm: BatchNorm2d(L) of Qᵀx; not in depthwise layers.
        fusion_norm: BatchNorm2d(L) of Φ z; not in depthwise layers.

    Raises:
        ConfigError: invalid geometry or padding, reduction < 1, unexpected options.
    """

    OPTIONS = ("reduction",)

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
        reduction: int = 16,
        min_hidden: int = 4,
        **options,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        check_size_option("reduction", reduction, low=1)
        if self.padding != "same":
            padding = (0, 0) if self.padding == "valid" else self.padding
            if any(2 * p != d * (k - 1) for p, d, k in zip(padding, self.dilation, self.kernel_size)):
                raise ConfigError(
                    f"DCD needs padding that keeps the map size up to the stride "
                    f"(2·padding = dilation·(kernel − 1)), got padding={self.padding}"
                )
        if options.get("granularity", "shared") != "shared":
            raise ConfigError(
                f"{type(self).__name__} masks Λ and Φ with one mask each: granularity must be 'shared'"
            )
        opts = self._pad_options(options)
        self.reduction = reduction
        self.latent = latent = 0 if self.depthwise else max(1, math.isqrt(in_channels))  # L (0: no residual)
        hidden = max(in_channels // reduction, min_hidden)  # DCD: max(Cin, L²) / 16, and L² ≤ Cin
        self.weight = nn.Parameter(torch.empty(self.kernel_shape))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.fc = nn.Linear(in_channels, hidden, bias=False)
        vector = {"partial": self.partial, "semantics": opts["semantics"]}
        self.scale = DynamicVector(hidden, out_channels, "hardsigmoid2", static_value=1.0, **vector)
        self.q = self.p = self.fusion = self.q_norm = self.fusion_norm = None
        if latent:
            self.q = nn.Parameter(torch.empty(latent, in_channels, 1, 1))
            self.p = nn.Parameter(torch.empty(out_channels, latent, 1, 1))
            for w in (self.q, self.p):
                nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
            self.fusion = DynamicVector(hidden, latent * latent, "identity", static_value=0.0, **vector)
            self.q_norm, self.fusion_norm = nn.BatchNorm2d(latent), nn.BatchNorm2d(latent)

    def mode_pairs(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """(suffix, mode, dynamic factors) of the masked Λ and Φ (PAD form only; `MaskedLayer` protocol)."""
        return self.scale.mode_pair("scale") + (self.fusion.mode_pair("fusion") if self.fusion else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        lam_s, lam_d = self.scales()
        h = torch.relu(self.fc(x.mean(dim=(2, 3))))  # (B, hidden)
        scale = self.scale(h, 1.0, lam_s, lam_d)  # Λ (B, Cout)
        out = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        out = out * scale[:, :, None, None]
        if self.fusion is not None:
            fusion = self.fusion(h, 1.0, lam_s, lam_d).reshape(batch, self.latent, self.latent)  # Φ (B, L, L)
            z = self.q_norm(F.conv2d(x, self.q, None, self.stride))  # z = BN(Qᵀx): (B, L, H', W')
            fused = torch.bmm(fusion, z.flatten(2)).reshape(z.shape)  # Φ z: (B, L, H'·W') → (B, L, H', W')
            out = out + F.conv2d(self.fusion_norm(fused) + z, self.p)  # identity path: + z
        return keep_format(out if self.bias is None else out + self.bias[:, None, None], x)

    @torch.no_grad()
    def init_kernels_(self, init_fn) -> None:
        """Apply `init_fn` to the static kernel W₀ (the residual keeps its own initialisation)."""
        init_fn(self.weight)

    @torch.no_grad()
    def load_static(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Start W₀ from a static kernel and zero P, so the layer computes Λ(x) ⊙ conv(x, W₀)."""
        self.weight.copy_(weight)
        if self.p is not None:
            self.p.zero_()
        if bias is not None:
            self.bias.copy_(bias)

    @torch.no_grad()
    def base_layer(self) -> BaseForm:
        """The layer as a plain `nn.Conv2d` ([`BaseForm`][padnet.layers.conv_base.BaseForm]); DCD has no compact
        inference form.

        With static parameters (PAD form, `mask_semantics="static"`) and a residual that fits the kernel: the
        layer with M = 0 in eval mode (PAD-Net eq. 4), y = λsΛ̄ ⊙ conv(x, W₀) + P (BN(λsΦ̄ z) + z), z = BN(Qᵀx),
        all linear: kernel λsΛ̄ ⊙ W₀ plus the 1×1 map P (diag(a_f) λsΦ̄ + I) diag(a_q) Qᵀ (Cout, Cin) at the
        kernel tap that reads the residual's pixel, bias b + P ((diag(a_f) λsΦ̄ + I) c_q + c_f) (so the plain
        convolution has a bias wherever the layer has a residual), with each BatchNorm y = a ⊙ x + c — exact when every mask is static; dynamic elements are dropped otherwise. The
        residual fits when the layer has none (depthwise) or has groups 1 and a tap at offset 0 (odd kernels).
        Otherwise (DCD, zero semantics, a residual that does not fit): the static kernel W₀ (Cout, Cin/groups,
        kh, kw) and bias, Λ and the residual left out — the original weight, which `load_static` copies into W₀.
        """
        tap = self._residual_tap()
        if self.scale.mode.static is None or tap is None:
            return BaseForm(self.plain_conv(self.weight, self.bias), "W0", False)
        lam_s = self.scales()[0].detach()
        kernel = self.weight * (self.scale.mode.static * lam_s).reshape(-1, 1, 1, 1)
        bias = self.bias
        if self.fusion is not None:
            a_q, c_q = bn_affine(self.q_norm, self.latent, self.weight)
            a_f, c_f = bn_affine(self.fusion_norm, self.latent, self.weight)
            fusion = (self.fusion.mode.static * lam_s).reshape(self.latent, self.latent)  # λsΦ̄ (L, L)
            mix = a_f[:, None] * fusion + torch.eye(self.latent).to(fusion)  # diag(a_f) λsΦ̄ + I
            p = self.p[:, :, 0, 0]  # (Cout, L)
            kernel[:, :, tap[0], tap[1]] += p @ mix @ (a_q[:, None] * self.q[:, :, 0, 0])
            shift = p @ (mix @ c_q + c_f)
            bias = shift if bias is None else bias + shift
        return BaseForm(self.plain_conv(kernel, bias), "static", self.all_static())

    def _residual_tap(self) -> tuple[int, int] | None:
        """The kernel tap (row, column) that reads the pixel the 1×1 residual reads at every output position
        ((0, 0) without a residual); None when the residual cannot join the kernel (groups > 1, or no tap at
        offset 0, as with even kernels and explicit padding)."""
        if self.fusion is None:
            return (0, 0)
        if self.groups != 1:
            return None
        if self.padding == "same":  # nn.Conv2d pads dilation·(k − 1) // 2 before
            before = [d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size)]
        else:
            before = (0, 0) if self.padding == "valid" else self.padding
        if any(b % d for b, d in zip(before, self.dilation)):
            return None
        return tuple(b // d for b, d in zip(before, self.dilation))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, latent={self.latent}, bias={self.bias is not None}"


class PADDCDConv2d(DCDConv2d):
    """PAD-Net form of DCD: Λ and Φ partially dynamic (paper 001, appendix C, Table 6).

    Takes the arguments and holds the attributes of [`DCDConv2d`][padnet.layers.dcd.DCDConv2d], plus those below.

    Keyword Args:
        scale_mode: scale-factor setting (λs + λd = 2 by default).
        mask_semantics: `"static"` (PAD-Net, default) or `"zero"` (masked elements pruned).

    Attributes:
        scale.mode.mask: mask of Λ, (1, Cout).
        fusion.mode.mask: mask of Φ, (1, L²) (no Φ in depthwise layers).
    """

    partial = True
    OPTIONS = DCDConv2d.OPTIONS + ("scale_mode", "mask_semantics")
