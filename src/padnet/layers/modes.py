"""The PAD-Net reparameterisation, written once for every dynamic layer.

A dynamic layer owns ``k`` dynamic factors Θ₁…Θₖ of one shape and mixes them with input-dependent
coefficients π(x). PAD-Net (eq. 3–4 of "PAD-Net: An Efficient Framework for Dynamic Networks")
splits the computational parameters element-wise with a binary mask M::

    Θ̂ = λd · Σᵢ πᵢ(x) (Mᵢ ⊙ Θᵢ) + λs · (1 − M̄) ⊙ Θ̄

where Θ̄ are the static parameters and M̄ is the mean of the k masks. With one mask shared by the
k factors (``granularity="shared"``, the published code) this is exactly eq. 4:
λd · M ⊙ Σᵢ πᵢΘᵢ + λs · (1 − M) ⊙ Θ̄. With one mask per factor (``granularity="kernel"``) each factor
element is either dynamic or hands its share to the static value, and the static term stays
input-independent. With one mask element per output filter (``granularity="filter"``, beyond the paper:
its future-work "hardware-friendly partition") a whole filter Θᵢ[o] is dynamic or static, so the static
filters can run as one plain convolution. M = 1 gives the fully dynamic layer; M = 0 gives the static layer
λs · Θ̄.

``semantics="zero"`` drops the static term (masked elements become zero): the pruning baseline
(MoE-P) and SD-Conv's W̃ᵢ = Mᵢ ⊙ Wᵢ.

Scale factors (paper Table 3): ``"constrained"`` (λs + λd = 2 via one trainable φ per layer,
λd = 2·sigmoid(φ)), ``"both"`` (free λs, λd), ``"static"`` (λs only), ``"dynamic"`` (λd only),
``"none"`` (λs = λd = 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import check_choice

SCALE_MODES = ("constrained", "both", "static", "dynamic", "none")
GRANULARITIES = ("shared", "kernel", "filter")  # what convolution layers offer
# PartialMode also offers "column": one mask element per slice along the last dimension (an FFN neuron in the
# (2H + 1, F) layout of MoE experts)
MODE_GRANULARITIES = (*GRANULARITIES, "column")
SEMANTICS = ("static", "zero")


class ScaleFactors(nn.Module):
    """Trainable scale factors (λs, λd) of one layer (PAD-Net eq. 4, ablation of Table 3).

    Args:
        mode: one of ``SCALE_MODES``. ``"constrained"`` holds one scalar φ (init 0 → λs = λd = 1)
            with λd = 2·sigmoid(φ) and λs = 2 − λd.

    ``forward()`` returns ``(lambda_s, lambda_d)`` as 0-d tensors.
    """

    def __init__(self, mode: str = "constrained"):
        super().__init__()
        check_choice("scale-factor mode", mode, SCALE_MODES)
        self.mode = mode
        self.register_buffer("one", torch.ones(()), persistent=False)
        if mode == "constrained":
            self.phi = nn.Parameter(torch.zeros(()))
        if mode in ("both", "static"):
            self.lambda_s = nn.Parameter(torch.ones(()))
        if mode in ("both", "dynamic"):
            self.lambda_d = nn.Parameter(torch.ones(()))
        self._pick = f"_{mode}"  # the method forward() calls, chosen once (a name, so copies stay correct)

    def _constrained(self) -> tuple[torch.Tensor, torch.Tensor]:
        lam_d = 2.0 * torch.sigmoid(self.phi)
        return 2.0 - lam_d, lam_d

    def _both(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lambda_s, self.lambda_d

    def _static(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lambda_s, self.one

    def _dynamic(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.one, self.lambda_d

    def _none(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.one, self.one

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, self._pick)()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class FullyDynamic(nn.Module):
    """The identity mode: every element dynamic, no static parameters (DY-Conv, CondConv, MoE).

    Has the same interface as :class:`PartialMode` so a layer chooses its code path once, at
    construction.
    """

    partial = False

    def dynamic_part(self, factors: torch.Tensor, lam_d=1.0) -> torch.Tensor:
        """Return the dynamic factors unchanged, shape (k, *shape)."""
        return factors

    def static_part(self, lam_s=1.0) -> None:
        """No static term."""

    def aggregate(self, coeffs: torch.Tensor, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Σᵢ πᵢ Θᵢ per sample (PAD-Net eq. 1). ``coeffs`` (B, k), ``factors`` (k, *shape) → (B, *shape)."""
        return (coeffs @ factors.reshape(factors.shape[0], -1)).reshape(coeffs.shape[0], *factors.shape[1:])

    def mix(self, values: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Input-generated parameters (e.g. attention vectors), returned unchanged: (B, *shape)."""
        return values


class PartialMode(nn.Module):
    """Mask M, static parameters Θ̄ and scale factors for one tensor of dynamic factors.

    Args:
        shape: shape of one dynamic factor Θᵢ (e.g. (Cout, Cin/groups, kh, kw)).
        num_factors: k, the number of dynamic factors (kernels or experts).
        granularity: ``"shared"`` — one mask of ``shape`` for all k factors; ``"kernel"`` — one mask per
            factor, shape (k, *shape); ``"filter"`` — one mask element per slice along the first dimension
            (an output filter), shape (1, shape[0], 1, …, 1), shared by the k factors; ``"column"`` — one
            per slice along the last dimension, shape (1, 1, …, 1, shape[-1]), shared by the k factors.
        semantics: ``"static"`` (PAD-Net) or ``"zero"`` (pruning: masked elements are zero).
        static_init: initial value of Θ̄ (copied), default zeros (callers initialise it).

    Buffers: ``mask`` float32, shape (1, *shape) shared, (k, *shape) per kernel, (1, shape[0], 1, …)
    per filter or (1, …, 1, shape[-1]) per column, all ones at construction (fully dynamic); it broadcasts
    against (k, *shape). The mask is a float so mode partition can differentiate the loss with respect to it
    (PAD-Net eq. 7).
    """

    partial = True

    def __init__(
        self,
        shape: tuple[int, ...],
        num_factors: int,
        granularity: str = "shared",
        semantics: str = "static",
        static_init: torch.Tensor | None = None,
    ):
        super().__init__()
        check_choice("mask granularity", granularity, MODE_GRANULARITIES)
        check_choice("mask semantics", semantics, SEMANTICS)
        self.shape = tuple(shape)
        self.num_factors = num_factors
        self.granularity = granularity
        self.semantics = semantics
        if granularity == "filter":
            mask_shape = (1, self.shape[0], *(1 for _ in self.shape[1:]))
        elif granularity == "column":
            mask_shape = (1, *(1 for _ in self.shape[:-1]), self.shape[-1])
        else:
            mask_shape = (1 if granularity == "shared" else num_factors, *self.shape)
        self.register_buffer("mask", torch.ones(mask_shape))
        # elements of one factor covered by one mask element (a whole filter or column for those granularities)
        self.block = math.prod(self.shape) // math.prod(mask_shape[1:])
        # aggregation MACs of one mask element (callers whose factors include a bias row set it lower)
        self.macs_per_element = self.block * (1 if granularity == "kernel" else num_factors)
        if semantics == "static":
            init = torch.zeros(self.shape) if static_init is None else static_init.detach().clone()
            self.static = nn.Parameter(init.reshape(self.shape))

    def dynamic_part(self, factors: torch.Tensor, lam_d=1.0) -> torch.Tensor:
        """λd · Mᵢ ⊙ Θᵢ for all i. ``factors``: (k, *shape) → (k, *shape)."""
        return factors * (self.mask * lam_d)

    def static_part(self, lam_s=1.0) -> torch.Tensor | None:
        """λs · (1 − M̄) ⊙ Θ̄, shape ``shape``; None for ``"zero"`` semantics."""
        if self.semantics == "zero":
            return None
        static_share = 1.0 - self.mask.mean(0)  # M̄ over the k masks: (*shape)
        return self.static * (static_share * lam_s)

    def aggregate(self, coeffs: torch.Tensor, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Computational parameters per sample, λd · Σᵢ πᵢ (Mᵢ ⊙ Θᵢ) + λs · (1 − M̄) ⊙ Θ̄ (PAD-Net eq. 4).

        ``coeffs`` (B, k), ``factors`` (k, *shape), ``lam_s``/``lam_d`` scalars → (B, *shape).
        """
        dynamic = self.dynamic_part(factors, lam_d).reshape(factors.shape[0], -1)
        out = (coeffs @ dynamic).reshape(coeffs.shape[0], *factors.shape[1:])
        static = self.static_part(lam_s)
        return out if static is None else out + static

    def mix(self, values: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """PAD-Net eq. 4 for parameters generated per sample rather than mixed from factors.

        ``values`` (B, *shape) — e.g. ODConv's attention vectors or DCD's channel-fusion matrix — are the
        dynamic parameters: λd · M ⊙ values + λs · (1 − M) ⊙ Θ̄ → (B, *shape). Needs a shared mask.
        """
        out = values * (self.mask[0] * lam_d)
        static = self.static_part(lam_s)
        return out if static is None else out + static

    @property
    def factor_numel(self) -> int:
        """Elements of the k dynamic factors this mode masks (k · prod(shape))."""
        return self.num_factors * math.prod(self.shape)

    @property
    def numel(self) -> int:
        """Number of mask elements (what mode partition ranks)."""
        return self.mask.numel()

    def dynamic_ratio(self) -> float:
        """Fraction of mask elements that are dynamic (M = 1); every mask element covers ``block`` elements."""
        return float(self.mask.mean())

    def pool_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Element scores (mask lead, *shape) → scores of the mask elements: summed per filter for
        ``"filter"`` and per column for ``"column"`` granularity, unchanged otherwise."""
        if self.granularity == "filter":
            return scores.sum(dim=tuple(range(2, scores.dim())), keepdim=True)
        if self.granularity == "column":
            return scores.sum(dim=tuple(range(1, scores.dim() - 1)), keepdim=True)
        return scores

    def element_mask(self) -> torch.Tensor:
        """The mask expanded to one value per element: (mask lead, *shape) (a view)."""
        return self.mask.expand(self.mask.shape[0], *self.shape)

    def compact_counts(self) -> dict[str, int]:
        """Elements a compact model must store for this tensor.

        ``dynamic``: dynamic factors at dynamic positions (k·‖M‖₀ shared, ‖M‖₀ per kernel);
        ``static``: static parameters at positions that are not fully dynamic.
        """
        on = int(self.mask.bool().sum()) * self.block
        dynamic = on * (1 if self.granularity == "kernel" else self.num_factors)
        static = 0
        if self.semantics == "static":
            static = int((self.mask.mean(0) < 1).sum()) * self.block
        return {"dynamic": dynamic, "static": static}

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, k={self.num_factors}, granularity={self.granularity!r}, "
            f"semantics={self.semantics!r}"
        )


def make_mode(
    partial: bool,
    shape: tuple[int, ...],
    num_factors: int,
    granularity: str = "shared",
    semantics: str = "static",
    static_init: torch.Tensor | None = None,
) -> nn.Module:
    """Return :class:`PartialMode` when ``partial`` else :class:`FullyDynamic` (chosen once, at construction)."""
    if not partial:
        return FullyDynamic()
    return PartialMode(shape, num_factors, granularity, semantics, static_init)


def partial_modes(model: nn.Module) -> list[tuple[str, PartialMode]]:
    """All :class:`PartialMode` submodules of ``model`` with their qualified names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PartialMode)]
