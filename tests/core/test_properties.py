"""Property-based tests (hypothesis) of the dynamic layers' equivalences over random shapes, strides, groups,
dilations, kernel counts, mask granularities, formulations and dynamic ratios κ."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from padnet.errors import ConfigError
from padnet.layers import DynamicConv2d, PADConv2d
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.moe import MoEFeedForward
from padnet.partitioning import partition
from padnet.partitioning.scores import masked_tensors

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GRANULARITIES = st.sampled_from(["shared", "kernel", "filter"])
FORMULATIONS = st.sampled_from(["grouped", "per_sample", "batched"])


@st.composite
def geometries(draw):
    """nn.Conv2d geometry with an input size giving at least one output pixel, plus batch, k and bias."""
    groups = draw(st.sampled_from([1, 2, 3, "depthwise"]))
    if groups == "depthwise":
        cin = cout = groups = draw(st.integers(2, 6))
    else:
        cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = draw(st.sampled_from([1, 2, 3, 5]))
    stride, padding, dilation = draw(st.integers(1, 3)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    reach = dilation * (kernel - 1) + 1 - 2 * padding  # the smallest input size with one output pixel
    size = draw(st.integers(max(1, reach), max(1, reach) + 6))
    return (
        {
            "in_channels": cin,
            "out_channels": cout,
            "kernel_size": kernel,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "groups": groups,
            "bias": draw(st.booleans()),
        },
        size,
        draw(st.integers(1, 3)),
        draw(st.integers(1, 4)),
    )


def _randomise(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _input(geometry, size, batch, seed=1):
    return torch.randn(
        batch, geometry["in_channels"], size, size, generator=torch.Generator().manual_seed(seed)
    )


@SETTINGS
@given(geometries(), GRANULARITIES, FORMULATIONS)
def test_pad_with_every_element_dynamic_is_the_dynamic_conv(case, granularity, formulation):
    geometry, size, batch, kernels = case
    dy = DynamicConv2d(**geometry, num_kernels=kernels, formulation=formulation)
    _randomise(dy, 0)
    pad = PADConv2d(**geometry, num_kernels=kernels, formulation=formulation, granularity=granularity)
    _randomise(pad, 5)  # static parameters get values that must not count while M = 1
    pad.load_state_dict(dy.state_dict(), strict=False)
    with torch.no_grad():
        pad.scales.phi.zero_()  # λs = λd = 1
    x = _input(geometry, size, batch)
    torch.testing.assert_close(pad(x), dy(x), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(geometries(), GRANULARITIES, FORMULATIONS)
def test_pad_with_every_element_static_and_unit_scale_is_a_static_conv(case, granularity, formulation):
    geometry, size, batch, kernels = case
    pad = PADConv2d(**geometry, num_kernels=kernels, formulation=formulation, granularity=granularity)
    _randomise(pad, 2)
    with torch.no_grad():
        pad.scales.phi.zero_()
        for mode in (pad.weight_mode, pad.bias_mode):
            if getattr(mode, "partial", False):
                mode.mask.zero_()
    x = _input(geometry, size, batch)
    bias = pad.bias_mode.static if geometry["bias"] else None
    expected = F.conv2d(x, pad.weight_mode.static, bias, pad.stride, pad.padding, pad.dilation, pad.groups)
    torch.testing.assert_close(pad(x), expected, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(geometries(), GRANULARITIES, st.floats(0.05, 1.0), st.integers(0, 1000), st.booleans())
def test_partition_reaches_kappa_and_the_deployed_form_computes_the_training_form(
    case, granularity, kappa, seed, with_bn
):
    geometry, size, batch, kernels = case
    pad = PADConv2d(**geometry, num_kernels=kernels, granularity=granularity)
    _randomise(pad, seed)
    if sum(round(kappa * mode.mask.numel()) for _, mode, _ in masked_tensors(pad)) == 0:
        with pytest.raises(
            ConfigError, match="leaves no dynamic element"
        ):  # a PAD model with nothing dynamic
            partition(nn.Sequential(pad), kappa, "random", seed=seed, scope="local")
        return
    report = partition(nn.Sequential(pad), kappa, "random", seed=seed, scope="local")
    masks = [m.mask for m in (pad.weight_mode, pad.bias_mode) if getattr(m, "partial", False)]
    assert abs(report.dynamic_ratio - kappa) <= 1.0 / min(m.numel() for m in masks) + 1e-9
    bn = None
    if with_bn:
        bn = nn.BatchNorm2d(geometry["out_channels"]).eval()
        _randomise(bn, seed + 1)
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    pad.eval()
    x = _input(geometry, size, batch, seed)
    expected = pad(x) if bn is None else bn(pad(x))
    deployed = DeployedConv2d.from_layer(pad, bn).eval()
    torch.testing.assert_close(deployed(x), expected, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(
    st.integers(2, 12),
    st.integers(1, 24),
    st.integers(1, 6),
    st.data(),
    st.sampled_from(["element", "neuron"]),
    st.integers(1, 40),
)
def test_pad_moe_with_every_element_dynamic_is_the_moe(hidden, inter, experts, data, granularity, tokens):
    top_k = data.draw(st.integers(1, experts))
    moe = MoEFeedForward(hidden, inter, num_experts=experts, top_k=top_k)
    pad = MoEFeedForward(hidden, inter, num_experts=experts, top_k=top_k, mode="pad", granularity=granularity)
    _randomise(moe, 3)
    _randomise(pad, 4)
    pad.load_state_dict(moe.state_dict(), strict=False)
    with torch.no_grad():
        pad.scale.phi.zero_()
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(tokens))
    torch.testing.assert_close(pad.eval()(x), moe.eval()(x), rtol=1e-5, atol=1e-5)
