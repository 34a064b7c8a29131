"""Model surgery for transformers: find the feed-forward blocks and replace them with MoE layers.

Works on any `nn.Module` whose FFN is two linear maps (H → F → H) around an activation, or a gated FFN (a gate
and an up map H → F, a down map F → H), named as in the Hugging Face models:

* two linear maps (a triple of names: first linear, activation, second linear): BERT, RoBERTa, ELECTRA, MiniLM
  and other BERT-architecture models (`intermediate.dense` / `intermediate.intermediate_act_fn` /
  `output.dense`), ALBERT (`ffn` / `activation` / `ffn_output`), DistilBERT (`lin1` / `activation` /
  `lin2`) and the GPT-2 decoder (`mlp.c_fc` / `mlp.act` / `mlp.c_proj`, whose linear maps are
  transformers' `Conv1D`: `x @ W + b` with W stored (in, out)). The first linear becomes the MoE layer
  (which outputs H), the activation and the second linear become `nn.Identity`, so the residual, dropout and
  LayerNorm around the FFN are untouched.
* gated (four names, of the block's children: gate, up, down, activation): the SwiGLU MLPs of Llama, Mistral,
  Qwen2 and Qwen3 (`gate_proj` / `up_proj` / `down_proj` / `act_fn`), which compute
  `down(act(gate(x)) ⊙ up(x))`. The whole block becomes the MoE layer.

Other layouts can be named with `patterns=`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.experts import ExpertBank, find_expert_banks, static_estimate
from padnet.layers.moe import MoEFeedForward, reset_aux_losses

# (first linear, activation, second linear), relative to the module that holds the FFN; or, gated, (gate, up,
# down, activation), children of the FFN block itself
FFN_PATTERNS: tuple[tuple[str, ...], ...] = (
    ("intermediate.dense", "intermediate.intermediate_act_fn", "output.dense"),
    ("ffn", "activation", "ffn_output"),
    ("lin1", "activation", "lin2"),
    ("mlp.c_fc", "mlp.act", "mlp.c_proj"),
    ("gate_proj", "up_proj", "down_proj", "act_fn"),
)


@dataclass(frozen=True)
class FFNSite:
    """One feed-forward block: the qualified names of its linears and its activation; for a gated block also
    its gate and the block itself (which the MoE layer replaces)."""

    up: str
    activation: str
    down: str
    gate: str | None = None
    block: str | None = None

    @property
    def moe(self) -> str:
        """Where the MoE layer goes: the gated block, or the first linear."""
        return self.up if self.block is None else self.block


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def linear_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """`(weight (out, in), bias or None)` of an `nn.Linear` or of transformers' `Conv1D` (which stores its
    weight (in, out) and computes `x @ W + b`), as views; None for any other module."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    weight = getattr(module, "weight", None)
    if (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    ):
        return weight.t(), module.bias
    return None


@torch.no_grad()
def set_linear_parts(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Write `weight` (out, in) and `bias` (out,) into an `nn.Linear` or a transformers `Conv1D`: the inverse of
    [`linear_parts`][padnet.adapter.moe_convert.linear_parts]. A module without a bias keeps none (a bias the
    layer learnt is then dropped)."""
    target, _ = linear_parts(module)
    target.copy_(weight)  # a view: Conv1D's (in, out) storage is written through its transpose
    if module.bias is not None and bias is not None:
        module.bias.copy_(bias)


def find_ffns(model: nn.Module, patterns=FFN_PATTERNS) -> list[FFNSite]:
    """Every FFN of `model` that matches one of `patterns`, in module order (a module shared by several
    layers, as in ALBERT, is listed once)."""
    sites = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for pattern in patterns:
            if len(pattern) == 3:
                up_path, act_path, down_path = pattern
                gate = True  # no gate to check
            elif name:  # a gated block, never the model itself
                gate_path, up_path, down_path, act_path = pattern
                gate = linear_parts(_get(module, gate_path))
            else:
                continue
            up, down = linear_parts(_get(module, up_path)), linear_parts(_get(module, down_path))
            if (
                up is None
                or down is None
                or gate is None
                or _get(module, act_path) is None
                or up[0].shape[0] != down[0].shape[1]
                or down[0].shape[0] != up[0].shape[1]
                or (len(pattern) == 4 and gate[0].shape != up[0].shape)
            ):
                continue
            if len(pattern) == 3:
                sites.append(FFNSite(prefix + up_path, prefix + act_path, prefix + down_path))
            else:
                sites.append(
                    FFNSite(prefix + up_path, prefix + act_path, prefix + down_path, prefix + gate_path, name)
                )
            break
    return sites


def require_ffns(model: nn.Module, patterns=FFN_PATTERNS) -> list[FFNSite]:
    """[`find_ffns`][padnet.adapter.moe_convert.find_ffns], or ConfigError naming the layouts looked for when `model` has none."""
    sites = find_ffns(model, patterns)
    if not sites:
        raise ConfigError(
            f"{type(model).__name__} has no recognisable feed-forward block (two linear maps, "
            "nn.Linear or Conv1D, H -> F -> H, or a gated one, named like "
            f"{', '.join('/'.join(p) for p in patterns)})"
        )
    return sites


def _refuse_transformers_save(*args, **kwargs):
    """Takes the place of transformers' `save_pretrained` on a model holding padnet MoE layers."""
    raise ConfigError(
        "this model holds padnet MoE layers, which transformers' save_pretrained cannot store (the "
        "folder would reload with its experts missing, initialised at random); save the PadModel with "
        "PadModel.save_pretrained or padnet.save_pretrained, and load it with padnet.load_pretrained (a "
        "compressed Mixtral exports to a standard transformers folder: "
        "padnet.training.nlp.transformers_export.export_transformers)"
    )


def guard_transformers_save(model: nn.Module) -> None:
    """Make `model.save_pretrained` (a transformers model's, whose MoE layers padnet replaced) raise ConfigError
    instead of writing a folder that transformers reloads without them; copies of the model keep the guard."""
    if callable(getattr(model, "save_pretrained", None)):
        model.save_pretrained = _refuse_transformers_save


def _set(model: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, value)


def replace_ffns(
    model: nn.Module,
    mode: str = "dynamic",
    num_experts: int = 8,
    top_k: int = 2,
    layers: list[int] | None = None,
    granularity: str = "element",
    patterns=FFN_PATTERNS,
    **options,
) -> nn.Module:
    """Replace the FFN of the chosen layers of `model` with upcycled MoE layers, in place: the surgery
    [`padnet.get_pad_model`][padnet.adapter.model.get_pad_model] runs for MoE methods, in the layers' option names.

    Every expert (and the static parameters of PAD-MoE) starts as a copy of the pretrained FFN, every linear
    with its bias, and the router starts at zero with gates renormalised over the top k, so the converted
    model computes what the dense one does (Komatsuzaki et al. 2023 "Sparse Upcycling"; PAD-Net appendix A).

    Args:
        model: a Hugging Face encoder or decoder (or any model with FFNs matching `patterns`).
        mode: `"dynamic"` (MoE), `"pad"` (PAD-MoE, PAD-Net eq. 3–4; partition it afterwards with
            [`padnet.partition`][padnet.partitioning.imp.partition]) or `"prune"` (MoE-P, PAD-Net Table 4).
        num_experts: E (default 8). top_k: experts per token (default 2).
        layers: indices into the list of FFNs found (default: all).
        granularity: `"element"` or `"neuron"` masks (PAD-MoE / MoE-P).
        patterns: (first linear, activation, second linear) name triples and (gate, up, down, activation)
            quadruples of gated blocks to look for ([`FFN_PATTERNS`][padnet.adapter.moe_convert.FFN_PATTERNS]).
        **options: more [`MoEFeedForward`][padnet.layers.moe.MoEFeedForward] options (`scale_mode`, `noisy`,
            `aux_loss_weight`).

    Returns `model`, whose transformers `save_pretrained` now raises ([`guard_transformers_save`][padnet.adapter.moe_convert.guard_transformers_save]).

    Raises:
        ConfigError: no recognisable FFN, a layer index out of range, bad MoE options.
    """
    sites = require_ffns(model, patterns)
    chosen = list(range(len(sites))) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not -len(sites) <= i < len(sites)]
    if bad or not chosen:
        raise ConfigError(f"MoE layer indices {bad or chosen} out of range: the model has {len(sites)} FFNs")
    for i in sorted({i % len(sites) for i in chosen}):
        site = sites[i]
        up, (w2, b2) = linear_parts(_get(model, site.up)), linear_parts(_get(model, site.down))
        first, gated_up = (up, None) if site.gate is None else (linear_parts(_get(model, site.gate)), up)
        moe = MoEFeedForward.from_weights(
            *first,
            w2,
            b2,
            _get(model, site.activation),
            up=gated_up,
            num_experts=num_experts,
            top_k=top_k,
            mode=mode,
            granularity=granularity,
            **options,
        )
        if site.block is not None:  # a gated block: the MoE layer is the whole block
            _set(model, site.block, moe)
            continue
        _set(model, site.up, moe)
        _set(model, site.activation, nn.Identity())
        _set(model, site.down, nn.Identity())
    guard_transformers_save(model)
    if not getattr(
        model, "_padnet_aux_reset", False
    ):  # one hook per model, whatever the number of conversions
        model.register_forward_pre_hook(reset_aux_losses)
        model._padnet_aux_reset = True
    return model


def compress_experts(
    model: nn.Module,
    mode: str = "pad",
    granularity: str = "element",
    names: list[str] | None = None,
    **options,
) -> list[str]:
    """Replace the banks of experts of a pretrained MoE model (transformers' Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE:
    [`find_expert_banks`][padnet.layers.experts.find_expert_banks]) with
    [`ExpertBank`][padnet.layers.experts.ExpertBank], in place. The model's routers (and Qwen2-MoE's shared
    expert) are kept; Θ̄ starts as the experts' mean
    ([`set_static_by_load`][padnet.adapter.moe_convert.set_static_by_load] re-estimates it from calibration text).

    Args:
        model: the MoE model.
        mode: `"dynamic"`, `"pad"` (PAD compression; partition it afterwards) or `"prune"` (MoE-P).
        granularity: `"element"` or `"neuron"` masks.
        names: the banks to replace (default all).
        **options: `scale_mode` of `"pad"`.

    Returns:
        The names of the replaced banks; the model's transformers `save_pretrained` now raises
            ([`guard_transformers_save`][padnet.adapter.moe_convert.guard_transformers_save]).

    Raises:
        ConfigError: there is no bank to replace, or a name in `names` is not an expert bank.
    """
    found = find_expert_banks(model)
    banks = found if names is None else list(names)
    if not banks:
        raise ConfigError(
            f"{type(model).__name__} has no bank of gated experts (gate_up_proj, down_proj) to compress"
        )
    unknown = [name for name in banks if name not in found]
    if unknown:
        raise ConfigError(f"not an expert bank of {type(model).__name__}: {', '.join(unknown)}")
    for name in banks:
        model.set_submodule(
            name, ExpertBank.from_bank(model.get_submodule(name), mode, granularity, **options)
        )
    guard_transformers_save(model)
    return banks


def _pad_banks(model: nn.Module) -> dict[str, ExpertBank]:
    """The PAD-compressed expert banks of `model` by name (ConfigError when there is none)."""
    banks = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, ExpertBank)
        and isinstance(m.moe, MoEFeedForward)
        and m.moe.neuron_mode.static is not None
    }
    if not banks:
        raise ConfigError("the model has no PAD-compressed expert bank (compress_experts with mode='pad')")
    return banks


def _run(model: nn.Module, batch, forward):
    """`forward(model, batch)`, or by default `model(**batch)` for a dict and `model(batch)` otherwise."""
    if forward is not None:
        return forward(model, batch)
    return model(**batch) if isinstance(batch, dict) else model(batch)


def set_static(bank: ExpertBank, weights: torch.Tensor, bias_weights: torch.Tensor) -> None:
    """Θ̄ of the neuron columns and output biases as [`static_estimate`][padnet.layers.experts.static_estimate]s:
    weights per expert (E,), or per element in the layout of `experts` (E, R, F) and `expert_bias` (E, H)."""
    moe = bank.moe
    bias = moe.expert_bias.detach().reshape(moe.num_experts, *moe.bias_mode.static.shape)
    if bias_weights.dim() > 1:  # per element: in the layout of the static bias
        bias_weights = bias_weights.reshape(bias.shape)
    with torch.no_grad():
        moe.neuron_mode.static.copy_(static_estimate(moe.experts.detach(), weights))
        moe.bias_mode.static.copy_(static_estimate(bias, bias_weights))


@torch.no_grad()
def set_static_by_load(model: nn.Module, batches, forward=None) -> dict[str, torch.Tensor]:
    """Re-estimate Θ̄ of every PAD-compressed [`ExpertBank`][padnet.layers.experts.ExpertBank] of `model` as the
    experts' mean weighted by the router's load: the number of (token, expert) assignments each expert gets on
    `batches` ([`static_estimate`][padnet.layers.experts.static_estimate]). `forward(model, batch)` runs a batch
    (default `model(**batch)` for a dict, `model(batch)` otherwise).

    Returns:
        The loads by bank name.

    Raises:
        ConfigError: the model has no such banks, or the batches route no token to a bank.
    """
    banks = _pad_banks(model)
    loads = {name: torch.zeros(bank.moe.num_experts, dtype=torch.float64) for name, bank in banks.items()}

    def count(name: str, args, kwargs) -> None:  # called as (hidden_states, top_k_index, top_k_weights)
        index = kwargs["top_k_index"] if "top_k_index" in kwargs else args[1]
        loads[name] += torch.bincount(index.reshape(-1).cpu(), minlength=len(loads[name])).double()

    hooks = [
        bank.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: count(name, args, kwargs), with_kwargs=True
        )
        for name, bank in banks.items()
    ]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            _run(model, batch, forward)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for name, bank in banks.items():
        if not float(loads[name].sum()) > 0:
            raise ConfigError(f"the calibration batches routed no token to {name}")
        set_static(bank, loads[name], loads[name])
    return loads


def fisher_information(
    model: nn.Module, tensors: list[torch.Tensor], batches, loss=None
) -> list[torch.Tensor]:
    """The empirical Fisher information of each of `tensors` (parameters of `model`): the squared gradients of the
    loss summed over `batches`, float64, of each tensor's shape. `loss(model, batch) -> 0-d tensor` (default
    `model(**batch).loss` of a dict batch, a causal LM's with labels). Runs in eval mode; parameter `.grad`s are
    left as they were.

    Raises:
        ConfigError: `batches` holds no batch.
    """
    fisher = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                seen += 1
                value = loss(model, batch) if loss is not None else _run(model, batch, None).loss
                for acc, g in zip(fisher, torch.autograd.grad(value, tensors, allow_unused=True)):
                    if g is not None:
                        acc += g.double().square()
    finally:
        model.train(was_training)
    if not seen:
        raise ConfigError("the calibration batches hold no batch")
    return fisher


def set_static_by_fisher(model: nn.Module, batches, loss=None) -> dict[str, torch.Tensor]:
    """Re-estimate Θ̄ of every PAD-compressed [`ExpertBank`][padnet.layers.experts.ExpertBank] of `model` as the
    experts' Fisher-weighted mean, element by element: Θ̄ = Σₑ Fₑ ⊙ Θᵉ / Σₑ Fₑ with Fₑ the squared gradients of
    the loss with respect to expert e's parameters summed over `batches` (the empirical Fisher information; Matena
    & Raffel 2022; D²-MoE's best shared base). An element no batch reaches takes the mean. Run it before the
    partition (every expert element dynamic). Parameter gradients are left as they were.

    Args:
        model: a model with PAD-compressed expert banks.
        batches: calibration batches.
        loss: `loss(model, batch) -> 0-d tensor` (default `model(**batch).loss`, a causal LM's with labels).

    Returns:
        The Fisher information of the experts (E, R, F) by bank name.

    Raises:
        ConfigError: the model has no such banks, or the batches give no gradient to a bank.
    """
    banks = _pad_banks(model)
    names = list(banks)
    tensors = [banks[n].moe.experts for n in names] + [banks[n].moe.expert_bias for n in names]
    information = fisher_information(model, tensors, batches, loss)
    fisher = dict(zip(names, information[: len(names)]))
    fisher_bias = dict(zip(names, information[len(names) :]))
    for name, bank in banks.items():
        if not float(fisher[name].sum()) > 0:
            raise ConfigError(f"the calibration batches give no gradient to {name}")
        set_static(bank, fisher[name], fisher_bias[name])
    return fisher
