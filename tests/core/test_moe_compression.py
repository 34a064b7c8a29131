"""PAD compression of pretrained MoE language models (transformers' Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE):
the bank of experts swapped for padnet's, κ = 1 and κ = 0 exactly, partition, deploy, save and load."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from moe_checks import assert_round_trip

import padnet
from hf_folders import tiny_moe_lm
from padnet.adapter.moe_convert import compress_experts, set_static_by_fisher, set_static_by_load
from padnet.errors import ConfigError
from padnet.layers.experts import ExpertBank, find_expert_banks, static_estimate
from padnet.layers.moe import DeployedMoE, MoEFeedForward

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

IDS = torch.randint(3, 60, (3, 9), generator=torch.Generator().manual_seed(0))
FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


def _banks(model) -> list[ExpertBank]:
    return [m for m in model.modules() if isinstance(m, ExpertBank)]


@pytest.mark.parametrize("family", FAMILIES)
def test_compressing_every_expert_bank_keeps_the_model_at_kappa_one(family):
    """Before partition every mask element is dynamic and λs = λd = 1: the model computes what it did, for MoE,
    PAD-MoE and MoE-P, and generates the same tokens."""
    dense = tiny_moe_lm(family)
    ref = dense(input_ids=IDS).logits
    greedy = dense.generate(IDS, max_new_tokens=5, do_sample=False)
    assert find_expert_banks(dense) == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    for method in ("moe", "pad-moe", "moe-p"):
        pad = padnet.get_pad_model(copy.deepcopy(dense), method=method)
        assert pad.converted == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
        model = pad.base_model.eval()
        assert len(_banks(model)) == 2 and not find_expert_banks(model)
        torch.testing.assert_close(model(input_ids=IDS).logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(model.generate(IDS, max_new_tokens=5, do_sample=False), greedy), method


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_kappa_zero_gives_every_expert_the_shared_static_part(family):
    pad = padnet.get_pad_model(tiny_moe_lm(family), method="pad-moe")
    for bank in _banks(pad.base_model):
        moe = bank.moe
        with torch.no_grad():
            moe.neuron_mode.mask.zero_()
            moe.bias_mode.mask.zero_()
        experts, bias, static = moe.computational_parameters()
        assert static is None
        lam_s, _ = moe.scale()
        for e in range(moe.num_experts):
            torch.testing.assert_close(experts[e], lam_s * moe.neuron_mode.static)
        torch.testing.assert_close(
            moe.neuron_mode.static, moe.experts.mean(0)
        )  # the default estimate: the mean
        assert not bias.any()


def test_neuron_masks_run_static_neurons_once_weighted_by_the_summed_gates():
    """Qwen2-MoE does not renormalise its top-k weights: the shared static FFN is scaled by their sum, so the
    structured form equals the merged one."""
    pad = padnet.get_pad_model(tiny_moe_lm("qwen2_moe"), method="pad-moe", granularity="neuron")
    for i, bank in enumerate(_banks(pad.base_model)):
        with torch.no_grad():
            bank.moe.neuron_mode.mask.copy_((torch.arange(12) % 3 == i).float().reshape(1, 1, 12))
            bank.moe.scale.phi.fill_(0.3)
    model = pad.base_model.eval()
    structured = model(input_ids=IDS).logits
    assert all(
        bank.moe.structured and bank.moe.computational_parameters()[2] is not None for bank in _banks(model)
    )
    for bank in _banks(model):
        bank.moe.structured = False
    torch.testing.assert_close(model(input_ids=IDS).logits, structured, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_partition_on_calibration_text_then_deploy_save_and_load_give_the_same_logits(tmp_path, granularity):
    pad = padnet.get_pad_model(tiny_moe_lm("mixtral"), method="pad-moe", kappa=0.3, granularity=granularity)
    batches = [{"input_ids": IDS, "labels": IDS}] * 2
    report = pad.partition(batches, partition="imp", partition_iterations=2)
    assert report.dynamic_ratio == pytest.approx(0.3, abs=0.02)
    assert_round_trip(pad, tmp_path / "training", IDS)
    assert all(isinstance(bank.moe, DeployedMoE) for bank in _banks(padnet.deploy(pad.base_model)))
    # the deployed form: the shared static part once and each expert's dynamic values; loads merged
    pad.save_pretrained(tmp_path / "deployed", form="deployed")
    loaded = padnet.load_pretrained(tmp_path / "deployed", base_model=tiny_moe_lm("mixtral"))
    assert all(isinstance(bank.moe, DeployedMoE) for bank in _banks(loaded))
    torch.testing.assert_close(
        loaded(input_ids=IDS).logits, pad.eval()(input_ids=IDS).logits, atol=1e-5, rtol=1e-5
    )


def test_the_static_part_can_follow_the_routers_load():
    pad = padnet.get_pad_model(tiny_moe_lm("olmoe"), method="pad-moe")
    loads = set_static_by_load(pad.base_model, [{"input_ids": IDS}])
    assert sum(float(v.sum()) for v in loads.values()) == 2 * IDS.numel() * 2  # 2 layers, top-2
    for name, load in loads.items():
        moe = pad.base_model.get_submodule(name).moe
        expected = sum(load[e] * moe.experts[e].double() for e in range(4)) / load.sum()
        torch.testing.assert_close(moe.neuron_mode.static.double(), expected, rtol=1e-5, atol=1e-6)


def test_the_static_part_can_be_the_fisher_weighted_mean_of_the_experts():
    """Θ̄ = Σₑ Fₑ ⊙ Θᵉ / Σₑ Fₑ element by element, Fₑ the squared loss gradients summed over the batches; the
    model's output is untouched while every element is dynamic (κ = 1), and parameter gradients stay unset."""
    pad = padnet.get_pad_model(tiny_moe_lm("mixtral"), method="pad-moe", granularity="neuron")
    batches = [{"input_ids": IDS, "labels": IDS}] * 2
    before = pad.eval()(input_ids=IDS).logits
    fisher = set_static_by_fisher(pad.base_model, batches)
    assert all(p.grad is None for p in pad.parameters())
    torch.testing.assert_close(pad(input_ids=IDS).logits, before)
    for name, information in fisher.items():
        moe = pad.base_model.get_submodule(name).moe
        experts = moe.experts.detach().double()
        expected = (information * experts).sum(0) / information.sum(0)
        expected = torch.where(information.sum(0) > 0, expected, experts.mean(0))
        torch.testing.assert_close(moe.neuron_mode.static.double(), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(expected, experts.mean(0))  # not the plain mean


def test_element_weights_fall_back_to_the_mean_where_they_are_all_zero():
    experts = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    weights = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(static_estimate(experts, weights), torch.tensor([2.5, 4.0]))
    with pytest.raises(ConfigError, match="of shape"):
        static_estimate(experts, torch.ones(3))


def test_bad_compression_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="no bank of gated experts"):
        compress_experts(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="not a bank of gated experts"):
        ExpertBank.from_bank(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="non-negative"):
        static_estimate(torch.ones(3, 2), torch.tensor([1.0, -1.0, 1.0]))
    moe = MoEFeedForward(4, 6, 2, router=False)
    with pytest.raises(ConfigError, match="no router of its own"):
        moe(torch.randn(3, 4))
    with pytest.raises(ConfigError, match="no PAD-compressed expert bank"):
        set_static_by_load(torch.nn.Linear(2, 2), [])
    with pytest.raises(ConfigError, match="not an expert bank"):
        compress_experts(tiny_moe_lm("mixtral"), names=["model.layers.0.mlp"])
    with pytest.raises(ConfigError, match="selects none of the expert banks"):
        padnet.get_pad_model(tiny_moe_lm("mixtral"), method="pad-moe", target_modules=["*.attn"])


def test_the_saved_static_part_is_the_experts_mean_where_it_takes_no_part(tmp_path):
    """The folder stores Θ̄ only at static positions; at dynamic ones it reads back as the experts' mean."""
    pad = padnet.get_pad_model(tiny_moe_lm("mixtral"), method="pad-moe", kappa=0.5)
    pad.partition([{"input_ids": IDS, "labels": IDS}], partition="mp")
    pad.save_pretrained(tmp_path, full=True)
    loaded = padnet.load_pretrained(tmp_path)
    for before, after in zip(_banks(pad.base_model), _banks(loaded.base_model)):
        mask = before.moe.neuron_mode.mask[0].bool()
        torch.testing.assert_close(after.moe.neuron_mode.static[~mask], before.moe.neuron_mode.static[~mask])
        torch.testing.assert_close(after.moe.neuron_mode.static[mask], before.moe.experts.mean(0)[mask])


def test_transformers_save_pretrained_of_a_model_with_padnet_experts_is_refused_before_writing(tmp_path):
    """transformers would write the padnet banks under names it does not know and reload the model with its experts
    missing (initialised at random, with a warning only): its save_pretrained raises instead, on the converted
    model and on its merged copy, and padnet's own save_pretrained still works."""
    pad = padnet.get_pad_model(tiny_moe_lm("mixtral"), method="pad-moe", kappa=0.3)
    pad.partition([{"input_ids": IDS, "labels": IDS}], partition="imp", partition_iterations=1)
    bert = transformers.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    upcycled = padnet.get_pad_model(transformers.BertModel(bert), method="moe", num_experts=2).base_model
    for model in (pad.base_model, pad.merge_and_unload(), upcycled):
        with pytest.raises(
            ConfigError,
            match=r"^this model holds padnet MoE layers, which transformers' "
            r"save_pretrained cannot store .* save the PadModel with "
            r"PadModel.save_pretrained or padnet.save_pretrained",
        ):
            model.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    loaded = padnet.load_pretrained(pad.save_pretrained(tmp_path / "padnet", full=True))
    torch.testing.assert_close(
        loaded.base_model.eval()(input_ids=IDS).logits, pad.eval()(input_ids=IDS).logits
    )
