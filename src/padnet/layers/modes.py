"""The PAD-Net reparameterisation, written once for every dynamic layer.

A dynamic layer owns `k` dynamic factors Θ₁…Θₖ of one shape and mixes them with input-dependent
coefficients π(x). PAD-Net (eq. 3–4 of "PAD-Net: An Efficient Framework for Dynamic Networks")
splits the computational parameters element-wise with a binary mask M:

```text
Θ̂ = λd · Σᵢ πᵢ(x) (Mᵢ ⊙ Θᵢ) + λs · (1 − M̄) ⊙ Θ̄
```

where Θ̄ are the static parameters and M̄ is the mean of the k masks. With one mask shared by the
k factors (`granularity="shared"`, the published code) this is exactly eq. 4:
λd · M ⊙ Σᵢ πᵢΘᵢ + λs · (1 − M) ⊙ Θ̄. With one mask per factor (`granularity="kernel"`) each factor
element is either dynamic or hands its share to the static value, and the static term stays
input-independent. With one mask element per output filter (`granularity="filter"`, beyond the paper:
its future-work "hardware-friendly partition") a whole filter Θᵢ[o] is dynamic or static, so the static
filters can run as one plain convolution. M = 1 gives the fully dynamic layer; M = 0 gives the static layer
λs · Θ̄.

`semantics="zero"` drops the static term (masked elements become zero): the pruning baseline
(MoE-P) and SD-Conv's W̃ᵢ = Mᵢ ⊙ Wᵢ.

Scale factors (paper Table 3): `"constrained"` (λs + λd = 2 via one trainable φ per layer,
λd = 2·sigmoid(φ)), `"both"` (free λs, λd), `"static"` (λs only), `"dynamic"` (λd only),
`"none"` (λs = λd = 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from padnet.errors import check_choice, deprecated

SCALE_MODES = ("constrained", "both", "static", "dynamic", "none")
GRANULARITIES = ("shared", "kernel", "filter")  # what convolution layers offer
# PartialMode also offers "neuron": one mask element per slice along the last dimension (an FFN neuron in the
# (R, F) layout of MoE experts)
MODE_GRANULARITIES = (*GRANULARITIES, "neuron")
SEMANTICS = ("static", "zero")


def aggregate(coeffs: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Σᵢ π_bi Θᵢ (PAD-Net eq. 1): `coeffs` (B, k), `factors` (k, *shape) → (B, *shape), one matmul."""
    return (coeffs @ factors.reshape(factors.shape[0], -1)).reshape(coeffs.shape[0], *factors.shape[1:])


class StructuredSplit(NamedTuple):
    """Static and dynamic slices of a structured mask (whole filters or neurons).

    `static` (n_s,) and `dynamic` (n_d,) are slice indices in ascending order; `inverse` (n_s + n_d,)
    puts outputs computed as `[static slices, dynamic slices]` back in the original order.
    """

    static: torch.Tensor
    dynamic: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def of(cls, dynamic: torch.Tensor, num_static: int | None = None) -> StructuredSplit:
        """The split of a boolean vector (n,) that is True at dynamic slices. With `num_static` (the count of
        False values, known from a parameter's shape) no shape depends on the vector's values, so
        `torch.compile` and `torch.export` trace it (sorting puts the static slices first, each part in ascending
        order)."""
        if num_static is None:
            static_idx, dynamic_idx = (~dynamic).nonzero().flatten(), dynamic.nonzero().flatten()
            return cls(static_idx, dynamic_idx, torch.argsort(torch.cat([static_idx, dynamic_idx])))
        n = dynamic.shape[0]
        # distinct keys (static slices first, each part by position): a plain sort, which ONNX also exports
        order = torch.argsort(dynamic.long() * n + torch.arange(n, device=dynamic.device))
        return cls(order[:num_static], order[num_static:], torch.argsort(order))


class SplitCache:
    """The [`StructuredSplit`][padnet.layers.modes.StructuredSplit] of a key tensor, rebuilt only when the key's values change.

    The one cache rule of every structured fast path (PAD-Net convolution, its deployed form, PAD-MoE): the key
    (a boolean vector of dynamic slices, or the deployed layer's dynamic indices) is compared with the last one at
    each eager call, so a mask written in any way (`copy_`, replaced, loaded) is seen. While `torch.compile` or
    `torch.export` traces, the split is built in the graph from the key (never a constant of an earlier call,
    which a later mask change would leave stale), so only a `build` whose shapes the key's shape fixes traces.
    """

    def __init__(self):
        self._key: torch.Tensor | None = None
        self._split: StructuredSplit | None = None

    def __call__(self, key: torch.Tensor, build=StructuredSplit.of) -> StructuredSplit:
        """The split `build(key)` (default: `key` is the boolean vector of dynamic slices), cached."""
        if torch.compiler.is_compiling():
            return build(key)
        if self._key is None or self._key.device != key.device or not torch.equal(key, self._key):
            self._split, self._key = build(key), key.clone()
        return self._split


@runtime_checkable
class Mode(Protocol):
    """What a dynamic layer asks of the mode of one tensor of k dynamic factors Θ (k, *shape).

    Implemented by [`PartialMode`][padnet.layers.modes.PartialMode] (PAD-Net), [`FullyDynamic`][padnet.layers.modes.FullyDynamic] (DY-Conv, CondConv, MoE) and
    [`ThresholdMask`][padnet.layers.sdconv.ThresholdMask] (SD-Conv). Layers, mode partition, counting and deployment
    use only these members, so a layer chooses its code path once and nobody probes for attributes.

    `partial`: whether mode partition sets this mode's mask (PAD-Net eq. 7–8); False when every element
    is dynamic or the mask follows from the weights (SD-Conv). `static`: the static parameters Θ̄ (shape
    `shape`), or None when the mode has none.
    """

    partial: bool
    static: nn.Parameter | None

    def dynamic_part(self, factors: torch.Tensor, lam_d=1.0) -> torch.Tensor:
        """The dynamic factors as the layer mixes them, (k, *shape) → (k, *shape)."""

    def static_part(self, lam_s=1.0) -> torch.Tensor | None:
        """The static term, shape `shape`, or None."""

    def aggregate(self, coeffs: torch.Tensor, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Computational parameters per sample: `coeffs` (B, k), `factors` (k, *shape) → (B, *shape)."""

    def mix(self, values: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Input-generated parameters (B, *shape) mixed with the static term → (B, *shape)."""

    def merged(self, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Each factor's computational parameters (dynamic part + static term), (k, *shape)."""

    def structured_split(self) -> StructuredSplit | None:
        """The static and dynamic slices of a structured, fixed mask; None when there is none to exploit."""

    def hard_mask(self, factors: torch.Tensor) -> torch.Tensor:
        """Where each factor is dynamic, booleans (k, *shape)."""

    def compact_counts(self, factors: torch.Tensor) -> dict[str, int]:
        """Elements a compact model stores: `dynamic` (dynamic factor values) and `static` (Θ̄ values)."""

    def skipped_macs(self, factors: torch.Tensor, pixels: int) -> int:
        """Multiply-accumulates of one input that the compact form skips, against the dense count, for a
        layer with `pixels` output positions (see [`padnet.metrics.counting`][padnet.metrics.counting])."""


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` itself, or gathered whole when it is a parameter sharded by FSDP2 (a DTensor outside its unit's
    forward; gathering is a collective every process must reach). What code that reads parameters outside a
    forward pass (scores, scale factors, checks) reads them through."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def scalar_parameter(value: float) -> nn.Parameter:
    """A trainable scalar (φ, λs, λd, SD-Conv's τ) stored as a 1-D tensor of one element: FSDP2's
    `fully_shard` shards every parameter along its first dimension and refuses 0-d ones. Register
    [`accept_scalars`][padnet.layers.modes.accept_scalars] on the module so state dicts saved with 0-d values
    (earlier padnet versions) still load."""
    return nn.Parameter(torch.full((1,), float(value)))


def widen_scalars(state: dict, reference: dict) -> dict:
    """`state` with each 0-d tensor whose `reference` counterpart has shape (1,) reshaped to (1,): state dicts
    saved before the scalars became [`scalar_parameter`][padnet.layers.modes.scalar_parameter]s load."""
    return {
        key: value.reshape(1)
        if isinstance(value, torch.Tensor)
        and value.dim() == 0
        and key in reference
        and reference[key].shape == (1,)
        else value
        for key, value in state.items()
    }


def _widen_own_scalars(module, state_dict, prefix, *args) -> None:
    own = {prefix + name: param for name, param in module.named_parameters(recurse=False)}
    state_dict.update(widen_scalars({k: state_dict[k] for k in own if k in state_dict}, own))


def accept_scalars(module: nn.Module) -> None:
    """Let `module.load_state_dict` take a 0-d tensor for each of its one-element parameters
    ([`widen_scalars`][padnet.layers.modes.widen_scalars])."""
    module.register_load_state_dict_pre_hook(_widen_own_scalars)


class ScaleFactors(nn.Module):
    """Trainable scale factors (λs, λd) of one layer (PAD-Net eq. 4, ablation of Table 3).

    Args:
        mode: one of `SCALE_MODES`. `"constrained"` holds one scalar φ (init 0 → λs = λd = 1)
            with λd = 2·sigmoid(φ) and λs = 2 − λd.

    φ, λs and λd are parameters of shape (1,) ([`scalar_parameter`][padnet.layers.modes.scalar_parameter]).
    `forward()` returns `(lambda_s, lambda_d)` as 0-d float32 tensors, computed in float32 also inside
    `torch.autocast` and in a model cast to bfloat16 (the sigmoid of φ is where half precision would round).
    """

    def __init__(self, mode: str = "constrained"):
        super().__init__()
        check_choice("scale-factor mode", mode, SCALE_MODES)
        self.mode = mode
        self.register_buffer("one", torch.ones(()), persistent=False)
        if mode == "constrained":
            self.phi = scalar_parameter(0.0)
        if mode in ("both", "static"):
            self.lambda_s = scalar_parameter(1.0)
        if mode in ("both", "dynamic"):
            self.lambda_d = scalar_parameter(1.0)
        accept_scalars(self)
        self._pick = f"_{mode}"  # the method forward() calls, chosen once (a name, so copies stay correct)

    def _constrained(self) -> tuple[torch.Tensor, torch.Tensor]:
        lam_d = 2.0 * torch.sigmoid(whole(self.phi).float())
        return 2.0 - lam_d, lam_d

    def _both(self) -> tuple[torch.Tensor, torch.Tensor]:
        return whole(self.lambda_s).float(), whole(self.lambda_d).float()

    def _static(self) -> tuple[torch.Tensor, torch.Tensor]:
        return whole(self.lambda_s).float(), self.one.float()

    def _dynamic(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.one.float(), whole(self.lambda_d).float()

    def _none(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.one.float(), self.one.float()

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.one.device.type, enabled=False):
            lam_s, lam_d = getattr(self, self._pick)()
        return (
            lam_s.sum(),
            lam_d.sum(),
        )  # 0-d, and not views of the parameters (hooks on outputs need a grad_fn)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class FullyDynamic(nn.Module):
    """The identity mode: every element dynamic, no static parameters (DY-Conv, CondConv, MoE).

    Has the same interface as [`PartialMode`][padnet.layers.modes.PartialMode] so a layer chooses its code path once, at
    construction.
    """

    partial = False
    static = None

    def dynamic_part(self, factors: torch.Tensor, lam_d=1.0) -> torch.Tensor:
        """Return the dynamic factors unchanged, shape (k, *shape)."""
        return factors

    def static_part(self, lam_s=1.0) -> None:
        """No static term."""

    def aggregate(self, coeffs: torch.Tensor, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Σᵢ πᵢ Θᵢ per sample (PAD-Net eq. 1). `coeffs` (B, k), `factors` (k, *shape) → (B, *shape)."""
        return aggregate(coeffs, factors)

    def mix(self, values: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Input-generated parameters (e.g. attention vectors), returned unchanged: (B, *shape)."""
        return values

    def merged(self, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """The factors themselves, (k, *shape)."""
        return factors

    def structured_split(self) -> None:
        """No mask, nothing to split."""

    def hard_mask(self, factors: torch.Tensor) -> torch.Tensor:
        """All True, (k, *shape)."""
        return torch.ones_like(factors, dtype=torch.bool)

    def compact_counts(self, factors: torch.Tensor) -> dict[str, int]:
        """Every factor element is stored."""
        return {"dynamic": factors.numel(), "static": 0}

    def skipped_macs(self, factors: torch.Tensor, pixels: int) -> int:
        """Nothing is skipped."""
        return 0


class PartialMode(nn.Module):
    """Mask M, static parameters Θ̄ and scale factors for one tensor of dynamic factors.

    Args:
        shape: shape of one dynamic factor Θᵢ (e.g. (Cout, Cin/groups, kh, kw)).
        num_factors: k, the number of dynamic factors (kernels or experts).
        granularity: `"shared"` — one mask of `shape` for all k factors; `"kernel"` — one mask per
            factor, shape (k, *shape); `"filter"` — one mask element per slice along the first dimension
            (an output filter), shape (1, shape[0], 1, …, 1), shared by the k factors; `"neuron"` — one
            per slice along the last dimension (an FFN neuron of MoE experts laid out (R, F)), shape
            (1, 1, …, 1, shape[-1]), shared by the k factors. `"column"`, its former name, is accepted with a
            `FutureWarning` until 0.3.0.
        semantics: `"static"` (PAD-Net) or `"zero"` (pruning: masked elements are zero).
        static_init: initial value of Θ̄ (copied), default zeros (callers initialise it).

    Attributes:
        mask: M, a float32 buffer of shape (1, *shape) shared, (k, *shape) per kernel, (1, shape[0], 1, …)
            per filter or (1, …, 1, shape[-1]) per neuron, all ones at construction (fully dynamic); it
            broadcasts against (k, *shape). A float so mode partition can differentiate the loss with respect
            to it (PAD-Net eq. 7).
        static: Θ̄, a parameter of `shape`, with `"static"` semantics; None with `"zero"`.
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
        if granularity == "column":
            deprecated("PartialMode granularity 'column'", "granularity 'neuron'")
            granularity = "neuron"
        check_choice("mask granularity", granularity, MODE_GRANULARITIES)
        check_choice("mask semantics", semantics, SEMANTICS)
        self.shape = tuple(shape)
        self.num_factors = num_factors
        self.granularity = granularity
        self.semantics = semantics
        if granularity == "filter":
            mask_shape = (1, self.shape[0], *(1 for _ in self.shape[1:]))
        elif granularity == "neuron":
            mask_shape = (1, *(1 for _ in self.shape[:-1]), self.shape[-1])
        else:
            mask_shape = (1 if granularity == "shared" else num_factors, *self.shape)
        self.register_buffer("mask", torch.ones(mask_shape))
        # whole filters (first dimension) or neurons (last dimension) can run as separate static and dynamic
        # parts; the split is kept per mask pattern
        self._structured = granularity in ("filter", "neuron")
        self._splits = SplitCache()
        # elements of one factor covered by one mask element (a whole filter or neuron for those granularities)
        self.block = math.prod(self.shape) // math.prod(mask_shape[1:])
        # aggregation MACs of one mask element (callers whose factors include a bias row set it lower)
        self.macs_per_element = self.block * (1 if granularity == "kernel" else num_factors)
        self.static: nn.Parameter | None = None  # Θ̄, with static semantics only
        if semantics == "static":
            init = torch.zeros(self.shape) if static_init is None else static_init.detach().clone()
            self.static = nn.Parameter(init.reshape(self.shape))

    def dynamic_part(self, factors: torch.Tensor, lam_d=1.0) -> torch.Tensor:
        """λd · Mᵢ ⊙ Θᵢ for all i. `factors`: (k, *shape) → (k, *shape)."""
        return factors * (self.mask * lam_d)

    def static_part(self, lam_s=1.0) -> torch.Tensor | None:
        """λs · (1 − M̄) ⊙ Θ̄, shape `shape`; None for `"zero"` semantics."""
        if self.static is None:
            return None
        static_share = 1.0 - self.mask.mean(0)  # M̄ over the k masks: (*shape)
        return self.static * (static_share * lam_s)

    def aggregate(self, coeffs: torch.Tensor, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Computational parameters per sample, λd · Σᵢ πᵢ (Mᵢ ⊙ Θᵢ) + λs · (1 − M̄) ⊙ Θ̄ (PAD-Net eq. 4).

        `coeffs` (B, k), `factors` (k, *shape), `lam_s`/`lam_d` scalars → (B, *shape).
        """
        out = aggregate(coeffs, self.dynamic_part(factors, lam_d))
        static = self.static_part(lam_s)
        return out if static is None else out + static

    def merged(self, factors: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """Each factor's computational parameters λd · Mᵢ ⊙ Θᵢ + λs · (1 − M̄) ⊙ Θ̄ (PAD-Net eq. 4 before
        mixing; the deployed MoE experts), (k, *shape) → (k, *shape)."""
        dynamic = self.dynamic_part(factors, lam_d)
        static = self.static_part(lam_s)
        return dynamic if static is None else dynamic + static

    def structured_split(self) -> StructuredSplit | None:
        """The static and dynamic filters (`"filter"`) or neurons (`"neuron"`) of the mask, cached per mask
        pattern ([`SplitCache`][padnet.layers.modes.SplitCache]); None for element masks, while mode partition
        differentiates a relaxed mask (the merged form keeps ∂L/∂M) and while `torch.compile` traces (the
        split's sizes depend on the mask's values; the element-wise form computes the same)."""
        if not self._structured or self.mask.requires_grad or torch.compiler.is_compiling():
            return None
        return self._splits(self.mask.reshape(-1) > 0)

    def hard_mask(self, factors: torch.Tensor | None = None) -> torch.Tensor:
        """Where each factor is dynamic: booleans (k, *shape) (mask lead 1 expanded to k)."""
        return self.element_mask().expand(self.num_factors, *self.shape) > 0

    def mix(self, values: torch.Tensor, lam_s=1.0, lam_d=1.0) -> torch.Tensor:
        """PAD-Net eq. 4 for parameters generated per sample rather than mixed from factors.

        `values` (B, *shape) — e.g. ODConv's attention vectors or DCD's channel-fusion matrix — are the
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
        """Fraction of mask elements that are dynamic (M = 1); every mask element covers `block` elements."""
        return float(self.mask.mean())

    def pool_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Element scores (mask lead, *shape) → scores of the mask elements: summed per filter for
        `"filter"` and per neuron for `"neuron"` granularity, unchanged otherwise."""
        if self.granularity == "filter":
            return scores.sum(dim=tuple(range(2, scores.dim())), keepdim=True)
        if self.granularity == "neuron":
            return scores.sum(dim=tuple(range(1, scores.dim() - 1)), keepdim=True)
        return scores

    def element_mask(self) -> torch.Tensor:
        """The mask expanded to one value per element: (mask lead, *shape) (a view)."""
        return self.mask.expand(self.mask.shape[0], *self.shape)

    def compact_counts(self, factors: torch.Tensor | None = None) -> dict[str, int]:
        """Elements a compact model must store for this tensor (the factors' values are not needed).

        `dynamic`: dynamic factors at dynamic positions (k·‖M‖₀ shared, ‖M‖₀ per kernel);
        `static`: static parameters at positions that are not fully dynamic.
        """
        on = int(self.mask.bool().sum()) * self.block
        dynamic = on * (1 if self.granularity == "kernel" else self.num_factors)
        static = 0
        if self.static is not None:
            static = int((self.mask.mean(0) < 1).sum()) * self.block
        return {"dynamic": dynamic, "static": static}

    def skipped_macs(self, factors: torch.Tensor | None = None, pixels: int = 1) -> int:
        """Aggregation MACs of the static mask elements, which the compact form does not aggregate (each
        costs `macs_per_element`; the convolution itself is unchanged)."""
        return int((self.mask == 0).sum()) * self.macs_per_element

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
    """Return [`PartialMode`][padnet.layers.modes.PartialMode] when `partial` else [`FullyDynamic`][padnet.layers.modes.FullyDynamic] (chosen once, at construction)."""
    if not partial:
        return FullyDynamic()
    return PartialMode(shape, num_factors, granularity, semantics, static_init)


def mode_tensors(model: nn.Module) -> list[tuple[str, Mode, torch.Tensor]]:
    """Every (qualified name, mode, dynamic factors) of `model`'s layers, each mode once, in module order.

    Layers list theirs through `mode_pairs()` (suffix, mode, factors); a mode shared by several layers
    (ALBERT) comes with its first.
    """
    out, seen = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, MaskedLayer):
            continue
        for suffix, mode, factors in module.mode_pairs():
            if id(mode) not in seen:
                seen.add(id(mode))
                out.append((f"{name}.{suffix}" if name else suffix, mode, factors))
    return out


def with_masks(pairs: list[tuple[str, Mode, torch.Tensor]]) -> list[tuple[str, Mode, torch.Tensor]]:
    """The (suffix, mode, factors) of `pairs` whose mode has a mask (all but [`FullyDynamic`][padnet.layers.modes.FullyDynamic])."""
    return [p for p in pairs if not isinstance(p[1], FullyDynamic)]


@runtime_checkable
class MaskedLayer(Protocol):
    """A layer with masked dynamic factors: `mode_pairs()` lists (suffix, [`Mode`][padnet.layers.modes.Mode], factors (k, *shape))
    for each of its tensors whose mode has a mask (PAD-Net's or SD-Conv's; [`with_masks`][padnet.layers.modes.with_masks])."""

    def mode_pairs(self) -> list[tuple[str, Mode, torch.Tensor]]: ...


def partial_modes(model: nn.Module) -> list[tuple[str, PartialMode]]:
    """All [`PartialMode`][padnet.layers.modes.PartialMode] submodules of `model` with their qualified names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PartialMode)]
