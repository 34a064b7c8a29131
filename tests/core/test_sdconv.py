"""SD-Conv (paper 002 eq. 2–8): threshold masks with a straight-through estimator, budget loss, sparsity
statistics, accounting and the sparse deployed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from padnet import count_flops, count_parameters, create_model, deploy, load_pretrained, save_pretrained
from padnet.errors import ConfigError
from padnet.layers import DynamicConv2d
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.sdconv import (
    SparseDynamicConv2d,
    SparsitySchedule,
    budget_loss,
    clamp_thresholds,
    sparse_layers,
    sparsity_report,
)

torch.set_num_threads(1)


def _layer(strategy="different", threshold=0.1, seed=0, **kw):
    torch.manual_seed(seed)
    layer = SparseDynamicConv2d(
        4, 6, 3, padding=1, num_kernels=3, temperature=1.0, mask_strategy=strategy, **kw
    )
    with torch.no_grad():
        layer.weight.copy_(
            torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(seed)) * 0.2
        )
        layer.weight_mode.threshold.fill_(threshold)
    return layer


def _x(batch=2, seed=1):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_masks_keep_weights_above_the_threshold_and_are_binary():
    layer = _layer(threshold=0.1)
    mask = layer.weight_mode.mask(layer.weight)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(mask.bool(), layer.weight.abs() > 0.1)  # eq. 2 read as its text says


def test_sd_conv_equals_dy_conv_with_the_masked_kernels():
    layer = _layer(threshold=0.15)
    dy = DynamicConv2d(4, 6, 3, padding=1, num_kernels=3, temperature=1.0, reduction=16)
    dy.attention.load_state_dict(layer.attention.state_dict())
    with torch.no_grad():
        dy.weight.copy_(layer.weight * (layer.weight.abs() > 0.15))
    for formulation in ("grouped", "per_sample", "batched"):
        layer.formulation = formulation
        torch.testing.assert_close(layer(_x()), dy(_x()), rtol=1e-5, atol=1e-6)


def test_straight_through_estimator_passes_gradients_to_weights_and_threshold():
    layer = _layer(threshold=0.1)
    with torch.no_grad():  # put a few weights right at the threshold, where M̃ has a slope
        layer.weight[0, 0, 0, 0, :] = torch.tensor([0.1, -0.1004, 0.0998])
    layer(_x()).pow(2).sum().backward()
    assert layer.weight_mode.threshold.grad is not None and layer.weight_mode.threshold.grad != 0
    assert torch.any(layer.weight.grad[0, 0, 0, 0, :] != 0)
    # a pruned weight far from the threshold gets (almost) no gradient: M = 0 and M̃ is flat there
    far_pruned = layer.weight.abs() < 0.05
    assert far_pruned.any()
    assert torch.all(layer.weight.grad[far_pruned].abs() < 1e-6)


def test_same_strategy_gives_equal_masks_and_different_does_not():
    same = _layer("same", threshold=0.15)
    masks = same.weight_mode.hard_mask(same.weight)
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    torch.testing.assert_close(masks[0], same.weight.abs().mean(0) > 0.15)
    different = _layer("different", threshold=0.15)
    masks = different.weight_mode.hard_mask(different.weight)
    assert not all(torch.equal(masks[0], m) for m in masks[1:])


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.15, 0.3, 1.0])
@pytest.mark.parametrize("strategy", ["different", "same"])
def test_kernel_sparsity_never_exceeds_layer_sparsity(threshold, strategy):
    stats = _layer(strategy, threshold).sparsity()
    assert 0.0 <= stats["kernel"] <= stats["layer"] <= 1.0
    if strategy == "same":
        assert stats["kernel"] == pytest.approx(stats["layer"])


def _model(threshold):
    torch.manual_seed(0)
    model = create_model("resnet10", conv="sdconv", num_classes=4, stem="small", width=0.125)
    with torch.no_grad():
        for _, layer in sparse_layers(model):
            layer.weight_mode.threshold.fill_(threshold)
    return model


def test_budget_loss_is_zero_when_sparser_than_the_budget():
    model = _model(threshold=0.2)
    density = 1.0 - sparsity_report(model)["sparsity"]
    with torch.no_grad():
        assert float(budget_loss(model, density + 0.05)) == 0.0
        assert float(budget_loss(model, density - 0.05)) > 0.0


def test_budget_loss_matches_a_hand_computed_value():
    model = _model(threshold=0.05)
    kept = total = 0
    for _, layer in sparse_layers(model):
        kept += int((layer.weight.abs() > 0.05).sum())
        total += layer.weight.numel()
    target = 0.3
    expected = kept - target * total  # Σ N_l (‖M_l‖₀ − s̄), ‖M_l‖₀ a fraction: kept weights above the budget
    assert expected > 0
    assert float(budget_loss(model, target)) == pytest.approx(expected, rel=1e-4)


def test_budget_loss_gradient_raises_thresholds():
    model = _model(threshold=0.0)
    budget_loss(model, 0.3).backward()
    grads = [layer.weight_mode.threshold.grad for _, layer in sparse_layers(model)]
    assert all(g is not None and g <= 0 for g in grads) and any(g < 0 for g in grads)  # descent raises τ
    assert all(layer.weight.grad is None for _, layer in sparse_layers(model))  # L_s(τ, s̄): τ only


def test_budget_loss_needs_sd_conv_layers():
    with pytest.raises(ConfigError, match="no SD-Conv layers"):
        budget_loss(create_model("resnet10", conv="dy", num_classes=4, stem="small", width=0.125), 0.5)


def test_clamp_thresholds_keeps_them_non_negative():
    model = _model(threshold=-0.3)
    clamp_thresholds(model)
    assert all(float(layer.weight_mode.threshold) == 0.0 for _, layer in sparse_layers(model))


def test_sparsity_schedule_follows_algorithm_1():
    schedule = SparsitySchedule(0.5, iterations=2, total_steps=30)  # phases of 10 steps: 1, √0.5, 0.5
    assert [schedule(t) for t in (0, 9, 10, 19, 20, 29, 100)] == pytest.approx(
        [1.0, 1.0, 0.5**0.5, 0.5**0.5, 0.5, 0.5, 0.5]
    )
    assert SparsitySchedule(0.8, iterations=0, total_steps=5)(0) == pytest.approx(0.2)
    for bad in (
        {"sparsity": 1.0, "iterations": 1, "total_steps": 5},
        {"sparsity": 0.5, "iterations": -1, "total_steps": 5},
    ):
        with pytest.raises(ConfigError):
            SparsitySchedule(**bad)


def test_accounting_counts_kept_weights_and_the_sparse_aggregated_kernel():
    torch.manual_seed(0)
    layer = _layer(threshold=0.15)
    model = nn.Sequential(layer)
    mask = layer.weight_mode.hard_mask(layer.weight)
    dense_params = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == dense_params - int((~mask).sum())
    pixels = 8 * 8
    dense_macs = count_flops(model, (4, 8, 8), compact=False)
    expected = dense_macs - pixels * int((~mask.any(0)).sum()) - int((~mask).sum())
    assert count_flops(model, (4, 8, 8)) == expected < dense_macs


def test_bad_options_raise():
    with pytest.raises(ConfigError):
        SparseDynamicConv2d(4, 4, 3, mask_strategy="half")
    with pytest.raises(ConfigError):
        SparseDynamicConv2d(4, 4, 3, mask_temperature=0.0)


def test_deployed_sd_conv_equals_the_dense_masked_forward_and_round_trips(tmp_path):
    model = _model(threshold=0.08).eval()
    with torch.no_grad():
        model.train()
        model(torch.randn(8, 3, 16, 16))  # BatchNorm statistics
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    deployed = deploy(model)
    for name, layer in sparse_layers(model):
        sparse = deployed.get_submodule(name)
        assert (
            isinstance(sparse, DeployedConv2d) and sparse.layout == "dense"
        )  # measured faster than skipping
        assert torch.equal(
            sparse.dynamic_weight != 0, layer.weight_mode.hard_mask(layer.weight)
        )  # pruned: zero
    with torch.no_grad():
        for formulation in ("grouped", "per_sample", "batched"):
            for m in deployed.modules():
                if isinstance(m, DeployedConv2d):
                    m.formulation = formulation
            torch.testing.assert_close(deployed(x), expected, rtol=1e-5, atol=1e-5)
    loaded = load_pretrained(save_pretrained(deployed, tmp_path / "sd"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    for key, value in deployed.state_dict().items():  # the packed factors come back exactly
        assert torch.equal(loaded.state_dict()[key], value), key


def test_deployed_sd_conv_file_stores_only_the_kept_weights(tmp_path):
    from safetensors import safe_open

    model = _model(threshold=0.08).eval()
    path = save_pretrained(deploy(model), tmp_path / "sd") / "padnet_model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        stored = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    for name, layer in sparse_layers(model):
        mask = layer.weight_mode.hard_mask(layer.weight)  # (k, Cout, Cin, kh, kw)
        assert stored[f"{name}.dynamic_weight.values"].numel() == int(
            mask.sum()
        )  # values of kept weights only
        assert f"{name}.dynamic_weight" not in stored  # not the dense (k, ...) kernels
        assert stored[f"{name}.dynamic_weight.bits"].numel() == -(-mask.numel() // 8)  # one bit per weight
