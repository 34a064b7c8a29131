"""Model surgery for transformer encoders: find the feed-forward blocks and replace them with MoE layers.

Works on any ``nn.Module`` whose FFN is two linear maps (H → F → H) around an activation, named as in the
Hugging Face models: BERT, RoBERTa, ELECTRA, MiniLM and other BERT-architecture models
(``intermediate.dense`` / ``intermediate.intermediate_act_fn`` / ``output.dense``), ALBERT (``ffn`` /
``activation`` / ``ffn_output``), DistilBERT (``lin1`` / ``activation`` / ``lin2``) and the GPT-2 decoder
(``mlp.c_fc`` / ``mlp.act`` / ``mlp.c_proj``, whose linear maps are transformers' ``Conv1D``: ``x @ W + b`` with W
stored (in, out)). Other layouts can be named with ``patterns=``. The first linear becomes the MoE layer (which outputs H), the activation and the
second linear become ``nn.Identity``, so the residual, dropout and LayerNorm around the FFN are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.moe import MoEFeedForward, reset_aux_losses

# (first linear, activation, second linear), relative to the module that holds the FFN
FFN_PATTERNS: tuple[tuple[str, str, str], ...] = (
    ("intermediate.dense", "intermediate.intermediate_act_fn", "output.dense"),
    ("ffn", "activation", "ffn_output"),
    ("lin1", "activation", "lin2"),
    ("mlp.c_fc", "mlp.act", "mlp.c_proj"),
)


@dataclass(frozen=True)
class FFNSite:
    """One feed-forward block: the qualified names of its two linears and its activation."""

    up: str
    activation: str
    down: str


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def linear_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight (out, in), bias or None)`` of an ``nn.Linear`` or of transformers' ``Conv1D`` (which stores its
    weight (in, out) and computes ``x @ W + b``), as views; None for any other module."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2 \
            and getattr(module, "nf", None) == weight.shape[1]:
        return weight.t(), module.bias
    return None


def find_ffns(model: nn.Module, patterns=FFN_PATTERNS) -> list[FFNSite]:
    """Every FFN of ``model`` that matches one of ``patterns``, in module order (a module shared by several
    layers, as in ALBERT, is listed once)."""
    sites = []
    for name, module in model.named_modules():
        for up_path, act_path, down_path in patterns:
            up, down = linear_parts(_get(module, up_path)), linear_parts(_get(module, down_path))
            if (up is not None and down is not None and _get(module, act_path) is not None
                    and up[0].shape[0] == down[0].shape[1] and down[0].shape[0] == up[0].shape[1]):
                prefix = f"{name}." if name else ""
                sites.append(FFNSite(prefix + up_path, prefix + act_path, prefix + down_path))
                break
    return sites


def require_ffns(model: nn.Module, patterns=FFN_PATTERNS) -> list[FFNSite]:
    """:func:`find_ffns`, or ConfigError naming the layouts looked for when ``model`` has none."""
    sites = find_ffns(model, patterns)
    if not sites:
        raise ConfigError(f"{type(model).__name__} has no recognisable feed-forward block (two linear maps, "
                          f"nn.Linear or Conv1D, H -> F -> H named like {', '.join('/'.join(p) for p in patterns)})")
    return sites


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
    """Replace the FFN of the chosen layers of ``model`` with upcycled MoE layers, in place: the surgery
    :func:`padnet.get_pad_model` runs for MoE methods, in the layers' option names.

    Every expert (and the static parameters of PAD-MoE) starts as a copy of the pretrained FFN, both linears
    with their biases, and the router starts at zero with gates renormalised over the top k, so the converted
    model computes what the dense one does (Komatsuzaki et al. 2023 "Sparse Upcycling"; PAD-Net appendix A).

    Args:
        model: a Hugging Face encoder (or any model with FFNs matching ``patterns``).
        mode: ``"dynamic"`` (MoE), ``"pad"`` (PAD-MoE, PAD-Net eq. 3–4; partition it afterwards with
            :func:`padnet.partition`) or ``"prune"`` (MoE-P, PAD-Net Table 4).
        num_experts: E (default 8). top_k: experts per token (default 2).
        layers: indices into the list of FFNs found (default: all).
        granularity: ``"element"`` or ``"neuron"`` masks (PAD-MoE / MoE-P).
        patterns: (first linear, activation, second linear) name triples to look for.
        **options: more :class:`~padnet.layers.moe.MoEFeedForward` options (``scale_mode``, ``noisy``,
            ``aux_loss_weight``).

    Returns ``model``.

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
        (w1, b1), (w2, b2) = linear_parts(_get(model, site.up)), linear_parts(_get(model, site.down))
        moe = MoEFeedForward.from_weights(w1, b1, w2, b2, _get(model, site.activation), num_experts=num_experts,
                                          top_k=top_k, mode=mode, granularity=granularity, **options)
        _set(model, site.up, moe)
        _set(model, site.activation, nn.Identity())
        _set(model, site.down, nn.Identity())
    if not getattr(model, "_padnet_aux_reset", False):  # one hook per model, whatever the number of conversions
        model.register_forward_pre_hook(reset_aux_losses)
        model._padnet_aux_reset = True
    return model
