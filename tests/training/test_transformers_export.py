"""A PAD-compressed Mixtral exported as a transformers Qwen2-MoE loads without padnet and computes what padnet's
deployed form computes."""

from __future__ import annotations

import os

import pytest
import torch

import padnet
from hf_folders import run_without_padnet, tiny_moe_folder
from padnet.errors import ConfigError
from padnet.training.nlp.transformers_export import EXPORT_TOLERANCE, export_transformers, to_qwen2_moe

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return tiny_moe_folder(tmp_path_factory.mktemp("mixtral")) / "model"


def _compressed(folder, granularity: str, kappa: float, scope: str = "global"):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    pad = padnet.get_pad_model(
        model, padnet.PadConfig(method="pad-moe", granularity=granularity, kappa=kappa)
    )
    padnet.partition(pad.base_model, kappa, "random", scope=scope)
    return pad


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_an_exported_folder_loads_without_padnet_with_padnet_logits_and_tokens(mixtral, tmp_path):
    pad = _compressed(mixtral, "neuron", 0.5)  # a global partition: layers keep different widths
    tokenizer = transformers.AutoTokenizer.from_pretrained(mixtral)
    folder = export_transformers(pad, tmp_path / "exported", tokenizer)
    deployed = pad.merge_and_unload()
    ids = torch.randint(0, 30522, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = deployed(input_ids=ids).logits
    expected = deployed.generate(ids, max_new_tokens=4, do_sample=False)
    got = run_without_padnet(folder, ids, tmp_path / "out.safetensors")
    assert _relative(got["logits"], reference) <= EXPORT_TOLERANCE
    assert torch.equal(got["generated"], expected)
    assert (folder / "tokenizer.json").exists() or (folder / "vocab.txt").exists()


def test_expert_bytes_follow_the_dynamic_ratio(mixtral):
    """Neuron masks at κ = 1/3 of F = 24: 8 routed neurons per expert and 16 shared ones, so the experts keep
    ((1 − κ) + κE)/E of their parameters."""
    pad = _compressed(mixtral, "neuron", 1 / 3, scope="local")
    exported = to_qwen2_moe(pad)
    config, source = exported.config, pad.base_model.config
    assert (config.moe_intermediate_size, config.shared_expert_intermediate_size) == (8, 16)
    block = exported.model.layers[0].mlp
    kept = sum(p.numel() for p in (*block.experts.parameters(), *block.shared_expert.parameters()))
    experts = source.num_local_experts
    original = experts * 3 * source.hidden_size * source.intermediate_size
    assert kept / original == pytest.approx(((1 - 1 / 3) + experts / 3) / experts)


def test_element_masks_export_full_width_experts_exactly(mixtral):
    pad = _compressed(mixtral, "element", 0.5)
    exported = to_qwen2_moe(pad)
    assert exported.config.shared_expert_intermediate_size == 0
    ids = torch.randint(0, 30522, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _relative(exported(input_ids=ids).logits, pad.merge_and_unload()(input_ids=ids).logits) <= 1e-5


def test_what_cannot_be_exported_is_refused_in_one_line(mixtral, tmp_path):
    pad = _compressed(mixtral, "neuron", 0.5)
    with torch.no_grad():
        pad.base_model.model.layers[1].mlp.experts.moe.expert_bias.add_(0.1)  # experts that learnt biases
    with pytest.raises(ConfigError, match="layer 1's experts learnt biases"):
        to_qwen2_moe(pad)
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ConfigError, match="handles Mixtral causal LMs compressed by padnet, got Bert"):
        to_qwen2_moe(bert)
    plain = transformers.AutoModelForCausalLM.from_pretrained(mixtral)
    with pytest.raises(ConfigError, match="layer 0's experts are not a deployed padnet expert bank"):
        to_qwen2_moe(plain)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        export_transformers(_compressed(mixtral, "neuron", 0.5), tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
