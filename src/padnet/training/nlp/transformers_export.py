"""A PAD-compressed Mixtral as a standard transformers model that loads without padnet.

With neuron masks (`granularity="neuron"`) a PAD-MoE layer's static neurons are shared by every expert and its
dynamic neurons form E narrower experts (PAD-Net eq. 4 per expert, [`DeployedMoE`][padnet.layers.moe.DeployedMoE]).
That is exactly transformers' Qwen2-MoE block: a *shared expert* (a gated MLP of the static neurons) added to
routed experts of the dynamic width. Qwen2-MoE scales its shared expert by `sigmoid(shared_expert_gate(x))`; a
zero gate weight gives 1/2, so the shared down projection is doubled. Mixtral renormalises its top-k weights
(`norm_topk_prob=True`) and has no q/k/v bias (`qkv_bias=False`), so the static part's weight is their sum, 1.

Layers whose partition kept different numbers of neurons are padded with zero neurons to one width, the routed
experts' to a multiple of 8 (transformers' grouped expert matmul needs 16-byte strides); a zero neuron adds
exactly 0 (SiLU(0)·0). The exported folder's logits are checked against the padnet model's before
it is written.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from padnet.adapter.model import PadModel
from padnet.errors import ConfigError
from padnet.layers.experts import ExpertBank
from padnet.layers.grouped_experts import split_neurons
from padnet.layers.moe import DeployedMoE

EXPORT_TOLERANCE = 1e-4  # largest relative difference of the exported model's logits from padnet's (float32)
# configuration keys Mixtral and Qwen2-MoE share, with the same meaning
SAME_SETTINGS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "tie_word_embeddings",
    "rope_parameters",
    "attention_dropout",
    "num_experts_per_tok",
    "router_aux_loss_coef",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
)
ROUTED_MULTIPLE = 8  # routed experts' width is padded to a multiple of this many neurons


def check_exportable(model: nn.Module) -> None:
    """ConfigError (one line) unless `model` (or the model a PadModel wraps) is a Mixtral causal LM without a
    sliding window: what [`to_qwen2_moe`][padnet.training.nlp.transformers_export.to_qwen2_moe] expresses exactly."""
    model = model.base_model if isinstance(model, PadModel) else model
    if type(model).__name__ != "MixtralForCausalLM":
        raise ConfigError(
            f"export to transformers handles Mixtral causal LMs compressed by padnet, got {type(model).__name__}"
        )
    if getattr(model.config, "sliding_window", None) is not None:
        raise ConfigError(
            "a Mixtral with a sliding window has no exact Qwen2-MoE form (its window applies per layer)"
        )


def _banks(model: nn.Module) -> list[DeployedMoE]:
    """The deployed expert bank of every decoder layer, in layer order.

    Raises:
        ConfigError: a model that is not a Mixtral causal LM whose every expert bank is padnet's, deployed.
    """
    check_exportable(model)
    banks = []
    for index, layer in enumerate(model.model.layers):
        bank = getattr(layer.mlp, "experts", None)
        if not (isinstance(bank, ExpertBank) and isinstance(bank.moe, DeployedMoE)):
            raise ConfigError(
                f"layer {index}'s experts are not a deployed padnet expert bank: pass the PadModel, or its "
                "merge_and_unload()"
            )
        banks.append(bank.moe)
    return banks


def check_biases(moe: DeployedMoE, index: int) -> None:
    """ConfigError when decoder layer `index`'s deployed bank has biases, which Qwen2-MoE cannot hold."""
    parts = [split_neurons(moe.experts, True)] + (
        [split_neurons(moe.static, True)] if moe.static is not None else []
    )
    if moe.expert_bias.any() or any(p.b_in.any() or p.b_up.any() for p in parts):
        raise ConfigError(
            f"layer {index}'s experts learnt biases, which Qwen2-MoE's experts have no place for: it cannot be "
            "exported exactly"
        )


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Neuron columns (..., R, F) padded with zero neurons to (..., R, width)."""
    return torch.cat([t, t.new_zeros(*t.shape[:-1], width - t.shape[-1])], dim=-1)


def qwen2_moe_config(source, routed: int, shared: int):
    """The Qwen2-MoE configuration of a Mixtral `source` config (without a sliding window:
    [`check_exportable`][padnet.training.nlp.transformers_export.check_exportable]) whose experts keep `routed`
    dynamic neurons and share `shared` static ones."""
    from transformers import Qwen2MoeConfig

    head_dim = getattr(source, "head_dim", None) or source.hidden_size // source.num_attention_heads
    same = {name: getattr(source, name) for name in SAME_SETTINGS}  # what both architectures name alike
    config = Qwen2MoeConfig(
        **same,
        use_sliding_window=False,
        decoder_sparse_step=1,
        moe_intermediate_size=routed,
        shared_expert_intermediate_size=shared,
        num_experts=source.num_local_experts,
        norm_topk_prob=True,
        qkv_bias=False,
    )
    config.head_dim = head_dim
    return config


def export_widths(banks: list[DeployedMoE]) -> tuple[int, int]:
    """(routed, shared): the routed experts' width, the widest layer's dynamic neurons rounded up to a positive
    multiple of `ROUTED_MULTIPLE` (transformers' grouped expert matmul needs 16-byte strides: a multiple of 8
    neurons holds for fp32 and bf16), and the shared expert's, the most static neurons of a layer."""
    widest = max(moe.experts.shape[-1] for moe in banks)
    routed = max(1, -(-widest // ROUTED_MULTIPLE)) * ROUTED_MULTIPLE
    return routed, max(0 if moe.static is None else moe.static.shape[-1] for moe in banks)


def shared_expert_tensors(
    prefix: str, gate: torch.Tensor, moe: DeployedMoE, routed: int, shared: int
) -> dict[str, torch.Tensor]:
    """The tensors of one Qwen2-MoE sparse block (names under `prefix`, e.g. `model.layers.0.mlp.`) holding a
    deployed PAD-MoE bank: the router `gate` (E, H), routed experts padded to `routed` neurons, the shared expert
    of its static neurons padded to `shared`, its down projection doubled (a zero `shared_expert_gate` weight
    gives sigmoid(0) = 1/2). The bank must have no biases ([`check_biases`][padnet.training.nlp.transformers_export.check_biases])."""
    experts = split_neurons(_pad(moe.experts, routed), True)  # w_in, w_up, w_out: (E, H, F_d)
    static = moe.static if moe.static is not None else moe.experts.new_zeros(moe.experts.shape[1], 0)
    kept = split_neurons(_pad(static, shared), True)  # (H, F_s)
    return {
        prefix + "gate.weight": gate.detach(),
        prefix + "experts.gate_up_proj": torch.cat([experts.w_in, experts.w_up], dim=2).transpose(1, 2),
        prefix + "experts.down_proj": experts.w_out,
        prefix + "shared_expert.gate_proj.weight": kept.w_in.t(),
        prefix + "shared_expert.up_proj.weight": kept.w_up.t(),
        prefix + "shared_expert.down_proj.weight": 2.0 * kept.w_out,  # sigmoid(0) = 1/2 undone
        prefix + "shared_expert_gate.weight": moe.experts.new_zeros(1, experts.w_in.shape[-2]),
    }


def to_qwen2_moe(model: nn.Module) -> nn.Module:
    """A transformers `Qwen2MoeForCausalLM` computing what the deployed PAD-compressed Mixtral `model` computes.

    Args:
        model: a [`PadModel`][padnet.adapter.model.PadModel] of a Mixtral causal LM with PAD-MoE or MoE-P expert
            banks (any mask granularity: element masks give full-width routed experts and no shared neurons), or
            its `merge_and_unload()`.

    Returns:
        The Qwen2-MoE model in eval mode, float32 like the source: routed experts (E, 2·F_d, H) / (E, H, F_d),
        shared expert of the F_s static neurons, F_d and F_s the widest layer's (narrower layers padded with zero
        neurons).

    Raises:
        ConfigError: not such a model, experts with learnt biases, a sliding window.
    """
    from transformers import Qwen2MoeForCausalLM

    if isinstance(model, PadModel):
        model = model.merge_and_unload()
    banks = _banks(model)
    for index, moe in enumerate(banks):
        check_biases(moe, index)
    routed, shared = export_widths(banks)
    target = Qwen2MoeForCausalLM(qwen2_moe_config(model.config, routed, shared)).to(model.dtype)
    state = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    for index, moe in enumerate(banks):
        gate = model.model.layers[index].mlp.gate.weight
        state.update(shared_expert_tensors(f"model.layers.{index}.mlp.", gate, moe, routed, shared))
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"the Qwen2-MoE form does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected "
            f"tensors; first: {(missing or unexpected)[0]})"
        )
    return target.eval()


@torch.no_grad()
def export_transformers(
    model: nn.Module, directory: str | Path, tokenizer=None, probe: torch.Tensor | None = None
) -> Path:
    """Write the Qwen2-MoE form ([`to_qwen2_moe`][padnet.training.nlp.transformers_export.to_qwen2_moe]) of a
    PAD-compressed Mixtral to `directory` with transformers' `save_pretrained` (and `tokenizer`'s): a folder that
    `AutoModelForCausalLM.from_pretrained` loads without padnet.

    The logits of both models on `probe` (token ids (B, T); default a fixed random batch) must agree within
    `EXPORT_TOLERANCE` (relative to the largest logit) before anything is written; the folder is written under a
    temporary name and renamed into place.

    Returns:
        `directory`.

    Raises:
        ConfigError: see `to_qwen2_moe`, or logits that disagree (nothing is written).
    """
    source = model.merge_and_unload() if isinstance(model, PadModel) else model
    exported = to_qwen2_moe(source)
    if probe is None:
        probe = torch.randint(
            0, source.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
        )
    reference = source.eval()(input_ids=probe).logits
    error = float((exported(input_ids=probe).logits - reference).abs().max() / reference.abs().max())
    if not error <= EXPORT_TOLERANCE:
        raise ConfigError(
            f"the Qwen2-MoE form's logits differ from padnet's by {error:.1e} (relative): not written"
        )
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty: choose another folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        exported.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if directory.exists():  # empty (checked above)
            directory.rmdir()
        staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory
