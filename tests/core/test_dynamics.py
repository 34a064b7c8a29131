"""The PAD-Net analysis measures (padnet.metrics.dynamics) on small hand-checked inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers import PADConv2d
from padnet.metrics.dynamics import (
    layer_dynamic_ratios,
    mask_structure,
    normalised_performance,
    output_variances,
    parameter_variance,
)
from padnet.partitioning import partition


def test_normalised_performance_by_hand():
    # mean 80: (70 − 80)/80, (80 − 80)/80, (90 − 80)/80
    assert normalised_performance([70, 80, 90]) == pytest.approx([-0.125, 0.0, 0.125])
    assert sum(normalised_performance([1.0, 2.0, 6.0])) == pytest.approx(0.0)


@pytest.mark.parametrize("values,message", [([], "at least one value"), ([1.0, -1.0], "zero mean")])
def test_normalised_performance_refuses(values, message):
    with pytest.raises(ConfigError, match=message):
        normalised_performance(values)


def test_parameter_variance_by_hand():
    # two samples, π = (1, 0) and (0, 1); D₁ = (1, 1), D₂ = (3, −1): kernels (1, 1) and (3, −1)
    # per-element population variances across the samples: ((1−2)² + (3−2)²)/2 = 1 and ((1−0)² + (−1−0)²)/2 = 1
    coeffs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    factors = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    assert parameter_variance(coeffs, factors) == pytest.approx(1.0)
    # equals building every sample's kernel and taking the variance directly
    torch.manual_seed(0)
    coeffs, factors = torch.softmax(torch.randn(7, 3), 1), torch.randn(3, 2, 4)
    kernels = coeffs @ factors.reshape(3, -1)  # (7, 8)
    assert parameter_variance(coeffs, factors) == pytest.approx(float(kernels.var(0, unbiased=False).mean()))


def test_parameter_variance_of_a_constant_routing_is_zero():
    assert parameter_variance(torch.full((5, 4), 0.25), torch.randn(4, 6)) == pytest.approx(0.0, abs=1e-15)


def test_parameter_variance_refuses_mismatched_shapes():
    with pytest.raises(ConfigError, match="3 coefficients per sample for 2 dynamic factors"):
        parameter_variance(torch.ones(4, 3), torch.ones(2, 5))


def test_output_variances_by_hand():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Identity(), Scale())
    batches = [(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), None), (torch.tensor([[4.0, 1.0]]), None)]
    got = output_variances(model, batches, ["0", "1"])
    # first element 0, 2, 4: variance 8/3; second element constant: 0; mean over the two elements
    assert got["0"] == pytest.approx(4 / 3)
    assert got["1"] == pytest.approx(16 / 3)  # doubling the outputs quadruples the variance
    with pytest.raises(ConfigError, match="no layer 'fc'"):
        output_variances(model, batches, ["fc"])


def test_layer_dynamic_ratios_pool_a_layers_masks():
    torch.manual_seed(0)
    model = nn.Sequential(PADConv2d(4, 6, 3, bias=True), PADConv2d(6, 6, 1))
    with torch.no_grad():
        model[0].weight_mode.mask.zero_()
        model[0].weight_mode.mask.view(-1)[:54].fill_(1)  # 54 of the 216 kernel elements
        model[0].bias_mode.mask.copy_(torch.tensor([1.0, 1, 0, 0, 0, 0]))  # 2 of the 6 biases
    ratios = layer_dynamic_ratios(model)
    assert ratios["0"] == pytest.approx((54 + 2) / (216 + 6))
    assert ratios["1"] == 1.0
    report = partition(model, 0.3, "random", scope="local")
    ratios = layer_dynamic_ratios(model)
    assert set(ratios) == {"0", "1"} and all(abs(r - 0.3) < 0.02 for r in ratios.values())
    assert report.dynamic_ratio == pytest.approx(0.3, abs=0.01)


def test_mask_structure_by_hand():
    stats = mask_structure(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    # columns: dynamic shares 1, 1/2, 0 -> majorities 1, 1/2, 1; rows: 2/3, 1/3 -> 2/3, 2/3
    assert stats["dynamic_ratio"] == pytest.approx(0.5)
    assert stats["column_agreement"] == pytest.approx(5 / 6)
    assert stats["row_agreement"] == pytest.approx(2 / 3)
    # p = 1/2: columns of 2 agree 1, 1/2, 1 with probabilities 1/4, 1/2, 1/4; rows of 3: 1 or 2/3 (1/4, 3/4)
    assert stats["random_column_agreement"] == pytest.approx(0.75)
    assert stats["random_row_agreement"] == pytest.approx(0.75)


def test_mask_structure_of_whole_columns_is_one_and_beats_random():
    mask = torch.zeros(64, 32)
    mask[:, ::2] = 1  # every other neuron fully dynamic
    stats = mask_structure(mask)
    assert stats["column_agreement"] == 1.0 and stats["row_agreement"] == 0.5
    assert stats["random_column_agreement"] < 0.6


@pytest.mark.parametrize(
    "mask, message", [(torch.ones(2, 2, 2), "2-D mask"), (torch.full((2, 2), 0.5), "binary")]
)
def test_mask_structure_refuses(mask, message):
    with pytest.raises(ConfigError, match=message):
        mask_structure(mask)
