"""Tests of padnet.layers: DY-Conv, PAD-Net convolution (eq. 3-4), scale factors and attention."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from padnet.errors import ConfigError
from padnet.layers import (
    DynamicConv2d,
    KernelAttention,
    PADConv2d,
    ScaleFactors,
    TemperatureSchedule,
    set_temperature,
)

# ----------------------------------------------------------------------------------------- geometry

# (stride, padding, dilation, groups, bias, kernel_size); groups "dw" = depthwise (groups = in = out)
_GEOMETRY = list(itertools.product((1, 2), (0, 1), (1, 2), (1, 2, "dw"), (False, True), (1, 3)))
_GEOMETRY_IDS = [f"s{s}-p{p}-d{d}-g{g}-{'bias' if b else 'nobias'}-k{k}" for s, p, d, g, b, k in _GEOMETRY]
_MODES = list(itertools.product(("shared", "kernel", "filter"), ("grouped", "per_sample", "batched")))
_MODE_IDS = [f"{g}-{f}" for g, f in _MODES]


def _channels(groups):
    """(in, out, groups) for a groups setting."""
    if groups == "dw":
        return 4, 4, 4
    return 4, 6, groups


def _geometry_kwargs(stride, padding, dilation, groups, bias, kernel_size):
    cin, cout, g = _channels(groups)
    return {
        "in_channels": cin,
        "out_channels": cout,
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": g,
        "bias": bias,
    }


def _randomise(layer: nn.Module, seed: int = 0) -> None:
    """Give every parameter distinct random values (biases and static parts included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _set_masks(layer: PADConv2d, value_fn) -> None:
    with torch.no_grad():
        for mode in (layer.weight_mode, layer.bias_mode):
            if getattr(mode, "partial", False):
                mode.mask.copy_(value_fn(mode.mask.shape))


def _input(cin=4, batch=3, size=9, seed=1):
    return torch.randn(batch, cin, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------- PAD(M = 1) == DY, PAD(M = 0) == static


@pytest.mark.parametrize("granularity,formulation", _MODES, ids=_MODE_IDS)
@pytest.mark.parametrize("geometry", _GEOMETRY, ids=_GEOMETRY_IDS)
def test_pad_with_full_mask_equals_dynamic_conv(geometry, granularity, formulation):
    kw = _geometry_kwargs(*geometry)
    torch.manual_seed(0)
    dy = DynamicConv2d(**kw, num_kernels=3, temperature=1.0, formulation=formulation)
    _randomise(dy)
    pad = PADConv2d(**kw, num_kernels=3, temperature=1.0, formulation=formulation, granularity=granularity)
    _randomise(pad, seed=5)  # the static part gets values that must NOT contribute when M = 1
    missing, unexpected = pad.load_state_dict(dy.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith(("weight_mode.", "bias_mode.", "scales.")) for k in missing)
    with torch.no_grad():
        pad.scales.phi.zero_()  # λd = 1
    assert torch.all(pad.weight_mode.mask == 1)
    x = _input(kw["in_channels"])
    expected = dy(x)
    got = pad(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity,formulation", _MODES, ids=_MODE_IDS)
@pytest.mark.parametrize("geometry", _GEOMETRY, ids=_GEOMETRY_IDS)
def test_pad_with_zero_mask_equals_static_conv(geometry, granularity, formulation):
    kw = _geometry_kwargs(*geometry)
    torch.manual_seed(0)
    pad = PADConv2d(**kw, num_kernels=3, temperature=1.0, formulation=formulation, granularity=granularity)
    _randomise(pad)
    with torch.no_grad():
        pad.scales.phi.zero_()  # λs = 1
    _set_masks(pad, torch.zeros)
    x = _input(kw["in_channels"])
    bias = pad.bias_mode.static if kw["bias"] else None
    expected = F.conv2d(x, pad.weight_mode.static, bias, pad.stride, pad.padding, pad.dilation, pad.groups)
    torch.testing.assert_close(pad(x), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- grouped == batched


def _mixed_mask(shape, seed=3):
    mask = (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    flat = mask.view(-1)
    flat[0], flat[-1] = 1.0, 0.0  # at least one dynamic and one static element (or filter)
    return mask


def _forward_backward(layer, x):
    """Output and every gradient of a weighted sum of the output (None where a parameter got none)."""
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    out = layer(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    grads = {"input": x.grad, **{name: p.grad for name, p in layer.named_parameters()}}
    return out.detach(), grads


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("granularity", ["shared", "kernel", "filter"])
@pytest.mark.parametrize(
    "geometry",
    [(1, 1, 1, 1, True, 3), (2, 0, 2, 2, True, 3), (2, 1, 1, "dw", False, 3), (1, 0, 1, 1, True, 1)],
    ids=["plain", "strided-grouped", "dw", "1x1"],
)
def test_formulations_agree_in_outputs_and_gradients(geometry, granularity, batch):
    """grouped, per-sample and batched (and, for filter masks, the unstructured masked path) agree."""
    kw = _geometry_kwargs(*geometry)
    torch.manual_seed(0)
    layer = PADConv2d(**kw, num_kernels=3, temperature=2.0, granularity=granularity)
    _randomise(layer)
    _set_masks(layer, _mixed_mask)
    with torch.no_grad():
        layer.scales.phi.fill_(0.4)
    x = _input(kw["in_channels"], batch=batch)
    reference = copy.deepcopy(layer)
    reference.structured = False  # the element-wise masked form, for every granularity
    reference.formulation = "grouped"
    out_ref, grads_ref = _forward_backward(reference, x)
    structured = granularity == "filter" and kw["groups"] in (1, kw["in_channels"])
    assert (layer.structured_split() is not None) == structured == layer.structured
    for formulation in ("grouped", "per_sample", "batched"):
        layer.formulation = formulation
        out, grads = _forward_backward(layer, x)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5, msg=formulation)
        assert grads.keys() == grads_ref.keys()
        for name in grads:
            assert grads[name] is not None, (formulation, name)
            torch.testing.assert_close(
                grads[name], grads_ref[name], rtol=1e-5, atol=1e-5, msg=f"{formulation}: {name}"
            )


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_conv_formulations_agree(batch):
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 6, 3, padding=1, bias=True, num_kernels=3, temperature=2.0)
    _randomise(layer)
    x = _input(batch=batch)
    results = {}
    for formulation in ("grouped", "per_sample", "batched"):
        layer.formulation = formulation
        results[formulation] = _forward_backward(layer, x)
    out_ref, grads_ref = results["grouped"]
    for formulation, (out, grads) in results.items():
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
        for name in grads_ref:
            torch.testing.assert_close(
                grads[name], grads_ref[name], rtol=1e-5, atol=1e-5, msg=f"{formulation}: {name}"
            )


# --------------------------------------------------------------------------------- gradient flow


@pytest.mark.parametrize("formulation", ["grouped", "batched"])
def test_gradients_with_mixed_mask(formulation):
    torch.manual_seed(0)
    layer = PADConv2d(4, 6, 3, padding=1, num_kernels=3, temperature=1.0, formulation=formulation)
    _randomise(layer)
    mask = _mixed_mask(layer.weight_mode.mask.shape)
    assert 0 < mask.sum() < mask.numel()
    _set_masks(layer, lambda s: mask)
    with torch.no_grad():
        layer.scales.phi.fill_(0.3)
    out = layer(_input())
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(9))).sum().backward()

    on = mask[0].bool()  # (Cout, Cin, kh, kw), shared by the k kernels
    w_grad = layer.weight.grad  # (k, Cout, Cin, kh, kw)
    assert torch.all(w_grad[:, ~on] == 0)
    assert torch.any(w_grad[:, on] != 0)
    s_grad = layer.weight_mode.static.grad
    assert torch.all(s_grad[on] == 0)
    assert torch.any(s_grad[~on] != 0)
    for name, p in layer.attention.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), name
    assert layer.scales.phi.grad is not None and layer.scales.phi.grad != 0


@pytest.mark.parametrize("formulation", ["grouped", "batched"])
def test_gradients_with_full_and_empty_masks(formulation):
    torch.manual_seed(0)
    layer = PADConv2d(4, 6, 3, padding=1, num_kernels=3, temperature=1.0, formulation=formulation)
    _randomise(layer)
    x = _input()

    # M = 1: fully dynamic, the static parameters do not take part
    layer(x).square().sum().backward()
    assert torch.all(layer.weight_mode.static.grad == 0)
    assert torch.any(layer.weight.grad != 0)
    layer.zero_grad(set_to_none=True)

    # M = 0: fully static, neither the kernels nor the attention take part
    _set_masks(layer, torch.zeros)
    layer(x).square().sum().backward()
    assert torch.all(layer.weight.grad == 0)
    for name, p in layer.attention.named_parameters():
        assert p.grad is None or torch.all(p.grad == 0), name
    assert torch.any(layer.weight_mode.static.grad != 0)


# --------------------------------------------------------------------------------- scale factors


@pytest.mark.parametrize("phi", [-7.0, -1.3, 0.0, 0.25, 2.0, 9.0])
def test_constrained_scales_sum_to_two(phi):
    scales = ScaleFactors("constrained")
    assert [n for n, _ in scales.named_parameters()] == ["phi"]
    with torch.no_grad():
        scales.phi.fill_(phi)
    lam_s, lam_d = (v.detach() for v in scales())
    assert float(lam_s + lam_d) == pytest.approx(2.0, abs=1e-6)
    assert float(lam_d) == pytest.approx(2.0 * torch.sigmoid(torch.tensor(phi)).item(), abs=1e-6)


def test_constrained_scales_start_at_one():
    lam_s, lam_d = (v.detach() for v in ScaleFactors()())
    assert float(lam_s) == 1.0 and float(lam_d) == 1.0


@pytest.mark.parametrize(
    "mode,params",
    [
        ("none", set()),
        ("both", {"lambda_s", "lambda_d"}),
        ("static", {"lambda_s"}),
        ("dynamic", {"lambda_d"}),
        ("constrained", {"phi"}),
    ],
)
def test_scale_modes_have_the_right_parameters(mode, params):
    scales = ScaleFactors(mode)
    assert {n for n, _ in scales.named_parameters()} == params
    assert all(p.requires_grad for p in scales.parameters())
    lam_s, lam_d = (v.detach() for v in scales())
    assert float(lam_s) == 1.0 and float(lam_d) == 1.0
    if "lambda_s" in params:
        with torch.no_grad():
            scales.lambda_s.fill_(0.5)
    if "lambda_d" in params:
        with torch.no_grad():
            scales.lambda_d.fill_(1.5)
    lam_s, lam_d = (v.detach() for v in scales())
    assert float(lam_s) == (0.5 if "lambda_s" in params else 1.0)
    assert float(lam_d) == (1.5 if "lambda_d" in params else 1.0)


def test_scale_mode_none_in_layer_has_no_scale_parameters():
    layer = PADConv2d(4, 4, 3, scale_mode="none")
    assert not any(n.startswith("scales.") for n, _ in layer.named_parameters())


def test_scale_factors_apply_to_the_layer():
    """Θ̂ = λd·M⊙Σπ Θ + λs·(1−M)⊙Θ̄ with free λs, λd (mode "both")."""
    torch.manual_seed(0)
    layer = PADConv2d(4, 6, 3, padding=1, num_kernels=2, temperature=1.0, scale_mode="both")
    _randomise(layer)
    _set_masks(layer, _mixed_mask)
    with torch.no_grad():
        layer.scales.lambda_s.fill_(0.7)
        layer.scales.lambda_d.fill_(1.9)
    x = _input()
    m = layer.weight_mode.mask[0]
    pi = layer.attention(x)
    out = []
    for b in range(x.shape[0]):
        w = (
            1.9 * m * torch.einsum("k,k...->...", pi[b], layer.weight)
            + 0.7 * (1 - m) * layer.weight_mode.static
        )
        out.append(F.conv2d(x[b : b + 1], w, None, 1, 1))
    torch.testing.assert_close(layer(x), torch.cat(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["Constrained", "free", "", "sum"])
def test_unknown_scale_mode_raises(mode):
    with pytest.raises(ConfigError):
        ScaleFactors(mode)
    with pytest.raises(ConfigError):
        PADConv2d(4, 4, 3, scale_mode=mode)


def test_deepcopied_scale_factors_use_their_own_parameters():
    """Regression: a deep copy (EMA, model cloning) must read its own λs, λd, not the original's."""
    layer = PADConv2d(4, 4, 3, scale_mode="both")
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        clone.scales.lambda_s.fill_(3.0)
        clone.scales.lambda_d.fill_(0.5)
    lam_s, lam_d = (v.detach() for v in clone.scales())
    assert float(lam_s) == 3.0 and float(lam_d) == 0.5


# ------------------------------------------------------------------------- granularity / semantics


@pytest.mark.parametrize("formulation", ["grouped", "batched"])
def test_kernel_granularity_with_equal_masks_equals_shared(formulation):
    torch.manual_seed(0)
    shared = PADConv2d(4, 6, 3, padding=1, bias=True, num_kernels=3, temperature=1.0, formulation=formulation)
    _randomise(shared)
    _set_masks(shared, _mixed_mask)
    with torch.no_grad():
        shared.scales.phi.fill_(-0.6)
    per_kernel = PADConv2d(
        4,
        6,
        3,
        padding=1,
        bias=True,
        num_kernels=3,
        temperature=1.0,
        formulation=formulation,
        granularity="kernel",
    )
    assert per_kernel.weight_mode.mask.shape == (3, 6, 4, 3, 3)
    assert per_kernel.bias_mode.mask.shape == (3, 6)
    state = shared.state_dict()
    for key in ("weight_mode.mask", "bias_mode.mask"):
        state[key] = state[key].expand(3, *state[key].shape[1:]).clone()
    per_kernel.load_state_dict(state)
    x = _input()
    torch.testing.assert_close(per_kernel(x), shared(x), rtol=1e-6, atol=1e-6)


def test_kernel_granularity_masks_are_independent_per_kernel():
    torch.manual_seed(0)
    layer = PADConv2d(4, 6, 3, padding=1, num_kernels=3, temperature=1.0, granularity="kernel")
    _randomise(layer)
    mask = torch.zeros(3, 6, 4, 3, 3)
    mask[0] = 1.0  # only kernel 0 dynamic; kernels 1, 2 hand their share (2/3) to the static part
    _set_masks(layer, lambda s: mask)
    with torch.no_grad():
        layer.scales.phi.zero_()  # λs = λd = 1
    x = _input()
    pi = layer.attention(x)
    out = []
    for b in range(x.shape[0]):
        w = pi[b, 0] * layer.weight[0] + (2 / 3) * layer.weight_mode.static
        out.append(F.conv2d(x[b : b + 1], w, None, 1, 1))
    torch.testing.assert_close(layer(x), torch.cat(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("formulation", ["grouped", "batched"])
@pytest.mark.parametrize("bias", [False, True])
def test_zero_semantics_with_empty_mask_gives_zero(bias, formulation):
    layer = PADConv2d(4, 6, 3, padding=1, bias=bias, mask_semantics="zero", formulation=formulation)
    _randomise(layer)
    assert layer.weight_mode.static is None
    _set_masks(layer, torch.zeros)
    out = layer(_input())
    assert out.shape == (3, 6, 9, 9)
    assert torch.all(out == 0)


def test_zero_semantics_with_full_mask_is_dynamic():
    torch.manual_seed(0)
    dy = DynamicConv2d(4, 6, 3, padding=1, temperature=1.0)
    pad = PADConv2d(4, 6, 3, padding=1, temperature=1.0, mask_semantics="zero")
    pad.load_state_dict(dy.state_dict(), strict=False)
    x = _input()
    torch.testing.assert_close(pad(x), dy(x))


def test_unknown_granularity_or_semantics_raise():
    with pytest.raises(ConfigError):
        PADConv2d(4, 4, 3, granularity="element")
    with pytest.raises(ConfigError):
        PADConv2d(4, 4, 3, mask_semantics="prune")


# ------------------------------------------------------------------------------------- attention


def test_softmax_coefficients_sum_to_one():
    torch.manual_seed(0)
    att = KernelAttention(8, 4, reduction=2, temperature=1.0)
    _randomise(att)
    pi = att(torch.randn(5, 8, 6, 6))
    assert pi.shape == (5, 4)
    assert torch.all(pi > 0)
    torch.testing.assert_close(pi.sum(1), torch.ones(5))
    assert not torch.allclose(pi[0], pi[1])  # input-dependent


def test_higher_temperature_is_closer_to_uniform():
    torch.manual_seed(0)
    att = KernelAttention(8, 4, reduction=2, temperature=1.0)
    _randomise(att)
    x = torch.randn(5, 8, 6, 6)
    spread = []
    for t in (0.5, 1.0, 5.0, 30.0, 1000.0):
        att.update_temperature(t)
        spread.append(float((att(x).detach() - 0.25).abs().max()))
    assert all(a > b for a, b in itertools.pairwise(spread)), spread
    assert spread[-1] < 1e-2


@pytest.mark.parametrize("t", [0, -1.0, float("nan")])
def test_update_temperature_rejects_non_positive(t):
    att = KernelAttention(8, 4)
    with pytest.raises(ConfigError):
        att.update_temperature(t)
    with pytest.raises(ConfigError):
        DynamicConv2d(8, 8, 3).update_temperature(t)


def test_temperature_schedule_is_linear_and_reaches_its_end():
    sched = TemperatureSchedule(30, 1, 10)
    assert sched(0) == 30.0
    assert (
        sched(9) == 1.0 and sched(10) == 1.0 and sched(1000) == 1.0
    )  # the last annealing step trains at T = 1
    for step in range(10):
        assert sched(step) == pytest.approx(30 - 29 * step / 9)
    assert [sched.anneals(step) for step in range(11)] == [False] + [True] * 9 + [False]
    assert TemperatureSchedule(30, 1, 0)(0) == 1.0 and TemperatureSchedule(30, 1, 1)(0) == 1.0
    assert not TemperatureSchedule(1, 1, 10).anneals(3)
    one_epoch = TemperatureSchedule(30, 1, 22)  # the issue-26 recipe: 22 steps, annealed over one epoch
    assert one_epoch(21) == 1.0 and one_epoch(20) > 1.0
    with pytest.raises(ConfigError):
        TemperatureSchedule(0, 1, 10)
    with pytest.raises(ConfigError):
        TemperatureSchedule(30, 1, -1)


def test_set_temperature_sets_every_attention():
    model = nn.Sequential(
        DynamicConv2d(4, 4, 3, temperature=30.0),
        nn.ReLU(),
        PADConv2d(4, 4, 3, temperature=30.0),
        nn.Conv2d(4, 4, 1),
    )
    assert set_temperature(model, 3.5) == 2
    temps = [float(m.temperature) for m in model.modules() if isinstance(m, KernelAttention)]
    assert temps == [3.5, 3.5]
    with pytest.raises(ConfigError):
        set_temperature(model, 0.0)


# ------------------------------------------------------------------------------------- from_conv


@pytest.mark.parametrize("formulation", ["grouped", "batched"])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 30.0])
@pytest.mark.parametrize("cls", [DynamicConv2d, PADConv2d])
@pytest.mark.parametrize(
    "geometry",
    [(1, 1, 1, 1, True, 3), (2, 0, 2, 2, False, 3), (1, 1, 1, "dw", True, 3)],
    ids=["plain-bias", "strided-grouped", "dw-bias"],
)
def test_from_conv_reproduces_the_conv(geometry, cls, temperature, formulation):
    kw = _geometry_kwargs(*geometry)
    torch.manual_seed(0)
    conv = nn.Conv2d(**kw)
    layer = cls.from_conv(conv, init_from_static=True, temperature=temperature, formulation=formulation)
    _randomise(layer.attention, seed=4)
    assert isinstance(layer, cls)
    x = _input(kw["in_channels"])
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-6)
    if cls is PADConv2d:  # the static parameters start from the conv too
        torch.testing.assert_close(layer.weight_mode.static, conv.weight)
        if conv.bias is not None:
            torch.testing.assert_close(layer.bias_mode.static, conv.bias)


def test_from_conv_without_static_init_differs():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = DynamicConv2d.from_conv(conv, init_from_static=False)
    x = _input()
    assert layer(x).shape == conv(x).shape
    assert not torch.allclose(layer(x), conv(x))


def test_from_conv_rejects_non_zero_padding_mode():
    with pytest.raises(ConfigError):
        PADConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))


# --------------------------------------------------------------------------------- shape & args


@pytest.mark.parametrize("cls", [DynamicConv2d, PADConv2d])
@pytest.mark.parametrize(
    "kernel_size,stride,padding,dilation",
    [
        (3, 1, 0, 1),
        (3, 2, 1, 1),
        ((3, 1), (2, 1), (1, 0), 1),
        (3, 1, 2, 2),
        (5, 3, 2, 1),
        (1, 2, 0, 1),
        (3, 1, "same", 2),
        (3, 2, "valid", 1),
    ],
)
@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_output_shape_matches_nn_conv(cls, kernel_size, stride, padding, dilation, size):
    conv = nn.Conv2d(4, 6, kernel_size, stride, padding, dilation)
    layer = cls(4, 6, kernel_size, stride, padding, dilation)
    x = torch.randn(2, 4, *size)
    expected = conv(x).shape
    assert layer(x).shape == expected
    assert tuple(layer.output_size(size)) == tuple(expected[2:])


@pytest.mark.parametrize("cls", [DynamicConv2d, PADConv2d])
@pytest.mark.parametrize("cin,cout,groups", [(4, 6, 4), (6, 4, 4), (5, 5, 2), (4, 4, 3)])
def test_groups_not_dividing_channels_raise(cls, cin, cout, groups):
    with pytest.raises(ConfigError):
        cls(cin, cout, 3, groups=groups)


@pytest.mark.parametrize("cls", [DynamicConv2d, PADConv2d])
def test_bad_constructor_args_raise(cls):
    with pytest.raises(ConfigError):
        cls(4, 4, 3, formulation="fast")
    with pytest.raises(ConfigError):
        cls(4, 4, 3, num_kernels=0)
    with pytest.raises(ConfigError):
        cls(4, 4, 3, routing="relu")


def test_dynamic_conv_rejects_pad_options():
    with pytest.raises(ConfigError):
        DynamicConv2d(4, 4, 3, granularity="kernel")


def test_pad_conv_rejects_unknown_options_with_config_error():
    with pytest.raises(ConfigError):
        PADConv2d(4, 4, 3, granulartiy="kernel")


def test_auto_formulation_is_decided_once_per_shape_and_grad_mode():
    layer = DynamicConv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 4, 4)
    layer(x)
    with torch.no_grad():
        layer(torch.randn(1, 4, 4, 4))
    assert layer.chosen_paths == {((2, 4, 4, 4), True): "batched", ((1, 4, 4, 4), False): "per_sample"}
    layer.set_path(x.shape, True, "grouped")
    assert layer.path_for(x.shape) == "grouped"
    layer.formulation = "batched"  # a fixed formulation clears the choices and bypasses them
    assert layer.chosen_paths == {}
    layer(x)
    assert layer.chosen_paths == {} and layer.path_for(x.shape) == "batched"
    with pytest.raises(ConfigError):
        layer.formulation = "fft"
    with pytest.raises(ConfigError):
        layer.set_path(x.shape, True, "fft")


@pytest.mark.parametrize(
    "batch, size, grad, expected",
    [
        (1, 4, True, "per_sample"),
        (64, 32, True, "grouped"),
        (64, 16, False, "grouped"),
        (64, 8, True, "grouped"),
        (64, 8, False, "per_sample"),
        (64, 4, True, "batched"),
        (64, 4, False, "batched"),
    ],
)
def test_formulation_rule(batch, size, grad, expected):
    from padnet.layers.formulations import rule

    assert rule(batch, size * size, grad) == expected


@pytest.mark.parametrize(
    "batch, size, grad, expected",
    [
        (1, 8, False, "per_sample"),
        (64, 32, False, "grouped"),
        (64, 8, False, "grouped"),
        (64, 8, True, "grouped"),
        (64, 4, False, "batched"),
    ],
)
def test_filter_structured_layers_use_the_filter_rule(batch, size, grad, expected):
    layer = PADConv2d(4, 8, 3, padding=1, granularity="filter")
    with torch.set_grad_enabled(grad):
        assert layer.path_for((batch, 4, size, size)) == expected
    assert PADConv2d(4, 8, 3, padding=1).path_for((64, 4, 8, 8)) == "grouped"  # the general rule, with grad


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"groups": 0}, "groups must be >= 1"),
        ({"padding": "same", "stride": 2}, "padding='same' needs stride 1"),
    ],
)
def test_bad_geometry_fails_at_construction(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        PADConv2d(4, 4, 3, **kwargs)


def test_models_initialise_dynamic_kernels_like_static_convs():
    from padnet.models import create_model

    torch.manual_seed(0)
    static = create_model("resnet18", conv="static", num_classes=10, width=0.5)
    dynamic = create_model("resnet18", conv="pad", num_classes=10, width=0.5)
    s_std = float(static.layer3[0].conv2.weight.detach().std())
    d = dynamic.layer3[0].conv2
    for kernel in d.weight.detach():
        assert float(kernel.std()) == pytest.approx(s_std, rel=0.05)
    assert float(d.weight_mode.static.detach().std()) == pytest.approx(s_std, rel=0.05)


def test_every_mode_implements_the_mode_protocol():
    from padnet.layers.modes import FullyDynamic, Mode, PartialMode
    from padnet.layers.sdconv import ThresholdMask

    factors = torch.randn(3, 4, 2)
    for mode in (
        FullyDynamic(),
        PartialMode((4, 2), 3),
        PartialMode((4, 2), 3, semantics="zero"),
        ThresholdMask(3),
    ):
        assert isinstance(mode, Mode)
        assert mode.hard_mask(factors).shape == factors.shape and mode.hard_mask(factors).dtype == torch.bool
        assert sum(mode.compact_counts(factors).values()) >= 0
        torch.testing.assert_close(mode.aggregate(torch.eye(3), factors), mode.merged(factors))


def test_structured_switch_is_public_and_refused_where_it_cannot_apply():
    layer = PADConv2d(4, 6, 3, padding=1, granularity="filter")
    assert layer.structured
    layer.structured = False
    with torch.no_grad():  # inference on 8×8 maps: the general rule picks per-sample, the filter rule grouped
        assert layer.structured_split() is None and layer.path_for((64, 4, 8, 8)) == "per_sample"
        layer.structured = True
        assert layer.structured_split() is not None and layer.path_for((64, 4, 8, 8)) == "grouped"
    for unstructurable in (
        PADConv2d(4, 6, 3, granularity="shared"),
        DynamicConv2d(4, 6, 3),
        PADConv2d(4, 6, 3, granularity="filter", mask_semantics="zero"),
    ):
        assert not unstructurable.structured
        with pytest.raises(ConfigError, match="cannot run structured"):
            unstructurable.structured = True


def test_split_cache_follows_the_values_not_the_tensor():
    from padnet.layers.modes import SplitCache

    cache, vector = SplitCache(), torch.tensor([True, False, True])
    first = cache(vector)
    assert cache(vector.clone()) is first  # same values: cached
    vector[1] = True  # written in place
    assert cache(vector).dynamic.tolist() == [0, 1, 2] and cache(vector).static.numel() == 0
