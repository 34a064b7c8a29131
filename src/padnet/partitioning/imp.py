"""Mode partition: Iterative Mode Partition (IMP) and its one-shot, random and magnitude variants.

PAD-Net eq. 5–9: starting fully dynamic (M = 1), score the elements, keep the top fraction dynamic
and make the rest static. IMP repeats this E times with the kept fraction κ^((e+1)/E), e = 0…E−1, so
the static ratio grows exponentially and the last iteration lands on κ (continuing from a partitioned
model at ratio r, the fractions are r·(κ/r)^((e+1)/E)). An element made static stays
static (as in iterative SNIP): only dynamic elements compete in later iterations.

Selection is exact: with `scope="global"` exactly round(κ·m) of all m mask elements stay dynamic;
with `scope="local"` exactly round(κ·m_l) in every tensor. Ties are broken by position (a stable
sort), so a partition is reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from padnet.errors import ConfigError, check_choice, check_module
from padnet.layers.modes import whole
from padnet.partitioning.scores import magnitude_scores, masked_tensors, random_scores, snip_scores

METHODS = ("imp", "mp", "random", "magnitude")
SCOPES = ("global", "local")
# the dynamic ratio κ when none is given: PAD-Net's settings for convolutions (§5.1) and for MoE (appendix B)
DEFAULT_KAPPA = {"conv": 0.3, "moe": 0.5}
MAX_ALIGN = 4_096  # `align` of a local partition: at most this many filters per multiple


@dataclass
class PartitionReport:
    """Outcome of a mode partition: the dynamic ratio reached overall and per masked tensor."""

    method: str
    kappa: float
    scope: str
    iterations: int
    dynamic: int
    total: int
    layers: list[dict] = field(default_factory=list)
    schedule: list[float] = field(default_factory=list)

    @property
    def dynamic_ratio(self) -> float:
        return self.dynamic / self.total

    def to_dict(self) -> dict:
        return {**asdict(self), "dynamic_ratio": self.dynamic_ratio}

    def summary(self) -> str:
        return (
            f"{self.method} ({self.scope}, {self.iterations} iteration(s)): dynamic ratio "
            f"{self.dynamic_ratio:.4f} ({self.dynamic}/{self.total}) over {len(self.layers)} tensors"
        )


def check_kappa(kappa: float) -> float:
    """Validate a dynamic ratio κ ∈ (0, 1]; ConfigError otherwise."""
    try:
        kappa = float(kappa)
    except (TypeError, ValueError):
        raise ConfigError(f"dynamic ratio kappa must be a number in (0, 1], got {kappa!r}") from None
    if not 0.0 < kappa <= 1.0:
        raise ConfigError(f"dynamic ratio kappa must be in (0, 1], got {kappa}")
    return kappa


def _keep_top(scores: list[torch.Tensor], masks: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Masks with exactly `keep` ones at the highest scores among currently dynamic elements."""
    flat = torch.cat(
        [torch.where(m.reshape(-1) > 0, s.reshape(-1).float(), float("-inf")) for s, m in zip(scores, masks)]
    )
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = min(keep, int(torch.isfinite(flat).sum()))  # never revive a static element
    new = torch.zeros_like(flat)
    new[order[:keep]] = 1.0
    return list(torch.split(new, [m.numel() for m in masks]))


def _aligned(count: float, total: int, align: int) -> int:
    """`count` rounded to the nearest multiple of `align` within [0, total], and not to 0 when
    `count` > 0 (so a layer asked to keep some dynamic filters keeps at least `align`)."""
    if align == 1:
        return round(count)
    kept = align * round(count / align)
    if count > 0:
        kept = max(kept, align)
    return min(kept, total)


def check_dynamic_elements(tensors, kappa: float, scope: str = "global", align: int = 1) -> int:
    """How many mask elements of `tensors` stay dynamic at ratio `kappa` (as [`apply_partition`][padnet.partitioning.imp.apply_partition] keeps
    them, exactly); at least one must.

    Raises:
        ConfigError: `kappa` rounds every dynamic element away, naming the smallest κ that keeps one.
    """
    sizes = [mode.mask.numel() for _, mode, _ in tensors]
    if scope == "global":
        kept, smallest = round(kappa * sum(sizes)), 1 / sum(sizes)
    else:
        kept = sum(
            _aligned(kappa * n, n, align if mode.granularity == "filter" else 1)
            for n, (_, mode, _) in zip(sizes, tensors)
        )
        smallest = 1 / max(sizes)
    if kept == 0:
        raise ConfigError(
            f"kappa {kappa:g} leaves no dynamic element of the {sum(sizes):,} mask elements "
            f"({scope} scope); use kappa >= {smallest:.3g}"
        )
    return kept


def imp_schedule(start: float, kappa: float, iterations: int) -> list[float]:
    """The dynamic ratios IMP keeps after each of its `iterations` rounds (PAD-Net eq. 9): the exponential
    schedule from the current ratio `start` to κ, start · (κ / start)^((e + 1) / E), e = 0…E − 1."""
    return [start * (kappa / start) ** ((e + 1) / iterations) for e in range(iterations)]


def apply_partition(tensors, scores: list[torch.Tensor], fraction: float, scope: str, align: int = 1) -> None:
    """Set every mask so that `fraction` of its elements (global or per tensor) stay dynamic.

    `align` (local scope): filter-granular masks keep a multiple of `align` dynamic filters.
    """
    masks = [mode.mask for _, mode, _ in tensors]
    if scope == "global":
        total = sum(m.numel() for m in masks)
        new = _keep_top(scores, masks, round(fraction * total))
    else:
        new = [
            _keep_top(
                [s],
                [m],
                _aligned(fraction * m.numel(), m.numel(), align if mode.granularity == "filter" else 1),
            )[0]
            for s, m, (_, mode, _) in zip(scores, masks, tensors)
        ]
    with torch.no_grad():
        for m, n in zip(masks, new):
            m.copy_(n.view_as(m))


def partition(
    model: nn.Module,
    kappa: float = DEFAULT_KAPPA["conv"],
    method: str = "imp",
    data: Iterable | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    num_batches: int = 10,
    iterations: int = 5,
    scope: str = "global",
    seed: int = 0,
    reset: bool = True,
    align: int = 1,
    batch_loss: Callable[[nn.Module, object], torch.Tensor] | None = None,
    check_scores: bool = True,
) -> PartitionReport:
    """Partition every PAD-Net layer of `model` into dynamic and static elements (in place).

    Args:
        model: a model with partially dynamic layers (e.g. `create_model(..., conv="pad")`).
        kappa: target dynamic ratio κ ∈ (0, 1].
        method: `"imp"` (iterative, eq. 5–9), `"mp"` (one-shot), `"random"`, `"magnitude"`, or a
            function `scores(name, factors, mask) -> Tensor` of the mask's shape, called once per masked tensor
            (as `importance_scores` of `torch.nn.utils.prune`; one-shot, like `"mp"`): higher scores stay
            dynamic.
        data: iterable of (inputs, targets) batches; required by `imp` and `mp`. The first
            `num_batches` batches are drawn once and reused by every IMP iteration (the paper's
            "10 batches of examples"); a shorter iterable is used whole.
        loss_fn: loss of (logits, targets).
        num_batches: N minibatches per score computation (paper: 10).
        iterations: E for IMP (ignored by the one-shot methods).
        scope: `"global"` threshold over all layers or `"local"` per tensor.
        seed: seed of the random partition.
        reset: start from a fully dynamic mask (M = 1); `False` continues from the current masks,
            whose static elements then stay static.
        align: with `scope="local"`, keep a multiple of `align` dynamic filters in every filter-granular
            mask (the nearest one, at least `align`): oneDNN convolutions run much faster on channel counts
            that are multiples of 16 (docs/speed.md). Other masks stay exact.
        batch_loss: `batch_loss(model, batch)` → loss, for batches that are not (inputs, targets) pairs
            (e.g. keyword dicts for a Hugging Face model); replaces `loss_fn`.
        check_scores: refuse IMP / MP when its scores would be rounding noise ([`check_separation`][padnet.partitioning.imp.check_separation]), as right
            after converting a pretrained model, when every dynamic factor still equals the static parameters.

    Returns:
        A [`PartitionReport`][padnet.partitioning.imp.PartitionReport].

    Raises:
        ConfigError: a `model` that is not an `nn.Module`, a bad κ (also one that leaves no dynamic element,
            [`check_dynamic_elements`][padnet.partitioning.imp.check_dynamic_elements]), method, scope, a model
            without PAD-Net layers, missing data, or scores without signal.
    """
    check_module(model, "partition")
    kappa = check_kappa(kappa)
    custom = method if callable(method) else None
    if custom is not None:
        method = "custom"
    else:
        check_choice("partition method", method, METHODS)
    check_choice("partition scope", scope, SCOPES)
    tensors = masked_tensors(model)
    if not tensors:
        raise ConfigError("the model has no partially dynamic layers to partition (build it with conv='pad')")
    if method in ("imp", "mp") and data is None:
        raise ConfigError(f"partition method {method!r} needs training data")
    if not 1 <= align <= MAX_ALIGN or (align > 1 and scope != "local"):
        raise ConfigError(
            f"align must be in [1, {MAX_ALIGN}], and > 1 only with scope='local', got {align} with {scope!r}"
        )
    if iterations < 1 or num_batches < 1:
        raise ConfigError(f"iterations and num_batches must be >= 1, got {iterations} and {num_batches}")
    check_dynamic_elements(tensors, kappa, scope, align)

    if method in ("imp", "mp") and check_scores:
        check_separation(tensors)
    start = 1.0 if reset else make_report(model, method, kappa, scope, 0, []).dynamic_ratio
    if kappa > start + 1e-12:
        raise ConfigError(
            f"cannot continue a partition to kappa {kappa} above the current dynamic ratio "
            f"{start:.4f} (static elements stay static); pass reset=True"
        )
    steps = iterations if method == "imp" else 1
    schedule = imp_schedule(start, kappa, steps)
    batches = list(itertools.islice(data, num_batches)) if method in ("imp", "mp") else []
    if method in ("imp", "mp") and not batches:
        raise ConfigError("mode partition needs at least one batch of training data")
    generator = torch.Generator().manual_seed(seed)
    saved = [mode.mask.clone() for _, mode, _ in tensors]
    try:
        if reset:
            with torch.no_grad():
                for _, mode, _ in tensors:
                    mode.mask.fill_(1.0)
        for fraction in schedule:
            if method in ("imp", "mp"):
                scores = snip_scores(model, tensors, batches, loss_fn, num_batches, batch_loss)
            elif method == "custom":
                scores = custom_scores(custom, tensors)
            elif method == "magnitude":
                scores = magnitude_scores(tensors)
            else:
                scores = random_scores(tensors, generator)
            apply_partition(tensors, scores, fraction, scope, align)
    except BaseException:  # a batch that does not fit, a bad score function: the masks stay as they were
        with torch.no_grad():
            for (_, mode, _), mask in zip(tensors, saved):
                mode.mask.copy_(mask)
        raise
    return make_report(model, method, kappa, scope, steps, schedule)


SEPARATION_FLOOR = 1e-6  # relative distance of the dynamic factors from Θ̄ below which scores are noise


def check_separation(tensors, floor: float = SEPARATION_FLOOR) -> float:
    """Refuse a partition whose scores could only rank float rounding; returns the relative separation.

    The IMP score of an element is |∂L/∂M| = |g · (λd·Σᵢ πᵢ Θᵢ − λs·Θ̄)| (PAD-Net eq. 4 and 7): when every
    dynamic factor Θᵢ equals the static parameter Θ̄ the bracket is zero up to rounding, and so is every score.
    That is the state right after converting a pretrained model (each kernel and Θ̄ copied from one weight).
    The separation Σᵢ‖Θᵢ − Θ̄‖₁ / (k‖Θ̄‖₁) over the masked tensors with static semantics is exactly 0 then and
    about the learning rate after one training step. Tensors without static parameters (pruning semantics)
    or whose factors are not shaped like Θ̄ are not checked.

    Raises:
        ConfigError: naming the remedy (train before partitioning), when the separation is below `floor`.
    """
    distance = size = 0.0
    for _, mode, factors in tensors:
        static = mode.static
        if static is None or factors.shape[1:] != static.shape:
            continue
        factors, static = whole(factors.detach()), whole(static.detach())  # the same value on every process
        distance += float((factors - static).abs().sum())
        size += float(static.abs().sum()) * factors.shape[0]
    if size == 0:
        return float("inf")
    separation = distance / size
    if separation < floor:
        raise ConfigError(
            f"mode partition scores would carry no signal: the dynamic factors equal the static "
            f"parameters (relative separation {separation:.1e}, floor {floor:g}), as right after "
            "converting a pretrained model; train first (PadConfig partition_at='steps' with "
            "partition_after=N) or pass check_scores=False"
        )
    return separation


def custom_scores(fn: Callable, tensors) -> list[torch.Tensor]:
    """Scores from a user function `fn(name, factors, mask)`, checked to have each mask's shape."""
    scores = []
    for name, mode, factors in tensors:
        score = fn(name, whole(factors.detach()), mode.mask.detach())
        if not isinstance(score, torch.Tensor) or score.shape != mode.mask.shape:
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ConfigError(
                f"the partition score function returned {got} for {name}; "
                f"expected a tensor of the mask's shape {tuple(mode.mask.shape)}"
            )
        scores.append(score.detach().float().to(mode.mask.device))
    return scores


def make_report(
    model: nn.Module, method: str, kappa: float, scope: str, iterations: int, schedule: list[float]
) -> PartitionReport:
    """Report the dynamic ratio now held by the masks of `model`."""
    layers, dynamic, total = [], 0, 0
    for name, mode, _ in masked_tensors(model):
        on, n = int(mode.mask.sum()), mode.mask.numel()
        layers.append({"name": name, "dynamic": on, "elements": n, "dynamic_ratio": on / n})
        dynamic, total = dynamic + on, total + n
    return PartitionReport(method, kappa, scope, iterations, dynamic, total, layers, schedule)
