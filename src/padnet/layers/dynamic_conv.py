"""Dynamic convolution (DY-Conv) and its partially dynamic form (PAD-Net convolution).

``DynamicConv2d`` follows "Dynamic Convolution: Attention over Convolution Kernels" (Chen et al. 2020,
PAD-Net eq. 1): k kernels mixed per sample by :class:`KernelAttention`. ``PADConv2d`` adds the mask,
static parameters and scale factors of PAD-Net eq. 3–4 through :class:`~padnet.layers.modes.PartialMode`.

Two exact formulations, chosen per input shape and cached (``formulation="auto"``):

* ``"grouped"`` — aggregate one kernel per sample, then one grouped convolution with
  groups = batch × groups. Fast on large feature maps and for batch 1.
* ``"batched"`` — one ordinary convolution with (k + 1)·Cout outputs (the k masked kernels and the static
  kernel), then the π-weighted sum. Convolution is linear in the kernel, so this equals the grouped form;
  it is faster on small feature maps, where grouped convolution is slow on CPU (measured here at
  batch 128, 2 threads: 7×7 maps 4.3–6.6× static grouped vs 3.7–4.4× batched; 14×14: 1.5–2.1× vs 3.9–5.5×).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, check_choice
from .attention import KernelAttention
from .conv_base import PAD_OPTIONS, DynamicConvBase
from .modes import make_mode

FORMULATIONS = ("auto", "grouped", "batched")
# "auto": grouped convolution when the output map has at least this many pixels (or batch is 1)
GROUPED_MIN_PIXELS = 100


class DynamicConv2d(DynamicConvBase):
    """DY-Conv: Θ̂(x) = Σᵢ πᵢ(x) Θᵢ, y = conv(x, Θ̂(x)) (PAD-Net eq. 1).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d``
            (``padding`` also accepts ``"same"``/``"valid"``).
        num_kernels: k (4 for DY-Conv, 8 for CondConv).
        reduction: attention reduction ratio r (hidden = C/r).
        temperature: initial attention temperature.
        routing: ``"softmax"`` (DY-Conv) or ``"sigmoid"`` (CondConv).
        formulation: ``"auto"``, ``"grouped"`` or ``"batched"`` (see the module docstring).

    Parameters: ``weight`` (k, Cout, Cin/groups, kh, kw), ``bias`` (k, Cout) or None, ``attention``.
    Input (B, Cin, H, W) → (B, Cout, H', W') with H', W' as ``nn.Conv2d``.

    Raises:
        ConfigError: channels not divisible by ``groups``, or k < 1.
    """

    OPTIONS = ("num_kernels", "reduction", "temperature", "routing", "formulation")

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
        if num_kernels < 1:
            raise ConfigError(f"num_kernels must be >= 1, got {num_kernels}")
        self._paths: dict[torch.Size, str] = {}  # input shape -> formulation, decided once per shape
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
        self.bias_mode = make_mode(self.partial and self.bias is not None, (self.out_channels,), self.num_kernels,
                                   static_init=torch.zeros(self.out_channels), **opts)

    def mode_pairs(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        """(suffix, mode, dynamic factors) for each masked tensor; used by mode partition and deployment."""
        pairs = [("weight", self.weight_mode, self.weight)]
        if self.bias is not None:
            pairs.append(("bias", self.bias_mode, self.bias))
        return [p for p in pairs if getattr(p[1], "partial", False)]

    def reset_parameters(self) -> None:
        """Initialise each kernel like ``nn.Conv2d`` (Kaiming-uniform, a = √5)."""
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0][0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def computational_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample kernels Θ̂(x) (B, Cout, Cin/groups, kh, kw) and biases (B, Cout) or None."""
        coeffs = self.attention(x)  # (B, k)
        lam_s, lam_d = self.scales()
        weight = self.weight_mode.aggregate(coeffs, self.weight, lam_s, lam_d)
        bias = None if self.bias is None else self.bias_mode.aggregate(coeffs, self.bias, lam_s, lam_d)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self._paths.get(x.shape)
        if path is None:
            path = self._paths[x.shape] = self._choose(x.shape)
        return self._batched(x) if path == "batched" else self._grouped(x)

    def _choose(self, shape: torch.Size):
        """The formulation for inputs of ``shape`` (decided once per shape)."""
        if self.formulation != "auto":
            return self.formulation
        pixels = math.prod(self.output_size(shape[2:]))
        return "grouped" if shape[0] == 1 or pixels >= GROUPED_MIN_PIXELS else "batched"

    @property
    def formulation(self) -> str:
        """``"auto"``, ``"grouped"`` or ``"batched"``; setting it clears the per-shape choices."""
        return self._formulation

    @formulation.setter
    def formulation(self, value: str) -> None:
        check_choice("formulation", value, FORMULATIONS)
        self._formulation = value
        self._paths.clear()

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_sample_conv(x, *self.computational_weights(x))

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        batch, g = x.shape[0], self.groups
        pi = coeffs = self.attention(x)  # (B, k)
        lam_s, lam_d = self.scales()
        kernels = self.weight_mode.dynamic_part(self.weight, lam_d)  # (k, Cout, Cin/g, kh, kw)
        static = self.weight_mode.static_part(lam_s)  # (Cout, Cin/g, kh, kw) or None
        if static is not None:
            kernels = torch.cat([kernels, static.unsqueeze(0)])
            coeffs = torch.cat([coeffs, coeffs.new_ones(batch, 1)], dim=1)
        n = kernels.shape[0]
        # order output channels (group, kernel, channel-in-group) so each group sees its own inputs
        per_group = self.out_channels // g
        stacked = kernels.reshape(n, g, per_group, *kernels.shape[2:]).transpose(0, 1)
        out = F.conv2d(x, stacked.reshape(g * n * per_group, *kernels.shape[2:]), None,
                       self.stride, self.padding, self.dilation, g)
        out = out.reshape(batch, g, n, per_group, *out.shape[2:])
        out = torch.einsum("bn,bgnchw->bgchw", coeffs, out).reshape(batch, self.out_channels, *out.shape[4:])
        if self.bias is not None:
            out = out + self.bias_mode.aggregate(pi, self.bias, lam_s, lam_d)[..., None, None]
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.num_kernels}, bias={self.bias is not None}"


class PADConv2d(DynamicConv2d):
    """PAD-Net convolution: DY-Conv with a mask M, static parameters Θ̄ and scale factors (eq. 3–4).

    Extra args:
        granularity: ``"shared"`` (one mask for the k kernels) or ``"kernel"`` (one per kernel).
        scale_mode: scale-factor setting of Table 3 (``"constrained"``: λs + λd = 2).
        semantics: ``"static"`` (PAD-Net) or ``"zero"`` (masked elements pruned).

    Extra parameters: ``weight_mode.static`` (Cout, Cin/groups, kh, kw) — Θ̄, Kaiming-initialised
    independently of the kernels (``load_static`` copies a static kernel into it); ``bias_mode.static``
    (Cout,) when ``bias``; ``scales`` (φ).
    Buffers: ``weight_mode.mask`` and ``bias_mode.mask`` (ones: fully dynamic until partitioned).
    """

    partial = True
    OPTIONS = DynamicConv2d.OPTIONS + tuple(PAD_OPTIONS)


@contextlib.contextmanager
def force_formulation(model: nn.Module, formulation: str) -> Iterator[nn.Module]:
    """Run every dynamic convolution of ``model`` with ``formulation`` inside the block (e.g. for counting).

    The layers' own settings and cached choices are restored afterwards.
    """
    layers = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    saved = [m.formulation for m in layers]
    try:
        for m in layers:
            m.formulation = formulation
        yield model
    finally:
        for m, form in zip(layers, saved):
            m.formulation = form
