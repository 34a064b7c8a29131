"""Layer-local PAD compression of one bank of experts (padnet.adapter.moe_local)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from padnet.adapter.moe_local import (
    BankCalibration,
    partition_bank,
    reconstruction_curvature,
    record_banks,
    set_static_by_curvature,
    set_static_by_least_squares,
)
from padnet.errors import ConfigError
from padnet.layers.experts import ExpertBank, static_estimate


class Bank(nn.Module):
    """A transformers-style bank of gated experts: gate_up_proj (E, 2F, H), down_proj (E, H, F)."""

    def __init__(self, experts=4, hidden=6, inter=5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.gate_up_proj = nn.Parameter(torch.randn(experts, 2 * inter, hidden, generator=g) * 0.5)
        self.down_proj = nn.Parameter(torch.randn(experts, hidden, inter, generator=g) * 0.5)
        self.act_fn = nn.SiLU()

    def forward(self, hidden, index, weights):
        out = torch.zeros_like(hidden)
        inter = self.down_proj.shape[2]
        for slot in range(index.shape[1]):
            for e in range(self.gate_up_proj.shape[0]):
                rows = index[:, slot] == e
                gate, up = (hidden[rows] @ self.gate_up_proj[e].t()).split(inter, dim=1)
                out[rows] += weights[rows, slot, None] * ((self.act_fn(gate) * up) @ self.down_proj[e].t())
        return out


def _routing(tokens=40, experts=4, k=2, hidden=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    index = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)])
    weights = torch.rand(tokens, k, generator=g).softmax(1)
    return x, index, weights


def _calibrated(granularity="element", mode="pad", bank=None):
    bank = bank or Bank()
    x, index, weights = _routing()
    holder = nn.Module()
    holder.experts = bank
    with record_banks(holder, ["experts"]) as recorded, torch.no_grad():
        holder.experts(x, index, weights)
    return ExpertBank.from_bank(bank, mode, granularity), recorded["experts"]


def test_record_banks_keeps_what_reached_each_bank_and_what_it_returned():
    bank, data = _calibrated()
    x, index, weights = _routing()
    assert torch.equal(data.hidden, x) and torch.equal(data.index, index)
    assert torch.allclose(data.target, Bank()(x, index, weights))
    # PAD with every mask element dynamic computes the original bank
    assert torch.allclose(bank(data.hidden, data.index, data.weights), data.target, atol=1e-6)
    holder = nn.Module()
    holder.a, holder.b = Bank(), Bank()
    with record_banks(holder, ["a", "b"]) as recorded:
        holder.a(x, index, weights)
    assert list(recorded) == ["a"]  # a bank no call reached is left out


def test_the_curvature_is_the_diagonal_gauss_newton_of_the_output_error():
    bank, data = _calibrated()
    curvature, bias = reconstruction_curvature(bank, data)

    def output(name):
        return lambda t: torch.func.functional_call(bank, {name: t}, (data.hidden, data.index, data.weights))

    for name, got in (("moe.experts", curvature), ("moe.expert_bias", bias)):
        jacobian = torch.autograd.functional.jacobian(output(name), bank.get_parameter(name).detach())
        expected = jacobian.square().sum((0, 1))  # Σ over tokens and output features of (∂y/∂θ)²
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_layer_local_imp_keeps_exactly_the_neurons_where_the_experts_differ():
    source, g = Bank(), torch.Generator().manual_seed(2)
    with torch.no_grad():  # every expert a copy of expert 0 but in neurons 1 and 3 (F = 5)
        for e in range(1, 4):
            source.gate_up_proj[e] = source.gate_up_proj[0]
            source.down_proj[e] = source.down_proj[0]
        for n in (1, 3):
            for rows in (source.gate_up_proj[:, n], source.gate_up_proj[:, n + 5], source.down_proj[:, :, n]):
                rows += torch.randn(rows.shape, generator=g)
    bank, data = _calibrated("neuron", bank=source)
    ratio = partition_bank(bank, data, 2 / 6, iterations=3)  # 5 neurons + 1 output-bias element: keep 2
    assert ratio == pytest.approx(2 / 6)
    assert bank.moe.neuron_mode.mask.flatten().nonzero().flatten().tolist() == [1, 3]
    # the static neurons are the experts' common values: the compressed bank is exact
    assert torch.allclose(bank(data.hidden, data.index, data.weights), data.target, atol=1e-5)


def test_local_imp_reaches_the_exact_ratio_and_refuses_what_it_cannot_partition():
    bank, data = _calibrated()  # element masks: 20 rows (3H + 2) × 5 neurons, and 6 output-bias elements
    assert partition_bank(bank, data, 0.3, 2) == round(0.3 * 106) / 106
    with pytest.raises(ConfigError, match="dynamic ratio kappa must be in"):
        partition_bank(bank, data, 0.0, 2)
    dynamic, data = _calibrated(mode="dynamic")
    with pytest.raises(ConfigError, match="has no masks to partition"):
        partition_bank(dynamic, data, 0.5, 1)


def test_the_curvature_weighted_static_part_follows_its_formula():
    bank, data = _calibrated()
    curvature, bias = reconstruction_curvature(bank, data)
    set_static_by_curvature(bank, data)
    assert torch.allclose(bank.moe.neuron_mode.static, static_estimate(bank.moe.experts.detach(), curvature))
    with pytest.raises(ConfigError, match="no static part"):
        set_static_by_curvature(_calibrated(mode="prune")[0], data)


def test_the_least_squares_static_part_lowers_the_output_error_and_keeps_the_best():
    bank, data = _calibrated()
    partition_bank(bank, data, 0.2, 2)
    errors = set_static_by_least_squares(bank, data, steps=30)
    final = (
        bank(data.hidden, data.index, data.weights) - data.target
    ).square().sum() / data.target.square().sum()
    assert min(errors) < errors[0] and float(final) == pytest.approx(min(errors), rel=1e-4)
    assert not any(p.requires_grad is False for p in bank.parameters())  # flags restored
    with pytest.raises(ConfigError, match="steps >= 1"):
        set_static_by_least_squares(bank, data, steps=0)


def test_every_static_estimate_reproduces_the_original_with_every_element_dynamic():
    for estimate in (set_static_by_curvature, set_static_by_least_squares):
        bank, data = _calibrated()
        estimate(bank, data)
        assert torch.allclose(bank(data.hidden, data.index, data.weights), data.target, atol=1e-6)


def test_bank_calibration_counts_the_load():
    data = BankCalibration(
        torch.zeros(3, 2), torch.tensor([[0, 1], [0, 2], [0, 1]]), torch.ones(3, 2), torch.zeros(3, 2)
    )
    assert data.load(4).tolist() == [3.0, 2.0, 1.0, 0.0]
    rows, gates = data.routed(1)
    assert len(rows) == 2 and gates.shape == (2, 1)
