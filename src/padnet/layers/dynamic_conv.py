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
from torch.nn.modules.utils import _pair

from ..errors import ConfigError, check_choice
from .attention import KernelAttention
from .modes import ScaleFactors, make_mode

FORMULATIONS = ("auto", "grouped", "batched")
# "auto": grouped convolution when the output map has at least this many pixels (or batch is 1)
GROUPED_MIN_PIXELS = 100


class DynamicConv2d(nn.Module):
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

    partial = False

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
        super().__init__()
        if groups < 1 or in_channels < 1 or out_channels < 1:
            raise ConfigError(f"channels and groups must be >= 1, got {in_channels}, {out_channels}, {groups}")
        if in_channels % groups or out_channels % groups:
            raise ConfigError(f"in_channels {in_channels} and out_channels {out_channels} must be divisible "
                              f"by groups {groups}")
        if num_kernels < 1:
            raise ConfigError(f"num_kernels must be >= 1, got {num_kernels}")
        self._paths: dict[torch.Size, str] = {}  # input shape -> formulation, decided once per shape
        self.formulation = formulation
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        if padding == "same" and self.stride != (1, 1):
            raise ConfigError("padding='same' needs stride 1 (as nn.Conv2d)")
        self.groups, self.num_kernels = groups, num_kernels
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(num_kernels, *shape))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels)) if bias else None
        self.attention = KernelAttention(in_channels, num_kernels, reduction, temperature, routing)
        self.reset_parameters()
        self._build_modes(shape, **mode_kwargs)

    def _build_modes(self, shape: tuple[int, ...], **mode_kwargs) -> None:
        if mode_kwargs:
            raise ConfigError(f"DynamicConv2d got unexpected options: {', '.join(sorted(mode_kwargs))}")
        self.scales = ScaleFactors("none")  # λs = λd = 1, no parameters
        self.weight_mode = make_mode(False, shape, self.num_kernels)
        self.bias_mode = make_mode(False, (self.out_channels,), self.num_kernels)

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

    @torch.no_grad()
    def init_kernels_(self, init_fn) -> None:
        """Apply ``init_fn`` (e.g. ``nn.init.kaiming_normal_``) to each kernel Θᵢ and to Θ̄ if present."""
        for w in self.weight:
            init_fn(w)
        static = getattr(self.weight_mode, "static", None)
        if static is not None:
            init_fn(static)

    def update_temperature(self, temperature: float) -> None:
        """Set the attention temperature T."""
        self.attention.update_temperature(temperature)

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

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Output (H', W') for an input map of ``size`` (H, W), as ``nn.Conv2d`` computes it."""
        if self.padding == "same":
            return tuple(size)
        padding = (0, 0) if self.padding == "valid" else self.padding
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, p, d, k, s in zip(size, padding, self.dilation, self.kernel_size, self.stride))

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        weight, bias = self.computational_weights(x)
        # one grouped convolution over the batch: (1, B·Cin, H, W) with B·groups groups
        out = F.conv2d(
            x.reshape(1, batch * self.in_channels, *x.shape[2:]),
            weight.reshape(batch * self.out_channels, *weight.shape[2:]),
            None if bias is None else bias.reshape(-1),
            self.stride, self.padding, self.dilation, batch * self.groups,
        )
        return out.reshape(batch, self.out_channels, *out.shape[2:])

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

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, init_from_static: bool = True, **kwargs) -> DynamicConv2d:
        """Build a dynamic layer with the geometry of ``conv``.

        With ``init_from_static`` every kernel (and the static parameters of a PAD layer) starts as
        ``conv.weight``, so with softmax routing (Σπ = 1) the new layer computes exactly what ``conv``
        did; with sigmoid routing (CondConv) the output is scaled by Σπ.
        """
        if conv.padding_mode != "zeros":
            raise ConfigError(f"only zero padding is supported, got padding_mode={conv.padding_mode!r}")
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, **kwargs,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        if init_from_static:
            layer.load_static(conv.weight.detach(), None if conv.bias is None else conv.bias.detach())
        return layer

    @torch.no_grad()
    def load_static(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Copy a static kernel (Cout, Cin/groups, kh, kw) into every dynamic kernel."""
        self.weight.copy_(weight.unsqueeze(0).expand_as(self.weight))
        if bias is not None:
            self.bias.copy_(bias.unsqueeze(0).expand_as(self.bias))

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, k={self.num_kernels}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}"


class PADConv2d(DynamicConv2d):
    """PAD-Net convolution: DY-Conv with a mask M, static parameters Θ̄ and scale factors (eq. 3–4).

    Extra args:
        granularity: ``"shared"`` (one mask for the k kernels) or ``"kernel"`` (one per kernel).
        scale_mode: scale-factor setting of Table 3 (``"constrained"``: λs + λd = 2).
        semantics: ``"static"`` (PAD-Net) or ``"zero"`` (masked elements pruned).

    Extra parameters: ``weight_mode.static`` (Cout, Cin/groups, kh, kw) — Θ̄, Kaiming-initialised
    independently of the kernels; ``bias_mode.static`` (Cout,) when ``bias``; ``scales`` (φ).
    Buffers: ``weight_mode.mask`` and ``bias_mode.mask`` (ones: fully dynamic until partitioned).
    """

    partial = True

    def _build_modes(self, shape, granularity: str = "shared", scale_mode: str = "constrained",
                     semantics: str = "static", **unknown) -> None:
        if unknown:
            raise ConfigError(f"PADConv2d got unexpected options: {', '.join(sorted(unknown))}")
        self.scales = ScaleFactors(scale_mode)
        static_w = torch.empty(shape)
        nn.init.kaiming_uniform_(static_w, a=math.sqrt(5))
        self.weight_mode = make_mode(True, shape, self.num_kernels, granularity, semantics, static_w)
        self.bias_mode = make_mode(self.bias is not None, (self.out_channels,), self.num_kernels, granularity,
                                   semantics, torch.zeros(self.out_channels))

    @torch.no_grad()
    def load_static(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Copy a static kernel into every dynamic kernel and into the static parameters Θ̄."""
        super().load_static(weight, bias)
        if self.weight_mode.semantics == "static":
            self.weight_mode.static.copy_(weight)
            if bias is not None:
                self.bias_mode.static.copy_(bias)


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
