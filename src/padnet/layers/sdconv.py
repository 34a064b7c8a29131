"""SD-Conv: sparse dynamic convolution with learnable thresholds.

"SD-Conv: Towards the Parameter-Efficiency of Dynamic Convolution" (paper 002):

* score S = |Wᵢ| (eq. 2), ψ₁ = σ(S − τ) with one learnable threshold τ per layer (eq. 3);
* M̃ = softmax over (ψ₁, ψ₀ = 1 − ψ₁) with temperature T (eq. 4), i.e. M̃ = σ((ψ₁ − ψ₀) / T), T = 1/1024;
* M = round(M̃) with the straight-through estimator, ∇M = ∇M̃ (eq. 5);
* W̃ᵢ = Mᵢ ⊙ Wᵢ, Ŵ = Σᵢ πᵢ W̃ᵢ (eq. 6).

Eq. 2 prints the inequality backwards; as its text says, a weight is kept when its magnitude is above τ.
"Different masks" (default): each kernel is scored on its own |Wᵢ|. "Same mask" (paper §5, Table 4): one
mask for the k kernels, scored on the mean magnitude over the k kernels.

This is PAD-Net's mask with "zero" semantics (masked elements are pruned, no static term): the mask is
computed from W and τ at every call instead of being found by mode partition.
"""

from __future__ import annotations

import torch
from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.layers.dynamic_conv import DynamicConv2d
from padnet.layers.modes import FullyDynamic, accept_scalars, aggregate, scalar_parameter

STRATEGIES = ("different", "same")


class ThresholdMask(nn.Module):
    """Binary masks of k kernels from their magnitudes and a learnable threshold τ (SD-Conv eq. 2–6).

    Args:
        num_factors: k.
        strategy: `"different"` (one mask per kernel, default) or `"same"` (one mask shared by the k).
        temperature: T of eq. 4 (> 0; default 1/1024).
        threshold: initial τ (in weight-magnitude units; 0 keeps every non-zero weight).

    Implements [`Mode`][padnet.layers.modes.Mode], so [`DynamicConv2d`][padnet.layers.dynamic_conv.DynamicConv2d]
    runs it unchanged and counting asks it what a compact model stores.

    Attributes:
        threshold: τ, a parameter of shape (1,) ([`scalar_parameter`][padnet.layers.modes.scalar_parameter]).
    """

    partial = False  # not partitioned by IMP: the mask follows from W and τ
    static = None  # pruned weights are zero, not static

    def __init__(
        self,
        num_factors: int,
        strategy: str = "different",
        temperature: float = 1 / 1024,
        threshold: float = 0.0,
    ):
        super().__init__()
        check_choice("mask strategy", strategy, STRATEGIES)
        if not temperature > 0:
            raise ConfigError(f"mask temperature must be > 0, got {temperature}")
        self.num_factors, self.strategy, self.temperature = num_factors, strategy, float(temperature)
        self.threshold = scalar_parameter(threshold)
        accept_scalars(self)

    def soft_mask(self, factors: torch.Tensor) -> torch.Tensor:
        """M̃ (eq. 3–4): `factors` (k, *shape) → float32 (k, *shape), or (1, *shape) for the same mask. Computed
        in float32 also in half precision: at T = 1/1024 a bfloat16 |W| − τ would move the mask's edge."""
        scores = factors.float().abs()  # S = |W| (eq. 2)
        if self.strategy == "same":
            scores = scores.mean(0, keepdim=True)
        # two-way softmax of (ψ₁, ψ₀) / T with ψ₁ = σ(S − τ), ψ₀ = 1 − ψ₁: σ((ψ₁ − ψ₀) / T), where
        # ψ₁ − ψ₀ = 2σ(S − τ) − 1 = tanh((S − τ) / 2) exactly, without float32 rounding ψ₁ to 0.5 near τ
        return torch.sigmoid(torch.tanh((scores - self.threshold.float()) / 2) / self.temperature)

    def mask(self, factors: torch.Tensor) -> torch.Tensor:
        """M = round(M̃) forward, ∇M = ∇M̃ backward (eq. 5), in the factors' dtype; gradients reach W and τ."""
        soft = self.soft_mask(factors)
        return (soft + (torch.round(soft) - soft).detach()).to(factors.dtype)

    def dynamic_part(self, factors: torch.Tensor, lam_d=1.0) -> torch.Tensor:
        """W̃ᵢ = Mᵢ ⊙ Wᵢ (eq. 6): (k, *shape) → (k, *shape)."""
        return factors * self.mask(factors)

    def static_part(self, lam_s=1.0) -> None:
        """No static term (zero semantics)."""

    def aggregate(self, coeffs: torch.Tensor, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Ŵ = Σᵢ πᵢ W̃ᵢ (eq. 6): `coeffs` (B, k), `factors` (k, *shape) → (B, *shape)."""
        return aggregate(coeffs, self.dynamic_part(factors))

    def mix(self, values: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Not defined: SD-Conv masks kernel banks, not parameters generated per sample.

        Raises:
            ConfigError: always.
        """
        raise ConfigError(
            "SD-Conv's threshold masks apply to kernels, not to parameters generated per sample"
        )

    def merged(self, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """The pruned kernels W̃ᵢ (no static term), (k, *shape)."""
        return self.dynamic_part(factors)

    def structured_split(self) -> None:
        """Element masks: no structured split."""

    @torch.no_grad()
    def hard_mask(self, factors: torch.Tensor) -> torch.Tensor:
        """The binary masks as booleans, (k, *shape) (the same mask repeated for `"same"`)."""
        return (self.soft_mask(factors) > 0.5).expand_as(factors)

    def compact_counts(self, factors: torch.Tensor) -> dict[str, int]:
        """A compact model stores the kept weights only (SD-Conv §4.3)."""
        return {"dynamic": int(self.hard_mask(factors).sum()), "static": 0}

    def skipped_macs(self, factors: torch.Tensor, pixels: int) -> int:
        """Convolution MACs at kernel positions zero in all k kernels (one per output pixel) and one
        aggregation MAC per pruned weight (SD-Conv §4.3)."""
        mask = self.hard_mask(factors)
        return pixels * int((~mask.any(0)).sum()) + int((~mask).sum())

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, T={self.temperature:g}"


class SparseDynamicConv2d(DynamicConv2d):
    """SD-Conv: DY-Conv whose k kernels are sparsified by learned masks (SD-Conv eq. 2–6).

    Takes the arguments of [`DynamicConv2d`][padnet.layers.dynamic_conv.DynamicConv2d] (k = 4, attention
    reduction 16 as in the paper), plus those below. Input (B, Cin, H, W) → (B, Cout, H', W').

    Args:
        mask_strategy: `"different"`/`"same"` (see [`ThresholdMask`][padnet.layers.sdconv.ThresholdMask]).
        mask_temperature: T (default 1/1024).
        threshold: initial τ (default 0).

    Attributes:
        weight: the k kernels, (k, Cout, Cin/g, kh, kw).
        weight_mode.threshold: τ.
        attention: the routing branch.

    Raises:
        ConfigError: as DynamicConv2d, an unknown strategy or a non-positive mask temperature.
    """

    OPTIONS = DynamicConv2d.OPTIONS + ("mask_strategy", "mask_temperature", "threshold")

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
        temperature: float = 30.0,
        routing: str = "softmax",
        formulation: str = "auto",
        mask_strategy: str = "different",
        mask_temperature: float = 1 / 1024,
        threshold: float = 0.0,
        **options,
    ):
        self._sparse_options = (mask_strategy, mask_temperature, threshold)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            num_kernels,
            reduction,
            temperature,
            routing,
            formulation,
            **options,
        )

    def _build_modes(self, shape: tuple[int, ...], **options) -> None:
        self._pad_options(options)  # no PAD-Net options: ConfigError naming any; λs = λd = 1
        self.weight_mode = ThresholdMask(self.num_kernels, *self._sparse_options)
        self.bias_mode = FullyDynamic()
        self._structurable = False
        self.structured = False

    def sparsity(self) -> dict[str, float]:
        """Layer sparsity (fraction of zeros over the k masked kernels) and kernel sparsity (fraction of
        kernel positions zero in all k kernels, i.e. zero in the aggregated kernel; paper §4.3, Fig. 6)."""
        mask = self.weight_mode.hard_mask(self.weight)
        return {"layer": 1.0 - float(mask.float().mean()), "kernel": 1.0 - float(mask.any(0).float().mean())}


def sparse_layers(model: nn.Module) -> list[tuple[str, SparseDynamicConv2d]]:
    """Every SD-Conv layer of `model` with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SparseDynamicConv2d)]


def budget_loss(model: nn.Module, density: float) -> torch.Tensor:
    """L0 budget penalty (SD-Conv eq. 8): ReLU(Σ_l N_l (‖M_l‖₀ − s̄)), in parameters.

    `density` s̄ = 1 − target sparsity; ‖M_l‖₀ is the fraction of kept weights of layer l's k kernels and
    N_l their number, so the value is the number of kept weights above the budget. Zero when the network is
    as sparse as the budget or sparser. As the paper writes it, L_s(τ, s̄) is a function of the thresholds:
    its gradient reaches τ through the straight-through masks (eq. 7), not W (W enters detached; pushing
    every weight near τ towards zero by λ_s·∂M/∂W would swamp the task gradient).

    Raises:
        ConfigError: the model has no SD-Conv layers.
    """
    layers = sparse_layers(model)
    if not layers:
        raise ConfigError("the model has no SD-Conv layers (build it with conv='sdconv')")
    excess = 0.0
    for _, layer in layers:
        mask = layer.weight_mode.mask(layer.weight.detach()).expand_as(layer.weight)
        excess = excess + mask.sum() - density * mask.numel()
    return torch.relu(excess)


@torch.no_grad()
def clamp_thresholds(model: nn.Module) -> None:
    """Keep every τ ≥ 0 (a magnitude threshold below 0 keeps every weight and, far from all |W|, gets no
    gradient back through the masks); call after each optimiser step."""
    for _, layer in sparse_layers(model):
        layer.weight_mode.threshold.clamp_(min=0.0)


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict:
    """Overall and per-layer layer / kernel sparsity of the SD-Conv layers (weighted by parameter count)."""
    layers, zeros, kernel_zeros, total, positions = [], 0, 0, 0, 0
    for name, layer in sparse_layers(model):
        mask = layer.weight_mode.hard_mask(layer.weight)
        layers.append({"name": name, **layer.sparsity(), "threshold": float(layer.weight_mode.threshold)})
        zeros += int((~mask).sum())
        total += mask.numel()
        kernel_zeros += int((~mask.any(0)).sum())
        positions += mask[0].numel()
    return {
        "sparsity": zeros / max(1, total),
        "kernel_sparsity": kernel_zeros / max(1, positions),
        "layers": layers,
    }


class SparsitySchedule:
    """Density budget s̄_t of SD-Conv's iterative pruning (Algorithm 1).

    The `total_steps` are cut into n + 1 equal phases; phase j (0…n) has the budget s̄^(j/n), so the first
    phase trains dense, each of the next n prunes further and the last one trains at s̄ = 1 − sparsity.
    (Algorithm 1 initialises s̄₀ = 0, which would prune everything in the first phase; s̄^0 = 1 is meant.)
    `n = 0` holds s̄ from the start. Calling the schedule with a step returns s̄_t.
    """

    def __init__(self, sparsity: float, iterations: int, total_steps: int):
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
        if iterations < 0 or total_steps < 1:
            raise ConfigError(
                f"iterations must be >= 0 and total_steps >= 1, got {iterations}, {total_steps}"
            )
        self.density, self.iterations = 1.0 - sparsity, iterations
        self.phase = total_steps / (iterations + 1)

    def __call__(self, step: int) -> float:
        if self.iterations == 0:
            return self.density
        phase = min(self.iterations, int(step // self.phase))
        return self.density ** (phase / self.iterations)
