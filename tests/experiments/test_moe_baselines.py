"""The MoE compression baselines (NAEE pruning, HC-SMoE merging, D²-MoE deltas) on a tiny Mixtral, and the
budget helpers that put them at equal storage with PAD."""

from __future__ import annotations

import pytest
import torch
from scipy.cluster.hierarchy import cut_tree, linkage
from transformers import MixtralConfig, MixtralForCausalLM

from padnet.errors import ConfigError
from padnet.experiments.moe_baselines import (
    keep_for_budget,
    merge_clusters,
    pad_kappa_for_budget,
    prune_experts,
    rank_for_budget,
    router_statistics,
    svd_delta_bytes,
    svd_deltas,
    unique_expert_bytes,
)

HIDDEN, INTER, LAYERS, VOCAB, TOKENS = 32, 64, 2, 100, 16
BANK = "model.layers.0.mlp.experts"


def tiny_mixtral(num_experts: int = 4, top_k: int = 2, seed: int = 0) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=TOKENS,
    )
    return MixtralForCausalLM(config).eval()


def calibration(count: int = 2, seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (2, TOKENS), generator=generator)} for _ in range(count)]


def logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**batch).logits for batch in batches])


def steer(model, layer: int, favoured: list[int]) -> None:
    """Make the router of `layer` pick only the `favoured` experts: every token's embedding gets a large
    coordinate 0 (positive after every norm), which the favoured experts' router rows weigh by +5, the others
    by −5."""
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        router = model.model.layers[layer].mlp.gate.weight
        router[:, 0] = -5.0
        router[favoured, 0] = 5.0


def bank(model, layer: int = 0):
    return model.model.layers[layer].mlp.experts


def original_bytes(num_experts: int) -> int:
    return LAYERS * num_experts * 3 * HIDDEN * INTER * 4  # float32


def test_router_statistics_count_every_top_k_assignment_and_its_weight():
    model, batches = tiny_mixtral(top_k=2), calibration()
    steer(model, 0, [1, 3])
    stats = router_statistics(model, batches)
    tokens = 2 * 2 * TOKENS
    assert set(stats.frequency) == set(stats.weight) == {BANK, "model.layers.1.mlp.experts"}
    for name in stats.frequency:
        assert stats.frequency[name].dtype == torch.float64 and stats.frequency[name].shape == (4,)
        assert float(stats.frequency[name].sum()) == tokens * 2  # top-2 of every token
        assert float(stats.weight[name].sum()) == pytest.approx(tokens)  # renormalised to sum 1 per token
    assert stats.frequency[BANK].tolist() == [0, tokens, 0, tokens]
    assert model.training is False


def test_pruning_every_expert_changes_nothing():
    model, batches = tiny_mixtral(), calibration()
    before = logits(model, batches)
    kept = prune_experts(model, 4, batches)
    assert kept == {BANK: [0, 1, 2, 3], "model.layers.1.mlp.experts": [0, 1, 2, 3]}
    assert torch.allclose(logits(model, batches), before, atol=1e-6)
    assert unique_expert_bytes(model) == original_bytes(4)


def test_pruning_keeps_the_experts_the_router_uses_and_drops_unused_ones_exactly():
    model, batches = tiny_mixtral(), calibration()
    steer(model, 0, [0, 2])
    steer(model, 1, [1, 3])
    before = logits(model, batches)
    kept = prune_experts(model, 2, batches)
    assert kept == {BANK: [0, 2], "model.layers.1.mlp.experts": [1, 3]}
    for layer in range(LAYERS):
        block = model.model.layers[layer].mlp
        assert block.experts.gate_up_proj.shape == (2, 2 * INTER, HIDDEN)
        assert block.experts.down_proj.shape == (2, HIDDEN, INTER)
        assert block.gate.weight.shape == (2, HIDDEN)
        assert block.gate.num_experts == block.experts.num_experts == 2 and block.gate.top_k == 2
    # the dropped experts got no token, so the model computes what it did
    assert torch.allclose(logits(model, batches), before, atol=1e-5)
    assert unique_expert_bytes(model) == original_bytes(4) * 2 // 4


def _hand_block(x, router, gate_up, down, top_k):
    """A Mixtral MoE block written out: softmax router, top-k renormalised, SiLU-gated experts."""
    probs = torch.softmax(x @ router.T, dim=-1)
    top, index = probs.topk(top_k, dim=-1)
    top = top / top.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for token in range(len(x)):
        for weight, e in zip(top[token], index[token]):
            gate, up = (gate_up[e] @ x[token]).chunk(2)
            out[token] += weight * (down[e] @ (torch.nn.functional.silu(gate) * up))
    return out


def test_a_pruned_block_routes_among_the_kept_experts_only():
    model, batches = tiny_mixtral(num_experts=8), calibration()
    weight = router_statistics(model, batches).weight[BANK]
    block = model.model.layers[0].mlp
    router, gate_up, down = (t.detach().clone() for t in (block.gate.weight, *block.experts.parameters()))
    kept = prune_experts(model, 5, batches)[BANK]
    assert kept == sorted(weight.argsort(descending=True)[:5].tolist())
    x = torch.randn(7, HIDDEN)
    with torch.no_grad():
        got = block(x[None])[0]
    expected = _hand_block(x, router[kept], gate_up[kept], down[kept], top_k=2)
    assert torch.allclose(got, expected, atol=1e-6)
    assert logits(model, batches).isfinite().all()
    assert unique_expert_bytes(model) == original_bytes(8) * 5 // 8


def test_pruning_by_frequency_and_bad_arguments():
    model, batches = tiny_mixtral(num_experts=8), calibration()
    frequency = router_statistics(model, batches).frequency
    kept = prune_experts(model, 3, batches, criterion="frequency")
    for name, experts in kept.items():
        assert frequency[name][experts].min() >= frequency[name].sort(descending=True).values[2]
    prune_experts(model, 1, batches)  # fewer experts than the router's top 2
    assert model.model.layers[0].mlp.gate.top_k == 1 and logits(model, batches).isfinite().all()
    with pytest.raises(ConfigError, match=r"^keep must be an integer in \[1, 1\], got 0$"):
        prune_experts(model, 0, batches)
    with pytest.raises(ConfigError, match="^unknown criterion 'load'; choose from weight, frequency$"):
        prune_experts(model, 1, batches, criterion="load")
    with pytest.raises(ConfigError, match="^the calibration batches hold no batch$"):
        prune_experts(model, 1, [])


def test_merging_into_as_many_clusters_as_experts_changes_nothing():
    model, batches = tiny_mixtral(), calibration()
    before = logits(model, batches)
    groups = merge_clusters(model, 4, batches)
    assert groups[BANK] == [[0], [1], [2], [3]]
    assert torch.equal(logits(model, batches), before)
    assert unique_expert_bytes(model) == original_bytes(4)


def test_one_cluster_is_the_frequency_weighted_mean_of_all_experts():
    model, batches = tiny_mixtral(), calibration()
    frequency = router_statistics(model, batches).frequency
    originals = {
        layer: [p.detach().double().clone() for p in bank(model, layer).parameters()] for layer in range(2)
    }
    groups = merge_clusters(model, 1, batches)
    assert groups[BANK] == [[0, 1, 2, 3]]
    for layer, params in originals.items():
        f = frequency[f"model.layers.{layer}.mlp.experts"]
        for new, old in zip(bank(model, layer).parameters(), params):
            mean = (f[:, None, None] * old).sum(0) / f.sum()
            assert torch.allclose(new.detach().double(), mean.expand_as(old), atol=1e-7)
    assert unique_expert_bytes(model) == original_bytes(4) // 4


def _average_linkage_groups(model, batches, layer: int, clusters: int) -> list[list[int]]:
    """HC-SMoE's clusters written out: every expert's mean output on all tokens reaching the layer."""
    block, inputs = model.model.layers[layer].mlp, []
    hook = block.register_forward_pre_hook(lambda module, args: inputs.append(args[0].reshape(-1, HIDDEN)))
    logits(model, batches)
    hook.remove()
    x = torch.cat(inputs)
    features = []
    for gate_up, down in zip(block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()):
        gate, up = (x @ gate_up.T).chunk(2, dim=-1)
        features.append((torch.nn.functional.silu(gate) * up @ down.T).mean(0))
    tree = linkage(torch.stack(features).double().numpy(), method="average", metric="euclidean")
    labels = cut_tree(tree, n_clusters=clusters)[:, 0].tolist()
    return sorted([[e for e, label in enumerate(labels) if label == c] for c in set(labels)])


def test_clusters_are_average_linkage_of_the_experts_mean_outputs():
    # 5 of 8 experts: single, complete and Ward linkage would group them differently for this seed
    model, batches = tiny_mixtral(num_experts=8), calibration()
    expected = [_average_linkage_groups(model, batches, layer, 5) for layer in range(LAYERS)]
    groups = merge_clusters(model, 5, batches)
    assert [groups[f"model.layers.{layer}.mlp.experts"] for layer in range(LAYERS)] == expected
    assert unique_expert_bytes(model) == original_bytes(8) * 5 // 8


def test_clusters_group_similar_experts_and_an_unrouted_group_takes_the_plain_mean():
    model, batches = tiny_mixtral(top_k=1), calibration()
    experts = bank(model, 0)
    with torch.no_grad():  # near-duplicate pairs {0, 3} and {1, 2}
        for param in experts.parameters():
            param[3] = param[0] + 1e-4 * torch.randn_like(param[0])
            param[2] = param[1] + 1e-4 * torch.randn_like(param[1])
    steer(model, 0, [0, 3])  # only 0 and 3 get tokens
    frequency = router_statistics(model, batches).frequency[BANK]
    assert frequency[0] > 0 and frequency[3] > 0 and frequency[0] != frequency[3]
    assert frequency[1] == frequency[2] == 0
    old = [p.detach().double().clone() for p in experts.parameters()]
    groups = merge_clusters(model, 2, batches)
    assert groups[BANK] == [[0, 3], [1, 2]]
    for new, param in zip(experts.parameters(), old):
        weighted = (frequency[0] * param[0] + frequency[3] * param[3]) / (frequency[0] + frequency[3])
        for e in (0, 3):
            assert torch.allclose(new[e].detach().double(), weighted, atol=1e-7)
        for e in (1, 2):
            assert torch.allclose(new[e].detach().double(), (param[1] + param[2]) / 2, atol=1e-7)
    assert unique_expert_bytes(model) == original_bytes(4) // 2
    with pytest.raises(ConfigError, match=r"^clusters must be an integer in \[1, 4\], got 5$"):
        merge_clusters(model, 5, batches)


def test_full_rank_deltas_reproduce_the_experts():
    model, batches = tiny_mixtral(), calibration()
    old = [p.detach().clone() for layer in range(LAYERS) for p in bank(model, layer).parameters()]
    before = logits(model, batches)
    errors = svd_deltas(model, min(HIDDEN, INTER), batches)
    assert set(errors) == {BANK, "model.layers.1.mlp.experts"} and max(errors.values()) < 1e-6
    new = [p.detach() for layer in range(LAYERS) for p in bank(model, layer).parameters()]
    for got, expected in zip(new, old):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert torch.allclose(logits(model, batches), before, atol=1e-5)


def test_rank_zero_with_the_mean_base_makes_every_expert_the_plain_mean():
    model = tiny_mixtral()
    old = [p.detach().double().clone() for p in bank(model).parameters()]
    errors = svd_deltas(model, 0, None, base="mean")
    squared = total = 0.0
    for new, param in zip(bank(model).parameters(), old):
        mean = param.mean(0).expand_as(param)
        assert torch.allclose(new.detach().double(), mean, atol=1e-7)
        squared += float((param - mean).square().sum())
        total += float(param.square().sum())
    assert errors[BANK] == pytest.approx((squared / total) ** 0.5, rel=1e-5)


def test_each_delta_is_truncated_to_the_rank_per_matrix():
    model = tiny_mixtral()
    old = [p.detach().double().clone() for p in bank(model).parameters()]
    svd_deltas(model, 3, None, base="mean")
    gate_up, down = (p.detach().double() for p in bank(model).parameters())
    for e in range(4):
        deltas = (gate_up - old[0].mean(0))[e].split(INTER), ((down - old[1].mean(0))[e],)
        for delta in (*deltas[0], *deltas[1]):
            assert int(torch.linalg.matrix_rank(delta, atol=1e-6)) == 3


def _hand_fisher_mean(model, batches, param) -> torch.Tensor:
    fisher = torch.zeros_like(param, dtype=torch.float64)
    for batch in batches:
        loss = model(**batch, labels=batch["input_ids"]).loss
        (grad,) = torch.autograd.grad(loss, [param])
        fisher += grad.double().square()
    total = fisher.sum(0)
    assert bool((total == 0).any()) and bool((total > 0).any())  # both cases of the base are exercised
    weighted = (fisher * param.detach().double()).sum(0) / total.clamp_min(1e-300)
    return torch.where(total > 0, weighted, param.detach().double().mean(0))


def test_rank_zero_with_the_fisher_base_makes_every_expert_the_fisher_weighted_mean():
    model, batches = tiny_mixtral(), calibration()
    experts = bank(model)
    with torch.no_grad():  # a dead neuron 0: its down_proj column gets no gradient in any expert
        experts.gate_up_proj[:, [0, INTER]] = 0.0
    expected = [_hand_fisher_mean(model, batches, p) for p in experts.parameters()]
    assert not torch.allclose(expected[1], experts.down_proj.detach().double().mean(0), atol=1e-5)
    svd_deltas(model, 0, batches)
    for new, base in zip(experts.parameters(), expected):
        assert torch.allclose(new.detach().double(), base.expand_as(new), atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_svd_deltas_refuse_bad_arguments():
    model, batches = tiny_mixtral(), calibration()
    with pytest.raises(ConfigError, match=r"^rank must be an integer in \[0, 32\], got 33$"):
        svd_deltas(model, 33, batches)
    with pytest.raises(ConfigError, match="^unknown base 'median'; choose from fisher, mean$"):
        svd_deltas(model, 2, batches, base="median")
    with pytest.raises(ConfigError, match="^the calibration batches hold no batch$"):
        svd_deltas(model, 2, [])
    with pytest.raises(ConfigError, match="^Linear has no bank of experts"):
        svd_deltas(torch.nn.Linear(2, 2), 0, None, base="mean")


def test_budget_helpers_give_each_methods_parameter():
    assert [keep_for_budget(b, 8) for b in (1.0, 0.5, 0.3, 0.01)] == [8, 4, 2, 1]
    # E = 4, H = 32, F = 64: rank r stores 1/4 + 0.046875 r of the original
    assert [rank_for_budget(b, 4, 32, 64) for b in (1.0, 0.5, 0.4375, 0.2)] == [16, 5, 4, 0]
    assert svd_delta_bytes(4, 32, 64, 5, 4, 2) == 2 * 4 * 3 * (32 * 64 + 4 * 5 * 96)
    for budget in (0.3, 0.5, 0.77, 1.0):
        rank = rank_for_budget(budget, 4, 32, 64)
        assert svd_delta_bytes(4, 32, 64, rank, 2, 1) <= budget * 4 * 3 * 32 * 64 * 2
        assert svd_delta_bytes(4, 32, 64, rank + 1, 2, 1) > budget * 4 * 3 * 32 * 64 * 2
    assert pad_kappa_for_budget(0.5, 8) == pytest.approx(3 / 7)
    assert pad_kappa_for_budget(1.0, 8) == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: keep_for_budget(0, 8), "budget must be a fraction in (0, 1], got 0"),
        (lambda: keep_for_budget(0.5, 0), "num_experts must be an integer >= 1, got 0"),
        (lambda: rank_for_budget(1.5, 4, 32, 64), "budget must be a fraction in (0, 1], got 1.5"),
        (lambda: rank_for_budget(0.5, 4, 32, 0), "inter must be an integer >= 1, got 0"),
        (lambda: pad_kappa_for_budget(0.125, 8), "PAD needs a budget in (1/8, 1], got 0.125"),
        (lambda: pad_kappa_for_budget(1.5, 8), "PAD needs a budget in (1/8, 1], got 1.5"),
        (lambda: pad_kappa_for_budget(1.0, 1), "PAD needs a budget in (1/1, 1], got 1.0"),
        (lambda: svd_delta_bytes(4, 32, 64, 33, 2, 1), "rank must be an integer in [0, 32], got 33"),
    ],
)
def test_budget_helpers_refuse_bad_arguments(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message
