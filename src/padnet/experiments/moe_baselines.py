"""Published compression methods for Mixture-of-Experts language models, as baselines for PAD-MoE.

Each method changes a transformers causal LM of the Mixtral architecture in place: every bank of experts
([`find_expert_banks`][padnet.layers.experts.find_expert_banks]; `gate_up_proj` (E, 2F, H), `down_proj`
(E, H, F)) with its router, the sibling `gate` (`weight` (E, H), `top_k`, `num_experts`), which returns
(logits, top-k weights renormalised to sum 1, top-k indices).

* [`prune_experts`][padnet.experiments.moe_baselines.prune_experts]: NAEE (arXiv 2402.14800), router statistics
  variant — keep the experts the router uses most.
* [`merge_clusters`][padnet.experiments.moe_baselines.merge_clusters]: HC-SMoE (arXiv 2410.08589) — cluster the
  experts by their average output and merge every cluster into one expert.
* [`svd_deltas`][padnet.experiments.moe_baselines.svd_deltas]: D²-MoE (arXiv 2502.17298) — one Fisher-weighted
  base per matrix plus a truncated SVD of every expert's delta.

The budget helpers map a fraction of the original experts' bytes to each method's parameter, PAD's κ included,
so the methods can be compared at equal storage. The model's config is not updated (pruning changes the
number of experts of every bank), so a pruned model is evaluated in memory, not saved and reloaded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from padnet.adapter.moe_convert import fisher_information
from padnet.errors import ConfigError, check_choice
from padnet.layers.experts import find_expert_banks, static_estimate


@dataclass(frozen=True)
class RouterStatistics:
    """What the routers did on calibration batches, per bank name (as `find_expert_banks` names it).

    Attributes:
        frequency: (E,) float64 — how many (token, expert) top-k assignments each expert got.
        weight: (E,) float64 — the sum of each expert's top-k routing weights (renormalised to sum 1 per token).
    """

    frequency: dict[str, torch.Tensor]
    weight: dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Site:
    """A bank of experts and its router."""

    name: str
    bank: nn.Module
    router: nn.Module

    @property
    def num_experts(self) -> int:
        return self.bank.down_proj.shape[0]


def _bank_names(model: nn.Module) -> list[str]:
    """The names of `model`'s banks of experts (ConfigError when there is none)."""
    names = find_expert_banks(model)
    if not names:
        raise ConfigError(f"{type(model).__name__} has no bank of experts (gate_up_proj, down_proj)")
    return names


def _sites(model: nn.Module) -> list[_Site]:
    """Every bank of experts of `model` with its router, the sibling `gate` (ConfigError when there is none)."""
    sites = []
    for name in _bank_names(model):
        router = getattr(model.get_submodule(name.rpartition(".")[0]), "gate", None)
        if not isinstance(getattr(router, "weight", None), torch.Tensor):
            raise ConfigError(f"{name} has no router: no sibling 'gate' with a weight")
        sites.append(_Site(name, model.get_submodule(name), router))
    return sites


def _calibrate(model: nn.Module, batches: Iterable[dict], hooks: list) -> None:
    """Run every batch as `model(**batch)` in eval mode without gradients, then remove the hook handles
    `hooks` and restore the model's mode (ConfigError when `batches` holds no batch)."""
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
                seen += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not seen:
        raise ConfigError("the calibration batches hold no batch")


def _routing_hooks(sites: list[_Site], stats: RouterStatistics) -> list:
    """Forward hooks on every router adding its top-k assignments and weights to `stats`; their handles."""

    def hook(name: str, num_experts: int):
        def add(module, args, output) -> None:
            _, weights, index = output
            index = index.reshape(-1).cpu()
            stats.frequency[name] += torch.bincount(index, minlength=num_experts).double()
            weights = weights.detach().reshape(-1).cpu().double()
            stats.weight[name] += torch.bincount(index, weights=weights, minlength=num_experts)

        return add

    return [site.router.register_forward_hook(hook(site.name, site.num_experts)) for site in sites]


def _empty_statistics(sites: list[_Site]) -> RouterStatistics:
    """Zero statistics for every bank."""

    def zeros() -> dict[str, torch.Tensor]:
        return {site.name: torch.zeros(site.num_experts, dtype=torch.float64) for site in sites}

    return RouterStatistics(zeros(), zeros())


def router_statistics(model: nn.Module, batches: Iterable[dict]) -> RouterStatistics:
    """How often and how strongly the router of every bank of experts picks each expert on `batches`.

    Collected with a forward hook on each router (its output holds the top-k weights and indices) while
    every batch runs as `model(**batch)` under `torch.no_grad()` in eval mode (the model's mode is restored).
    Used by NAEE's expert pruning (arXiv 2402.14800) and HC-SMoE's merging (arXiv 2410.08589).

    Args:
        model: a transformers MoE causal LM (Mixtral architecture).
        batches: dicts with `input_ids` (b, T) and whatever else the model takes.

    Returns:
        A [`RouterStatistics`][padnet.experiments.moe_baselines.RouterStatistics]: per bank name, (E,) float64
        sums over all tokens of the assignment counts (`frequency`) and of the routing weights (`weight`).

    Raises:
        ConfigError: the model has no bank of experts with a router, or `batches` holds no batch.
    """
    sites = _sites(model)
    stats = _empty_statistics(sites)
    _calibrate(model, batches, _routing_hooks(sites, stats))
    return stats


def _check_count(what: str, value, low: int, high: int | None = None) -> None:
    """ConfigError unless `value` is an integer in [low, high] (at least `low` when `high` is None)."""
    valid = isinstance(value, int) and not isinstance(value, bool) and low <= value
    if high is None and not valid:
        raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")
    if high is not None and not (valid and value <= high):
        raise ConfigError(f"{what} must be an integer in [{low}, {high}], got {value!r}")


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set `module.name` to a new parameter holding `value`, trainable as the old one was."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


@torch.no_grad()
def _keep_experts(site: _Site, kept: torch.Tensor) -> None:
    """Slice the bank and its router to the experts `kept` (indices, ascending)."""
    for module, name in ((site.bank, "gate_up_proj"), (site.bank, "down_proj"), (site.router, "weight")):
        _replace(module, name, getattr(module, name).detach()[kept.to(getattr(module, name).device)])
    site.bank.num_experts = site.router.num_experts = len(kept)
    site.router.top_k = min(site.router.top_k, len(kept))


def prune_experts(
    model: nn.Module, keep: int, batches: Iterable[dict], criterion: str = "weight"
) -> dict[str, list[int]]:
    """NAEE expert pruning (Lu et al. 2024, "Not All Experts are Equal", arXiv 2402.14800), the router
    statistics variant: in every bank keep the `keep` experts with the largest summed routing weight
    (`criterion="weight"`) or assignment count (`"frequency"`) on `batches`
    ([`router_statistics`][padnet.experiments.moe_baselines.router_statistics]; ties go to the lower index), drop the others.

    In place: `gate_up_proj` (E, 2F, H) → (keep, 2F, H), `down_proj` (E, H, F) → (keep, H, F) and the router's
    `weight` (E, H) → (keep, H) become new parameters; `num_experts` of the bank and the router becomes `keep`,
    the router's `top_k` min(top_k, keep). The router's softmax and renormalisation then run over the kept
    experts only.

    Returns:
        The kept experts' original indices, ascending, by bank name.

    Raises:
        ConfigError: an unknown criterion, `keep` outside [1, E], no bank of experts, or no batch.
    """
    check_choice("criterion", criterion, ("weight", "frequency"))
    sites = _sites(model)
    for site in sites:
        _check_count("keep", keep, 1, site.num_experts)
    scores = getattr(router_statistics(model, batches), criterion)
    kept = {}
    for site in sites:
        order = torch.sort(scores[site.name], descending=True, stable=True).indices
        chosen = order[:keep].sort().values
        _keep_experts(site, chosen)
        kept[site.name] = chosen.tolist()
    return kept


def unique_expert_bytes(model: nn.Module) -> int:
    """Bytes of the distinct experts of every bank: an expert's (gate_up_proj (2F, H), down_proj (H, F)) slices
    count once per bank however many experts hold them (torch.equal) — what a merged bank stores.

    Raises:
        ConfigError: the model has no bank of experts.
    """
    total = 0
    for name in _bank_names(model):
        bank = model.get_submodule(name)
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        for gate_up, down in zip(bank.gate_up_proj.detach(), bank.down_proj.detach()):
            if not any(torch.equal(gate_up, g) and torch.equal(down, d) for g, d in seen):
                seen.append((gate_up, down))
                total += gate_up.nbytes + down.nbytes
    return total


def _output_sums(bank: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Every expert of `bank` applied to every token of `hidden` (N, H), summed over the tokens: (E, H) float64."""
    hidden = hidden.to(bank.gate_up_proj.dtype)
    sums = []
    for gate_up, down in zip(bank.gate_up_proj.detach(), bank.down_proj.detach()):
        gate, up = (hidden @ gate_up.T).chunk(2, dim=-1)
        sums.append(down.double() @ (bank.act_fn(gate) * up).double().sum(0))
    return torch.stack(sums).cpu()


def _output_hook(sums: dict[str, torch.Tensor], counts: dict[str, int], name: str):
    """A bank forward pre-hook adding every expert's outputs on the bank's input tokens, summed over the tokens,
    to `sums[name]` and the number of tokens to `counts[name]`."""

    def hook(bank, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        sums[name] += _output_sums(bank, hidden.reshape(-1, hidden.shape[-1]))
        counts[name] += hidden.numel() // hidden.shape[-1]

    return hook


def _mean_outputs(model: nn.Module, sites: list[_Site], batches) -> tuple[RouterStatistics, dict]:
    """Router statistics and every expert's average output (E, H) float64 on all tokens reaching its bank."""
    stats = _empty_statistics(sites)
    sums = {site.name: torch.zeros(site.num_experts, site.bank.down_proj.shape[1]).double() for site in sites}
    counts = dict.fromkeys(sums, 0)
    hooks = _routing_hooks(sites, stats) + [
        site.bank.register_forward_pre_hook(_output_hook(sums, counts, site.name), with_kwargs=True)
        for site in sites
    ]
    _calibrate(model, batches, hooks)
    return stats, {name: sums[name] / max(counts[name], 1) for name in sums}


def _cluster(features: torch.Tensor, clusters: int) -> list[list[int]]:
    """Average-linkage agglomerative clustering of the rows of `features` (E, D) by Euclidean distance into
    `clusters` groups, each a list of row indices, ordered by their first member."""
    if clusters == len(features):  # nothing to merge (and linkage needs two rows)
        return [[e] for e in range(len(features))]
    from scipy.cluster.hierarchy import cut_tree, linkage

    labels = cut_tree(linkage(features.numpy(), method="average", metric="euclidean"), n_clusters=clusters)
    groups: dict[int, list[int]] = {}
    for expert, label in enumerate(labels[:, 0].tolist()):
        groups.setdefault(label, []).append(expert)
    return sorted(groups.values())


@torch.no_grad()
def _merge_group(bank: nn.Module, group: list[int], frequency: torch.Tensor) -> None:
    """Write the `frequency`-weighted mean of the experts `group` (the plain mean when none was picked) into
    every member."""
    index = torch.tensor(group, device=bank.down_proj.device)
    weights = frequency[group]
    weights = weights if float(weights.sum()) > 0 else None
    for param in (bank.gate_up_proj, bank.down_proj):
        param[index] = static_estimate(param.detach()[index], weights)


def merge_clusters(model: nn.Module, clusters: int, batches: Iterable[dict]) -> dict[str, list[list[int]]]:
    """HC-SMoE expert merging (Chen et al. 2024, "Retraining-Free Merging of Sparse MoE via Hierarchical
    Clustering", arXiv 2410.08589), in place.

    Per bank, each expert is described by its average output (H,) over all calibration tokens reaching the bank
    (every expert runs on every token); the E experts are grouped into `clusters` groups by agglomerative
    clustering (average linkage, Euclidean distance) and each group's experts are all replaced by the group's
    mean weighted by routing frequency ([`router_statistics`][padnet.experiments.moe_baselines.router_statistics];
    the plain mean for a group no token was routed to). The router is unchanged: a token routed to two members of
    a group gets the merged expert with the sum of their weights, HC-SMoE's aggregated routing. Shapes stay
    (E, 2F, H) and (E, H, F); [`unique_expert_bytes`][padnet.experiments.moe_baselines.unique_expert_bytes]
    counts one copy per group.

    Returns:
        The groups (lists of expert indices, ascending, ordered by first member) by bank name.

    Raises:
        ConfigError: `clusters` outside [1, E], no bank of experts, or no batch.
    """
    sites = _sites(model)
    for site in sites:
        _check_count("clusters", clusters, 1, site.num_experts)
    stats, outputs = _mean_outputs(model, sites, batches)
    groups = {}
    for site in sites:
        groups[site.name] = _cluster(outputs[site.name], clusters)
        for group in groups[site.name]:
            _merge_group(site.bank, group, stats.frequency[site.name])
    return groups


def _fisher(model: nn.Module, sites: list[_Site], batches: Iterable[dict]) -> dict[str, list[torch.Tensor]]:
    """Squared gradients of `model(**batch).loss` (labels = `input_ids` unless the batch has labels) with
    respect to every bank's `gate_up_proj` and `down_proj`, summed over `batches` in float64, by bank name
    ([`fisher_information`][padnet.adapter.moe_convert.fisher_information])."""
    params = [p for site in sites for p in (site.bank.gate_up_proj, site.bank.down_proj)]
    fisher = fisher_information(
        model, params, batches, lambda m, batch: m(**{"labels": batch["input_ids"], **batch}).loss
    )
    if not any(float(f.sum()) > 0 for f in fisher):
        raise ConfigError("the calibration batches give no gradient to the experts")
    return {site.name: fisher[2 * i : 2 * i + 2] for i, site in enumerate(sites)}


def _truncate(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of every matrix of `delta` (E, m, n), by truncated SVD in float64."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]


@torch.no_grad()
def _svd_bank(bank: nn.Module, rank: int, fisher: list[torch.Tensor] | None) -> float:
    """Replace `bank`'s experts by base + rank-`rank` deltas; the relative Frobenius error of the bank."""
    inter = bank.down_proj.shape[2]
    error = norm = 0.0
    for i, param in enumerate((bank.gate_up_proj, bank.down_proj)):
        old = param.detach().double()
        base = static_estimate(old, None if fisher is None else fisher[i])
        delta = old - base
        parts = (delta[:, :inter], delta[:, inter:]) if param is bank.gate_up_proj else (delta,)
        new = base + torch.cat([_truncate(part, rank) for part in parts], dim=1)
        param.copy_(new)
        error += float((param.detach().double() - old).square().sum())
        norm += float(old.square().sum())
    return math.sqrt(error / norm) if norm > 0 else 0.0


def svd_deltas(
    model: nn.Module, rank: int, batches: Iterable[dict] | None, base: str = "fisher"
) -> dict[str, float]:
    """D²-MoE delta compression (Gu et al. 2025, "Delta Decompression for MoE-based LLMs Compression",
    arXiv 2502.17298), in place: per bank and matrix — gate (E, F, H), up (E, F, H), down (E, H, F) — a shared
    base Θ̄ plus each expert's delta Θᵉ − Θ̄ replaced by its rank-`rank` truncated SVD; the bank then holds
    Θ̄ + Uᵣ Sᵣ Vᵣᵀ per expert ([`svd_delta_bytes`][padnet.experiments.moe_baselines.svd_delta_bytes] counts what
    the compact form stores).

    Θ̄ is the Fisher-weighted mean element by element (`base="fisher"`; Fisher = squared gradients of
    `model(**batch).loss` with respect to `gate_up_proj` and `down_proj`, summed over `batches`, with
    `labels = input_ids` added to a batch that has none; an element with zero total Fisher takes the plain mean),
    or the plain mean (`base="mean"`; `batches` is not read). Parameter `.grad`s are left as they were.

    D²-MoE's delta part only: the SVD is plain (the paper whitens it with activation statistics) and the base
    is not pruned.

    Returns:
        Per bank name, the relative reconstruction error ‖W′ − W‖_F / ‖W‖_F over the bank's three matrices.

    Raises:
        ConfigError: an unknown base, `rank` outside [0, min(H, F)], no bank of experts, or (Fisher) no batch
            or no gradient.
    """
    check_choice("base", base, ("fisher", "mean"))
    sites = _sites(model)
    for site in sites:
        _check_count("rank", rank, 0, min(site.bank.down_proj.shape[1:]))
    fisher = _fisher(model, sites, batches or []) if base == "fisher" else {}
    return {site.name: _svd_bank(site.bank, rank, fisher.get(site.name)) for site in sites}


def svd_delta_bytes(
    num_experts: int, hidden: int, inter: int, rank: int, element_size: int, layers: int
) -> int:
    """Bytes the compact form of [`svd_deltas`][padnet.experiments.moe_baselines.svd_deltas] stores:
    layers × element_size × 3 × (hidden·inter + num_experts·rank·(hidden + inter)) — per matrix (gate, up, down)
    the base once and, per expert, Uᵣ Sᵣ (folded) and Vᵣ. `element_size` in bytes (2 for bfloat16).

    Raises:
        ConfigError: a count below 1 or `rank` outside [0, min(hidden, inter)].
    """
    counts = {"num_experts": num_experts, "hidden": hidden, "inter": inter, "element_size": element_size}
    for what, value in {**counts, "layers": layers}.items():
        _check_count(what, value, 1)
    _check_count("rank", rank, 0, min(hidden, inter))
    return layers * element_size * 3 * (hidden * inter + num_experts * rank * (hidden + inter))


def _check_budget(budget) -> None:
    """ConfigError unless `budget` is a number in (0, 1]."""
    if not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and 0 < budget <= 1):
        raise ConfigError(f"budget must be a fraction in (0, 1], got {budget!r}")


def keep_for_budget(budget: float, num_experts: int) -> int:
    """Experts [`prune_experts`][padnet.experiments.moe_baselines.prune_experts] keeps for a `budget` fraction
    of the original experts' bytes: round(budget · E) (Python's round, ties to even), at least 1.

    Raises:
        ConfigError: `budget` outside (0, 1] or `num_experts` below 1.
    """
    _check_budget(budget)
    _check_count("num_experts", num_experts, 1)
    return max(1, round(budget * num_experts))


def rank_for_budget(budget: float, num_experts: int, hidden: int, inter: int) -> int:
    """The largest rank r of [`svd_deltas`][padnet.experiments.moe_baselines.svd_deltas] whose bytes, as a
    fraction of the original experts' (E·H·F per matrix), (1 + E·r·(H + F)/(H·F)) / E, stay within `budget`;
    0 when even rank 0 (the base alone, 1/E) exceeds it.

    Raises:
        ConfigError: `budget` outside (0, 1] or a count below 1.
    """
    _check_budget(budget)
    for what, value in (("num_experts", num_experts), ("hidden", hidden), ("inter", inter)):
        _check_count(what, value, 1)
    exact = (budget * num_experts - 1) * hidden * inter / (num_experts * (hidden + inter))
    return max(0, math.floor(exact + 1e-9))  # the tolerance keeps a budget that is exactly some rank's


def pad_kappa_for_budget(budget: float, num_experts: int) -> float:
    """PAD's dynamic fraction κ for a `budget` fraction of the original experts' bytes: PAD stores
    ((1 − κ) + κE)/E of them (the static part once, the dynamic elements per expert), so κ = (budget·E − 1)/(E − 1).

    Raises:
        ConfigError: `num_experts` below 1, or `budget` outside (1/E, 1] (κ = 0 already stores 1/E).
    """
    _check_count("num_experts", num_experts, 1)
    if not (
        isinstance(budget, (int, float)) and not isinstance(budget, bool) and 1 / num_experts < budget <= 1
    ):
        raise ConfigError(f"PAD needs a budget in (1/{num_experts}, 1], got {budget!r}")
    return (budget * num_experts - 1) / (num_experts - 1)
