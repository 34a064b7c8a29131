"""Tests of the layer zoo: CondConv, ODConv, DCD and their PAD-Net forms, DynamicVector and the registry.

DY-Conv / PAD-Net convolution themselves are covered by test_layers.py; here the other conv types are checked
against nn.Conv2d (shapes), against each other (PAD form with M = 1 == fully dynamic form, M = 0 == static
convolution), against hand-written formulas, and through conversion, temperature, partition and counting.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import padnet
from padnet.errors import ConfigError
from padnet.layers import (
    CONV_TYPES,
    DCDConv2d,
    DynamicConv2d,
    DynamicVector,
    KernelAttention,
    ODConv2d,
    OmniAttention,
    PADConv2d,
    PADDCDConv2d,
    PADODConv2d,
    PartialMode,
    TemperatureRouting,
    accepted_options,
    conv_factory,
    layer_options,
    partial_modes,
    set_temperature,
)
from padnet.layers.registry import CONDCONV
from padnet.partitioning.scores import masked_tensors

_DYNAMIC_TYPES = [name for name in CONV_TYPES if name != "static"]

# (name, options) of every layer form checked below; ODConv also with one kernel (no kernel attention)
_CASES = [
    ("condconv", {}),
    ("pad-condconv", {}),
    ("odconv", {}),
    ("odconv", {"num_kernels": 1}),
    ("pad-odconv", {}),
    ("pad-odconv", {"num_kernels": 1}),
    ("dcd", {}),
    ("pad-dcd", {}),
]
_CASE_IDS = [name + "".join(f"-k{v}" for v in opts.values()) for name, opts in _CASES]


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids waiting on a busy second core (restored afterwards)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _build(name, cin, cout, k, stride=1, padding=None, groups=1, bias=False, dilation=1, **options):
    """A layer of type ``name`` through the registry; padding keeps the map size (DCD needs it) by default."""
    if padding is None:
        padding = dilation * (k - 1) // 2
    return conv_factory(name, **options)(
        cin, cout, k, stride, padding, dilation=dilation, groups=groups, bias=bias
    )


def _randomise(module: nn.Module, seed: int = 0, keep_vector_statics: bool = False) -> None:
    """Give every parameter distinct random values; optionally keep the static attention / Λ̄ / Φ̄ values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if keep_vector_statics and name.endswith(".mode.static"):
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _input(cin=4, batch=3, size=9, seed=1):
    return torch.randn(batch, cin, size, size, generator=torch.Generator().manual_seed(seed))


def _set_masks(layer: nn.Module, value_fn) -> None:
    """Set the mask of every masked tensor of ``layer`` (through ``mode_pairs``)."""
    with torch.no_grad():
        for _, mode, _ in layer.mode_pairs():
            mode.mask.copy_(value_fn(mode.mask.shape))


def _randomise_with_modes(layer: nn.Module, pad: bool) -> tuple[float, float]:
    """Random parameters; for a PAD form also mixed masks and free scale factors. Returns (λs, λd)."""
    _randomise(layer)
    if not pad:
        return 1.0, 1.0
    _set_masks(layer, _mixed_mask)
    with torch.no_grad():
        layer.scales.lambda_s.fill_(0.6)
        layer.scales.lambda_d.fill_(1.7)
    return 0.6, 1.7


def _mixed_mask(shape, seed=3):
    """A binary mask with both values present (element 0 static, element 1 dynamic)."""
    mask = (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    flat = mask.view(-1)
    flat[0] = 0.0
    if flat.numel() > 1:
        flat[1] = 1.0
    return mask


def _pad_phi(layer, value=0.0):
    with torch.no_grad():
        layer.scales.phi.fill_(value)


def _vector_by_hand(vec: DynamicVector, h, act, temperature=1.0, lam_s=1.0, lam_d=1.0):
    """act((W h + b) / T), mixed with the static values as λd·M⊙v + λs·(1−M)⊙v̄ in the PAD form."""
    v = act((h @ vec.head.weight.t() + vec.head.bias) / temperature)
    if vec.mode.partial:
        m = vec.mode.mask[0]
        v = lam_d * m * v + lam_s * (1 - m) * vec.mode.static
    return v


def _sigmoid(z):
    return torch.sigmoid(z)


def _softmax(z):
    return torch.softmax(z, dim=1)


def _identity(z):
    return z


def _odconv_by_hand(layer: ODConv2d, x, lam_s=1.0, lam_d=1.0):
    """y = α_f ⊙ conv(α_c ⊙ x, α_s ⊙ Σ α_w W_i) + b, one sample at a time; returns (y, attentions)."""
    att = layer.attention
    t = float(att.temperature)
    h = torch.relu(x.mean(dim=(2, 3)) @ att.fc.weight.t())
    a_c = _vector_by_hand(att.channel, h, _sigmoid, t, lam_s, lam_d)
    a_f = None if att.filter is None else _vector_by_hand(att.filter, h, _sigmoid, t, lam_s, lam_d)
    a_s = None if att.spatial is None else _vector_by_hand(att.spatial, h, _sigmoid, t, lam_s, lam_d)
    a_w = None if att.kernel is None else _vector_by_hand(att.kernel, h, _softmax, t)
    out = []
    for b in range(x.shape[0]):
        if a_w is None:
            w = layer.weight[0]
        elif layer.weight_mode.partial:
            m = layer.weight_mode.mask
            w = (
                lam_d * torch.einsum("k,k...->...", a_w[b], m * layer.weight)
                + lam_s * (1 - m.mean(0)) * layer.weight_mode.static
            )
        else:
            w = torch.einsum("k,k...->...", a_w[b], layer.weight)
        if a_s is not None:
            w = w * a_s[b].reshape(layer.kernel_size)
        y = F.conv2d(
            x[b : b + 1] * a_c[b][None, :, None, None],
            w,
            None,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )
        if a_f is not None:
            y = y * a_f[b][None, :, None, None]
        if layer.bias is not None:
            y = y + layer.bias[None, :, None, None]
        out.append(y)
    return torch.cat(out), (a_c, a_f, a_s, a_w)


def _dcd_lambda(z):
    """Λ of DCD's code: relu6(z + 3) / 3."""
    return torch.clamp(z + 3, 0, 6) / 3


def _batchnorm_by_hand(bn: nn.BatchNorm2d, t):
    """BatchNorm of (B, C, H, W): batch statistics (biased variance) in training, running ones in eval."""
    if bn.training:
        mean, var = t.mean(dim=(0, 2, 3)), t.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    shape = (1, -1, 1, 1)
    return (t - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def _dcd_by_hand(layer: DCDConv2d, x, lam_s=1.0, lam_d=1.0):
    """y = Λ ⊙ conv(x, W0) + P (BN(Φ z) + z) (+ b), z = BN(Qᵀx), with the 1×1 stride as subsampling (DCD's
    code); returns (y, Λ, Φ). Depthwise layers have no channel-fusion residual (Φ is None)."""
    h = torch.relu(x.mean(dim=(2, 3)) @ layer.fc.weight.t())
    lam = _vector_by_hand(layer.scale, h, _dcd_lambda, 1.0, lam_s, lam_d)
    main = F.conv2d(x, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    y = lam[:, :, None, None] * main
    phi = None
    if layer.fusion is not None:
        phi = _vector_by_hand(layer.fusion, h, _identity, 1.0, lam_s, lam_d)
        phi = phi.reshape(-1, layer.latent, layer.latent)
        xs = x[:, :, :: layer.stride[0], :: layer.stride[1]]
        z = _batchnorm_by_hand(layer.q_norm, torch.einsum("lc,bchw->blhw", layer.q[:, :, 0, 0], xs))
        fused = _batchnorm_by_hand(layer.fusion_norm, torch.einsum("blm,bmhw->blhw", phi, z)) + z
        y = y + torch.einsum("ol,blhw->bohw", layer.p[:, :, 0, 0], fused)
    if layer.bias is not None:
        y = y + layer.bias[None, :, None, None]
    return y, lam, phi


# --------------------------------------------------------------------------------- shapes vs nn.Conv2d

# (in, out, kernel, stride, padding, dilation, groups, bias): each setting with and without bias
_SHAPES = [
    (4, 6, 3, 1, 1, 1, 1, True),
    (4, 6, 3, 2, 1, 1, 1, False),
    (4, 6, 3, 1, 1, 1, 2, False),
    (6, 4, 3, 2, 1, 1, 2, True),
    (4, 4, 3, 1, 1, 1, 4, True),  # depthwise
    (6, 6, 3, 2, 1, 1, 6, False),  # depthwise, strided
    (4, 6, 1, 1, 0, 1, 1, False),
    (4, 6, 1, 2, 0, 1, 2, True),
    (4, 4, 1, 1, 0, 1, 4, True),  # depthwise 1×1
    (4, 6, 3, 2, 2, 2, 1, True),  # dilated
    (4, 6, 5, 2, 2, 1, 1, False),
]
_SHAPE_IDS = [
    f"{i}-{o}-k{k}-s{s}-p{p}-d{d}-g{g}-{'bias' if b else 'nobias'}" for i, o, k, s, p, d, g, b in _SHAPES
]


@pytest.mark.parametrize("geometry", _SHAPES, ids=_SHAPE_IDS)
@pytest.mark.parametrize("name", _DYNAMIC_TYPES)
def test_output_shape_matches_nn_conv(name, geometry):
    cin, cout, k, stride, padding, dilation, groups, bias = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias)
    layer = conv_factory(name)(cin, cout, k, stride, padding, dilation=dilation, groups=groups, bias=bias)
    assert isinstance(layer, CONV_TYPES[name][0])
    assert (layer.bias is not None) == bias
    for size in ((9, 9), (8, 7)):
        x = torch.randn(2, cin, *size)
        expected = conv(x).shape
        assert layer(x).shape == expected
        assert tuple(layer.output_size(size)) == tuple(expected[2:])


@pytest.mark.parametrize("name", ["dcd", "pad-dcd"])
@pytest.mark.parametrize(
    "kernel,padding,dilation",
    [(3, 0, 1), (3, 2, 1), (1, 1, 1), (3, 1, 2), (5, 1, 1), (3, "valid", 1), ((3, 1), (1, 1), 1)],
)
def test_dcd_rejects_padding_that_misaligns_the_residual(name, kernel, padding, dilation):
    with pytest.raises(ConfigError, match="padding"):
        conv_factory(name)(4, 6, kernel, 1, padding, dilation=dilation)


@pytest.mark.parametrize("name", ["dcd", "pad-dcd"])
@pytest.mark.parametrize(
    "kernel,padding,dilation",
    [(3, 1, 1), (3, 2, 2), (5, 2, 1), (1, 0, 1), (1, "valid", 1), (3, "same", 2), ((3, 1), (1, 0), 1)],
)
def test_dcd_accepts_aligned_padding(name, kernel, padding, dilation):
    layer = conv_factory(name)(4, 6, kernel, 1, padding, dilation=dilation)
    x = _input()
    assert (
        layer(x).shape == F.conv2d(x, torch.zeros(6, 4, *layer.kernel_size), None, 1, padding, dilation).shape
    )


# ------------------------------------------------------------------------ PAD form with M = 1 == dynamic

# (in, out, kernel, stride, groups, bias)
_EQ_GEOMETRY = [
    (4, 6, 3, 1, 1, True),
    (4, 6, 3, 2, 2, False),
    (4, 6, 1, 1, 1, True),
    (4, 4, 3, 2, 4, True),
    (4, 4, 1, 1, 4, False),
]
_EQ_IDS = ["3x3-bias", "3x3-s2-g2", "1x1-bias", "dw-s2-bias", "dw-1x1"]
# (fully dynamic name, PAD name, options)
_PAIRS = [
    ("odconv", "pad-odconv", {"num_kernels": 4, "temperature": 1.0}),
    ("odconv", "pad-odconv", {"num_kernels": 4, "temperature": 1.0, "granularity": "kernel"}),
    ("odconv", "pad-odconv", {"num_kernels": 1, "temperature": 1.0}),
    ("dcd", "pad-dcd", {}),
    ("condconv", "pad-condconv", {"temperature": 1.0, "formulation": "grouped"}),
    ("condconv", "pad-condconv", {"temperature": 1.0, "formulation": "batched", "granularity": "kernel"}),
]
_PAIR_IDS = ["odconv-k4", "odconv-k4-kernelmask", "odconv-k1", "dcd", "condconv-grouped", "condconv-batched"]
_PAD_ONLY = ("granularity", "scale_mode", "mask_semantics")


@pytest.mark.parametrize("geometry", _EQ_GEOMETRY, ids=_EQ_IDS)
@pytest.mark.parametrize("full_name,pad_name,options", _PAIRS, ids=_PAIR_IDS)
def test_pad_form_with_full_masks_equals_fully_dynamic_form(full_name, pad_name, options, geometry):
    cin, cout, k, stride, groups, bias = geometry
    full_options = {key: v for key, v in options.items() if key not in _PAD_ONLY}
    torch.manual_seed(0)
    full = _build(full_name, cin, cout, k, stride, groups=groups, bias=bias, **full_options)
    _randomise(full)
    pad = _build(pad_name, cin, cout, k, stride, groups=groups, bias=bias, **options)
    _randomise(pad, seed=5)  # static parts get values that must NOT contribute when M = 1
    full_state = full.state_dict()
    missing, unexpected = pad.load_state_dict(full_state, strict=False)
    assert not unexpected
    assert set(full_state) <= set(pad.state_dict())  # every fully dynamic key was loaded
    assert all(
        ".mode." in key or key.startswith(("weight_mode.", "bias_mode.", "scales.")) for key in missing
    )
    assert "scales.phi" in missing
    _pad_phi(pad)  # constrained scales: λs = λd = 1
    pairs = pad.mode_pairs()
    assert pairs, "a PAD form must have masks"
    assert all(torch.all(mode.mask == 1) for _, mode, _ in pairs)
    x = _input(cin)
    expected = full(x)
    got = pad(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "num_kernels,geometry,suffixes",
    [
        (4, (4, 6, 3, 1, 1), ["weight", "attention.channel", "attention.filter", "attention.spatial"]),
        (1, (4, 6, 3, 1, 1), ["attention.channel", "attention.filter", "attention.spatial"]),
        (4, (4, 6, 1, 1, 1), ["weight", "attention.channel", "attention.filter"]),
        (4, (4, 4, 3, 1, 4), ["weight", "attention.channel", "attention.spatial"]),
        (1, (4, 4, 1, 1, 4), ["attention.channel"]),
    ],
    ids=["k4", "k1", "1x1", "dw", "dw-1x1-k1"],
)
def test_pad_odconv_masks_follow_the_heads(num_kernels, geometry, suffixes):
    cin, cout, k, stride, groups = geometry
    layer = _build("pad-odconv", cin, cout, k, stride, groups=groups, num_kernels=num_kernels)
    pairs = layer.mode_pairs()
    assert [s for s, _, _ in pairs] == suffixes
    sizes = {
        "weight": (1, cout, cin // groups, k, k),
        "attention.channel": (1, cin),
        "attention.filter": (1, cout),
        "attention.spatial": (1, k * k),
    }
    for suffix, mode, factors in pairs:
        assert isinstance(mode, PartialMode)
        assert tuple(mode.mask.shape) == sizes[suffix]
        if suffix != "weight":  # factors of an attention element: its head row (hidden weights + bias)
            assert tuple(factors.shape) == (17, sizes[suffix][1])  # hidden = max(4 // 16, 16) = 16
    # the kernel attention (softmax over k) is never masked
    assert layer.attention.kernel is None or not layer.attention.kernel.mode.partial
    assert sorted(n for n, _ in partial_modes(layer)) == sorted(
        {"weight": "weight_mode"}.get(s, s + ".mode") for s in suffixes
    )


def test_pad_dcd_masks_are_scale_and_fusion():
    layer = _build("pad-dcd", 9, 6, 3)
    assert layer.latent == 3
    assert [(s, tuple(m.mask.shape)) for s, m, _ in layer.mode_pairs()] == [
        ("scale", (1, 6)),
        ("fusion", (1, 9)),
    ]
    assert DCDConv2d(9, 6, 3, padding=1).mode_pairs() == []


# ------------------------------------------------------------------------ PAD form with M = 0 == static


@pytest.mark.parametrize("num_kernels", [1, 4])
@pytest.mark.parametrize("geometry", _EQ_GEOMETRY, ids=_EQ_IDS)
def test_pad_odconv_with_zero_masks_is_a_static_conv(geometry, num_kernels):
    cin, cout, k, stride, groups, bias = geometry
    torch.manual_seed(0)
    layer = _build("pad-odconv", cin, cout, k, stride, groups=groups, bias=bias, num_kernels=num_kernels)
    heads = [layer.attention.channel, layer.attention.filter, layer.attention.spatial]
    for head in filter(None, heads):  # static attention values start at 1 ("no attention")
        assert torch.all(head.mode.static == 1)
    _randomise(layer, keep_vector_statics=True)
    _pad_phi(layer)  # λs = 1
    _set_masks(layer, torch.zeros)
    x = _input(cin)
    kernel = layer.weight_mode.static if num_kernels > 1 else layer.weight[0]
    expected = F.conv2d(x, kernel, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geometry", _EQ_GEOMETRY, ids=_EQ_IDS)
def test_pad_dcd_with_zero_masks_is_a_static_conv(geometry):
    cin, cout, k, stride, groups, bias = geometry
    torch.manual_seed(0)
    layer = _build("pad-dcd", cin, cout, k, stride, groups=groups, bias=bias)
    assert torch.all(layer.scale.mode.static == 1)  # Λ̄ = 1
    assert layer.fusion is None or torch.all(layer.fusion.mode.static == 0)  # Φ̄ = 0
    _randomise(layer, keep_vector_statics=True)
    _pad_phi(layer)
    _set_masks(layer, torch.zeros)
    layer.eval()  # BatchNorm with running statistics: an affine map
    x = _input(cin)
    expected = F.conv2d(
        x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
    )
    if layer.fusion is not None:  # the static low-rank residual P (BN(Φ̄ z) + z), z = BN(Qᵀx): with Φ̄ = 0, the
        # fixed 1×1 convolution P diag(a) Qᵀ plus the bias P (a μ-shift + β) of both normalisations
        with torch.no_grad():
            for norm in (layer.q_norm, layer.fusion_norm):
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
        q_norm, fusion_norm = layer.q_norm, layer.fusion_norm
        a = q_norm.weight / torch.sqrt(q_norm.running_var + q_norm.eps)
        shift = q_norm.bias - a * q_norm.running_mean
        fused_bias = fusion_norm.bias - fusion_norm.weight * fusion_norm.running_mean / torch.sqrt(
            fusion_norm.running_var + fusion_norm.eps
        )
        kernel = (layer.p[:, :, 0, 0] @ (a[:, None] * layer.q[:, :, 0, 0]))[:, :, None, None]
        expected = expected + F.conv2d(x, kernel, layer.p[:, :, 0, 0] @ (shift + fused_bias), layer.stride)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("formulation", ["grouped", "batched"])
def test_pad_condconv_with_zero_masks_is_a_static_conv(formulation):
    torch.manual_seed(0)
    layer = _build("pad-condconv", 4, 6, 3, bias=True, temperature=1.0, formulation=formulation)
    _randomise(layer)
    _pad_phi(layer)
    _set_masks(layer, torch.zeros)
    x = _input()
    expected = F.conv2d(x, layer.weight_mode.static, layer.bias_mode.static, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- ODConv by hand

# (in, out, kernel, stride, groups, num_kernels)
_OD_HAND = [
    (4, 6, 3, 1, 1, 4),
    (4, 6, 3, 2, 2, 4),
    (4, 6, 3, 1, 1, 1),
    (4, 6, 1, 1, 1, 4),
    (4, 6, 1, 2, 1, 1),
    (4, 4, 3, 2, 4, 4),
    (4, 4, 3, 1, 4, 1),
    (4, 4, 1, 1, 4, 3),
]
_OD_HAND_IDS = ["3x3-k4", "3x3-s2-g2-k4", "3x3-k1", "1x1-k4", "1x1-s2-k1", "dw-s2-k4", "dw-k1", "dw-1x1-k3"]


@pytest.mark.parametrize("pad", [False, True], ids=["odconv", "pad-odconv"])
@pytest.mark.parametrize("geometry", _OD_HAND, ids=_OD_HAND_IDS)
def test_odconv_by_hand(geometry, pad):
    cin, cout, k, stride, groups, num_kernels = geometry
    torch.manual_seed(0)
    cls = PADODConv2d if pad else ODConv2d
    options = {"scale_mode": "both"} if pad else {}
    layer = cls(
        cin, cout, k, stride, k // 2, 1, groups, True, num_kernels=num_kernels, temperature=0.7, **options
    )
    lam_s, lam_d = _randomise_with_modes(layer, pad)
    att = layer.attention
    assert isinstance(att, OmniAttention)
    assert (att.filter is None) == (groups == cin == cout)  # no filter attention for depthwise
    assert (att.spatial is None) == (k == 1)  # no spatial attention for 1×1
    assert (att.kernel is None) == (num_kernels == 1)  # no kernel attention for one kernel
    x = _input(cin)
    expected, attentions = _odconv_by_hand(layer, x, lam_s, lam_d)
    got_attentions = att(x, lam_s, lam_d)
    sizes = (cin, cout, k * k, num_kernels)
    for got_a, want_a, n in zip(got_attentions, attentions, sizes):
        assert (got_a is None) == (want_a is None)
        if want_a is not None:
            assert got_a.shape == (3, n)
            torch.testing.assert_close(got_a, want_a, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(want_a[0], want_a[1])  # per-sample attentions differ
    if attentions[3] is not None:
        torch.testing.assert_close(attentions[3].sum(1), torch.ones(3))  # softmax over the kernels
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("formulation", ["grouped", "batched"])
def test_condconv_by_hand(formulation):
    """CondConv: π = sigmoid(FC(GAP(x)) / T) over 8 kernels (one linear map), y = conv(x, Σ πᵢWᵢ) + Σ πᵢbᵢ."""
    torch.manual_seed(0)
    layer = _build("condconv", 4, 6, 3, 2, bias=True, temperature=2.0, formulation=formulation)
    assert isinstance(layer, DynamicConv2d) and not isinstance(layer, PADConv2d)
    assert layer.num_kernels == 8 and layer.attention.routing == "sigmoid"
    assert isinstance(layer.attention.fc1, nn.Identity)
    assert (layer.attention.fc2.in_features, layer.attention.fc2.out_features) == (4, 8)
    _randomise(layer)
    x = _input()
    pi = torch.sigmoid((x.mean(dim=(2, 3)) @ layer.attention.fc2.weight.t() + layer.attention.fc2.bias) / 2.0)
    assert not torch.allclose(pi.sum(1), torch.ones(3))  # sigmoid routing weights need not sum to one
    out = [
        F.conv2d(x[b : b + 1], torch.einsum("k,k...->...", pi[b], layer.weight), pi[b] @ layer.bias, 2, 1)
        for b in range(3)
    ]
    torch.testing.assert_close(layer(x), torch.cat(out), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------- DCD by hand

# (in, out, kernel, stride, dilation, groups)
_DCD_HAND = [
    (4, 6, 3, 1, 1, 1),
    (4, 6, 3, 2, 1, 2),
    (9, 6, 3, 1, 2, 1),
    (9, 6, 1, 2, 1, 3),
    (4, 4, 3, 2, 1, 4),
    (5, 3, 5, 1, 1, 1),
]
_DCD_HAND_IDS = ["3x3", "3x3-s2-g2", "L3-dilated", "L3-1x1-s2-g3", "dw-s2", "L2-5x5"]


@pytest.mark.parametrize("pad", [False, True], ids=["dcd", "pad-dcd"])
@pytest.mark.parametrize("geometry", _DCD_HAND, ids=_DCD_HAND_IDS)
def test_dcd_by_hand(geometry, pad):
    cin, cout, k, stride, dilation, groups = geometry
    torch.manual_seed(0)
    cls = PADDCDConv2d if pad else DCDConv2d
    options = {"scale_mode": "both"} if pad else {}
    layer = cls(cin, cout, k, stride, dilation * (k - 1) // 2, dilation, groups, True, **options)
    if groups == cin == cout:  # depthwise: no channel-fusion residual, DCD is Λ(x) ⊙ conv(x, W0)
        assert layer.latent == 0 and layer.q is None and layer.p is None and layer.fusion is None
        assert [s for s, _, _ in layer.mode_pairs()] == (["scale"] if pad else [])
    else:
        latent = math.isqrt(cin)
        assert layer.latent == latent
        assert tuple(layer.q.shape) == (latent, cin, 1, 1) and tuple(layer.p.shape) == (cout, latent, 1, 1)
        assert layer.fusion.head.out_features == latent * latent
    lam_s, lam_d = _randomise_with_modes(layer, pad)
    x = _input(cin)
    expected, lam, phi = _dcd_by_hand(layer, x, lam_s, lam_d)
    assert not torch.allclose(lam[0], lam[1])  # per-sample scale
    assert phi is None or not torch.allclose(phi[0], phi[1])  # per-sample fusion
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ from_conv / convert


def _dcd_scale_by_hand(layer, x):
    h = torch.relu(x.mean(dim=(2, 3)) @ layer.fc.weight.t())
    return _vector_by_hand(layer.scale, h, _dcd_lambda)


@pytest.mark.parametrize("cls", [DCDConv2d, PADDCDConv2d])
@pytest.mark.parametrize(
    "geometry",
    [(4, 6, 3, 1, 1, True), (4, 6, 3, 2, 2, False), (4, 4, 3, 1, 4, True), (4, 6, 1, 2, 1, True)],
    ids=["3x3-bias", "s2-g2", "dw-bias", "1x1-s2"],
)
def test_dcd_from_conv_scales_the_static_conv(cls, geometry):
    cin, cout, k, stride, groups, bias = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
    layer = cls.from_conv(conv)
    assert isinstance(layer, cls)
    torch.testing.assert_close(layer.weight, conv.weight)
    assert layer.p is None if groups == cin == cout else torch.all(layer.p == 0)
    _randomise(layer.fc, seed=2)
    if layer.fusion is not None:
        _randomise(layer.fusion, seed=3)  # Φ(x) ≠ 0 must not matter while P = 0
    x = _input(cin)
    lam = _dcd_scale_by_hand(layer, x)
    expected = lam[:, :, None, None] * F.conv2d(x, conv.weight, None, stride, k // 2, 1, groups)
    if bias:
        expected = expected + conv.bias[None, :, None, None]
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    if cls is PADDCDConv2d:  # static Λ̄ = 1, Φ̄ = 0 and M = 0: the original conv exactly
        _set_masks(layer, torch.zeros)
        _pad_phi(layer)
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def _small_static_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 2, 1, bias=True),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, 1, 1, groups=6, bias=False),
    )


def test_convert_to_dcd_computes_lambda_times_the_static_conv():
    model = _small_static_model()
    convs = [model[0], model[2], model[4]]
    padnet.convert(model, "dcd")
    assert model[0] is convs[0]  # the stem stays static
    assert isinstance(model[2], DCDConv2d) and isinstance(model[4], DCDConv2d)
    for new, old in ((model[2], convs[1]), (model[4], convs[2])):
        torch.testing.assert_close(new.weight, old.weight)
        assert (new.bias is None) == (old.bias is None)
    _randomise(model[2].fusion, seed=3)
    assert torch.all(model[2].p == 0)
    assert model[4].p is None  # depthwise: no residual
    x = _input(3, batch=2)
    h = torch.relu(convs[0](x))
    lam = _dcd_scale_by_hand(model[2], h)
    h = torch.relu(
        lam[:, :, None, None] * F.conv2d(h, convs[1].weight, None, 2, 1) + convs[1].bias[:, None, None]
    )
    lam = _dcd_scale_by_hand(model[4], h)
    expected = lam[:, :, None, None] * F.conv2d(h, convs[2].weight, None, 1, 1, 1, 6)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "conv_type,options",
    [("pad-odconv", {}), ("pad-odconv", {"num_kernels": 1}), ("pad-condconv", {}), ("pad-dcd", {})],
    ids=["pad-odconv-k4", "pad-odconv-k1", "pad-condconv", "pad-dcd"],
)
def test_convert_to_pad_forms_copies_the_static_kernels(conv_type, options):
    model = _small_static_model()
    convs = [model[0], model[2], model[4]]
    reference = _small_static_model()
    padnet.convert(model, conv_type, **options)
    for new, old in ((model[2], convs[1]), (model[4], convs[2])):
        assert isinstance(new, CONV_TYPES[conv_type][0])
        weight_mode = getattr(new, "weight_mode", None)
        if isinstance(weight_mode, PartialMode):  # Θ̄ and every kernel start from the static kernel
            torch.testing.assert_close(weight_mode.static, old.weight)
            for kernel in new.weight:
                torch.testing.assert_close(kernel, old.weight)
        else:
            torch.testing.assert_close(new.weight.reshape(old.weight.shape), old.weight)
        bias_mode = getattr(new, "bias_mode", None)
        if old.bias is not None and isinstance(bias_mode, PartialMode):
            torch.testing.assert_close(bias_mode.static, old.bias)
        # all masks 0 with λs = 1: the converted layer is the original convolution
        _set_masks(new, torch.zeros)
        _pad_phi(new)
    x = _input(3, batch=2)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_kernels", [1, 4])
def test_odconv_from_conv_applies_the_attentions_to_the_static_kernel(num_kernels):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, 2, 1, bias=True)
    layer = ODConv2d.from_conv(conv, num_kernels=num_kernels)
    for kernel in layer.weight:
        torch.testing.assert_close(kernel, conv.weight)
    torch.testing.assert_close(layer.bias, conv.bias)
    _randomise(layer.attention, seed=2)
    x = _input()
    a_c, a_f, a_s, _ = layer.attention(x)
    out = [
        F.conv2d(x[b : b + 1] * a_c[b][None, :, None, None], conv.weight * a_s[b].reshape(3, 3), None, 2, 1)
        * a_f[b][None, :, None, None]
        for b in range(3)
    ]
    torch.testing.assert_close(
        layer(x), torch.cat(out) + conv.bias[None, :, None, None], rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------------------- temperature


def test_set_temperature_reaches_odconv_and_condconv():
    model = nn.Sequential(
        _build("odconv", 4, 4, 3),
        _build("condconv", 4, 4, 3),
        _build("pad-odconv", 4, 4, 3),
        _build("pad-condconv", 4, 4, 3),
        _build("dcd", 4, 4, 3),
        _build("pad-dcd", 4, 4, 3),
    )
    for layer in model[:4]:
        assert isinstance(layer.attention, TemperatureRouting)
    assert float(model[0].attention.temperature) == 1.0  # ODConv's default
    assert float(model[1].attention.temperature) == 1.0  # CondConv: a plain sigmoid, no temperature
    assert set_temperature(model, 7.0) == 4  # DCD has no temperature
    for layer in model[:4]:
        assert float(layer.attention.temperature) == 7.0
    # the new temperature is used by the heads
    x = _input()
    _, attentions = _odconv_by_hand(model[0], x)
    h = torch.relu(x.mean(dim=(2, 3)) @ model[0].attention.fc.weight.t())
    head = model[0].attention.channel.head
    torch.testing.assert_close(attentions[0], torch.sigmoid((h @ head.weight.t() + head.bias) / 7.0))
    torch.testing.assert_close(model[0].attention(x)[0], attentions[0])
    model[2].update_temperature(3.0)
    assert float(model[2].attention.temperature) == 3.0
    with pytest.raises(ConfigError):
        model[0].update_temperature(0.0)


@pytest.mark.parametrize(
    "geometry", [(4, 6, 3, 1, 4), (4, 4, 3, 4, 3), (4, 6, 1, 1, 4)], ids=["3x3-k4", "dw-k3", "1x1-k4"]
)
def test_odconv_with_huge_temperature_has_flat_attentions(geometry):
    cin, cout, k, groups, num_kernels = geometry
    torch.manual_seed(0)
    layer = _build("odconv", cin, cout, k, groups=groups, num_kernels=num_kernels, bias=False)
    _randomise(layer)
    assert set_temperature(layer, 1e6) == 1
    x = _input(cin)
    a_c, a_f, a_s, a_w = layer.attention(x)
    for a in (a_c, a_f, a_s):
        if a is not None:
            torch.testing.assert_close(a, torch.full_like(a, 0.5), rtol=0, atol=1e-4)
    torch.testing.assert_close(a_w, torch.full_like(a_w, 1 / num_kernels), rtol=0, atol=1e-4)
    # y = α_f ⊙ conv(α_c x, α_s Σ α_w W) = 0.5^(number of sigmoid heads applied) · conv(x, mean W)
    factor = 0.5 ** sum(a is not None for a in (a_c, a_f, a_s))
    expected = factor * F.conv2d(x, layer.weight.mean(0), None, 1, k // 2, 1, groups)
    torch.testing.assert_close(layer(x), expected, rtol=1e-3, atol=1e-4)


def test_condconv_with_huge_temperature_routes_one_half_to_every_kernel():
    torch.manual_seed(0)
    layer = _build("condconv", 4, 6, 3, bias=True)
    _randomise(layer)
    set_temperature(layer, 1e6)
    x = _input()
    torch.testing.assert_close(layer.attention(x), torch.full((3, 8), 0.5), rtol=0, atol=1e-4)
    expected = F.conv2d(x, 0.5 * layer.weight.sum(0), 0.5 * layer.bias.sum(0), 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------- DynamicVector / mix


@pytest.mark.parametrize("activation", ["sigmoid", "hardsigmoid", "hardsigmoid2", "softmax", "identity"])
def test_fully_dynamic_vector_is_one_head(activation):
    torch.manual_seed(0)
    vec = DynamicVector(5, 3, activation)
    _randomise(vec)
    assert vec.mode_pair("v") == []
    h = torch.randn(4, 5)
    act = {
        "sigmoid": torch.sigmoid,
        "hardsigmoid": F.hardsigmoid,
        "hardsigmoid2": _dcd_lambda,
        "softmax": _softmax,
        "identity": _identity,
    }[activation]
    torch.testing.assert_close(vec(h, 2.5), act((h @ vec.head.weight.t() + vec.head.bias) / 2.5))
    assert tuple(vec.factors().shape) == (6, 3)
    torch.testing.assert_close(vec.factors(), torch.cat([vec.head.weight.t(), vec.head.bias[None]]))


@pytest.mark.parametrize("static_value", [0.0, 1.0])
def test_partial_vector_mixes_with_its_static_values(static_value):
    torch.manual_seed(0)
    vec = DynamicVector(5, 4, "sigmoid", partial=True, static_value=static_value)
    assert torch.all(vec.mode.static == static_value)
    assert tuple(vec.mode.mask.shape) == (1, 4) and vec.mode.num_factors == 6
    [(name, mode, factors)] = vec.mode_pair("att")
    assert name == "att" and mode is vec.mode and tuple(factors.shape) == (6, 4)
    _randomise(vec)
    with torch.no_grad():
        vec.mode.mask.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    h = torch.randn(3, 5)
    v = torch.sigmoid(h @ vec.head.weight.t() + vec.head.bias)
    m = vec.mode.mask[0]
    expected = 1.3 * m * v + 0.4 * (1 - m) * vec.mode.static
    torch.testing.assert_close(vec(h, 1.0, 0.4, 1.3), expected)
    # static elements do not depend on the input; dynamic ones do
    out = vec(h).detach()
    assert torch.all(out[:, [1, 3]] == vec.mode.static[[1, 3]])
    assert not torch.allclose(out[0, [0, 2]], out[1, [0, 2]])


def test_mix_with_zero_semantics_drops_static_elements():
    mode = PartialMode((4,), 3, semantics="zero")
    assert mode.static is None
    with torch.no_grad():
        mode.mask.copy_(torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    values = torch.arange(8.0).reshape(2, 4) + 1
    torch.testing.assert_close(mode.mix(values, 0.5, 2.0), values * torch.tensor([0.0, 2.0, 2.0, 0.0]))
    full = PartialMode((4,), 3, static_init=torch.full((4,), 9.0))
    torch.testing.assert_close(full.mix(values), values)  # all-ones mask: the dynamic values


# ----------------------------------------------------------------------------- partition & counting


def _pad_model(conv_type, seed=0, **options):
    torch.manual_seed(seed)
    make = conv_factory(conv_type, **options)
    return nn.Sequential(
        make(4, 6, 3, 1, 1, bias=False),
        nn.ReLU(),
        make(6, 6, 3, 2, 1, groups=6, bias=True),
        nn.ReLU(),
        make(6, 4, 1, 1, 0, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


_PAD_MODELS = [("pad-condconv", {}), ("pad-odconv", {}), ("pad-odconv", {"num_kernels": 1}), ("pad-dcd", {})]
_PAD_MODEL_IDS = ["pad-condconv", "pad-odconv-k4", "pad-odconv-k1", "pad-dcd"]
_VECTOR_MASKS = {
    "pad-odconv": ("attention.channel.mode", "attention.filter.mode", "attention.spatial.mode"),
    "pad-dcd": ("scale.mode", "fusion.mode"),
    "pad-condconv": (),
}


def test_masked_tensors_lists_each_odconv_mask_once():
    # regression: OmniAttention once had a mode_pairs() of its own, so masked_tensors (which asks every
    # submodule) listed the attention masks of PAD-ODConv twice.
    model = _pad_model("pad-odconv")
    masks = [mode.mask for _, mode, _ in masked_tensors(model)]
    assert len({id(m) for m in masks}) == len(masks), [name for name, _, _ in masked_tensors(model)]
    assert len(masks) == len(partial_modes(model))


@pytest.mark.parametrize("kappa,scope", [(0.1, "global"), (0.55, "global"), (0.3, "local")])
@pytest.mark.parametrize("conv_type,options", _PAD_MODELS, ids=_PAD_MODEL_IDS)
def test_random_partition_reaches_the_exact_ratio(conv_type, options, kappa, scope):
    model = _pad_model(conv_type, **options)
    report = padnet.partition(model, kappa, method="random", scope=scope, seed=1)
    modes = partial_modes(model)
    names = [name for name, _ in modes]
    for suffix in _VECTOR_MASKS[conv_type]:  # the attention-vector / Λ / Φ masks take part
        assert any(name.endswith(suffix) for name in names), suffix
    masks = [mode.mask for _, mode in modes]
    assert all(torch.all((m == 0) | (m == 1)) for m in masks)
    total = sum(m.numel() for m in masks)
    dynamic = sum(int(m.sum()) for m in masks)
    if scope == "global":
        assert dynamic == round(kappa * total)
    else:
        assert all(int(m.sum()) == round(kappa * m.numel()) for m in masks)
    assert (report.dynamic, report.total) == (dynamic, total)
    assert len(report.layers) == len(masks)
    # the partitioned model still runs and its vector masks really were partitioned
    assert model(_input(batch=2)).shape == (2, 4)
    vector_masks = [
        mode.mask
        for name, mode in modes
        if _VECTOR_MASKS[conv_type] and name.endswith(_VECTOR_MASKS[conv_type])
    ]
    assert not vector_masks or any(torch.any(m == 0) for m in vector_masks)


@pytest.mark.parametrize("conv_type,options", _PAD_MODELS, ids=_PAD_MODEL_IDS)
def test_snip_partition_scores_every_mask(conv_type, options):
    model = _pad_model(conv_type, **options)
    gen = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(3, 4, 8, 8, generator=gen), torch.randint(0, 4, (3,), generator=gen)) for _ in range(2)
    ]
    padnet.partition(model, 0.4, method="mp", data=data, num_batches=2)
    masks = [mode.mask for _, mode in partial_modes(model)]
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == round(0.4 * total)


def test_count_parameters_of_pad_odconv_by_hand():
    layer = PADODConv2d(4, 6, 3, padding=1, num_kernels=4)
    # hidden = max(4 // 16, 16) = 16; every head has (16 + 1) factors per element
    dynamic_params = {
        "weight": 4 * 6 * 4 * 9,
        "attention.fc": 4 * 16,
        "channel head": 17 * 4,
        "filter head": 17 * 6,
        "spatial head": 17 * 9,
        "kernel head": 17 * 4,
        "phi": 1,
    }
    statics = 6 * 4 * 9 + 4 + 6 + 9  # Θ̄ and the static attention values
    assert padnet.count_parameters(layer, compact=False) == sum(dynamic_params.values()) + statics
    assert padnet.count_parameters(layer) == sum(dynamic_params.values()) == 1320  # M = 1: no static stored
    with torch.no_grad():
        layer.weight_mode.mask.view(-1)[:10] = 0.0  # 10 kernel positions static: -4·10 dynamic, +10 static
        layer.attention.channel.mode.mask.view(-1)[:1] = 0.0
        layer.attention.filter.mode.mask.view(-1)[:2] = 0.0
        layer.attention.spatial.mode.mask.view(-1)[:3] = 0.0
    # each static attention element drops its 17 head parameters and stores 1 static value
    assert padnet.count_parameters(layer) == 1320 - 4 * 10 + 10 - (17 - 1) * (1 + 2 + 3)
    assert padnet.count_parameters(layer, compact=False) == sum(dynamic_params.values()) + statics


def test_count_parameters_of_pad_dcd_by_hand():
    layer = PADDCDConv2d(4, 6, 3, padding=1)
    # L = 2, hidden = max(max(4, 4) // 16, 4) = 4: 5 factors per Λ / Φ element
    dynamic_params = {
        "W0": 6 * 4 * 9,
        "q": 2 * 4,
        "p": 6 * 2,
        "fc": 4 * 4,
        "scale head": 5 * 6,
        "fusion head": 5 * 4,
        "phi": 1,
        "latent BatchNorms": 2 * 2 * 2,
    }
    assert padnet.count_parameters(layer) == sum(dynamic_params.values()) == 311
    assert padnet.count_parameters(layer, compact=False) == 311 + 6 + 4
    with torch.no_grad():
        layer.scale.mode.mask.view(-1)[[0, 3, 5]] = 0.0
        layer.fusion.mode.mask.view(-1)[[1]] = 0.0
    assert padnet.count_parameters(layer) == 311 - (5 - 1) * 4


@pytest.mark.parametrize("conv_type", ["pad-odconv", "pad-dcd"])
def test_count_parameters_drops_a_head_row_per_static_vector_element(conv_type):
    model = _pad_model(conv_type)
    full = padnet.count_parameters(model)
    assert full == sum(p.numel() for name, p in model.named_parameters() if not name.endswith("static"))
    expected = full
    vectors = [m for m in model.modules() if isinstance(m, DynamicVector) and m.mode.partial]
    assert vectors
    with torch.no_grad():
        for i, vec in enumerate(vectors):
            n_static = 1 + i % 2
            vec.mode.mask.view(-1)[:n_static] = 0.0
            hidden = vec.head.in_features
            expected += n_static * (1 - (hidden + 1))
    assert padnet.count_parameters(model) == expected


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", _DYNAMIC_TYPES)
def test_unknown_option_names_the_option(name):
    with pytest.raises(ConfigError, match="bogus_option"):
        _build(name, 4, 4, 3, bogus_option=1)


@pytest.mark.parametrize("cls", [ODConv2d, DCDConv2d])
@pytest.mark.parametrize(
    "option,value", [("granularity", "kernel"), ("scale_mode", "none"), ("mask_semantics", "zero")]
)
def test_fully_dynamic_forms_reject_pad_options(cls, option, value):
    with pytest.raises(ConfigError, match=option):
        cls(4, 4, 3, padding=1, **{option: value})


def test_pad_dcd_rejects_kernel_granularity():
    with pytest.raises(ConfigError, match="granularity"):
        PADDCDConv2d(4, 4, 3, padding=1, granularity="kernel")
    with pytest.raises(ConfigError, match="granularity"):
        _build("pad-dcd", 4, 4, 3, granularity="kernel")
    assert "granularity" not in accepted_options("pad-dcd")


@pytest.mark.parametrize("name", ["condconv", "pad-condconv", "odconv", "pad-odconv"])
def test_zero_kernels_raise(name):
    with pytest.raises(ConfigError, match="num_kernels"):
        _build(name, 4, 4, 3, num_kernels=0)


@pytest.mark.parametrize("name", ["odconv", "pad-odconv", "dcd", "pad-dcd"])
def test_zero_reduction_raises_for_odconv_and_dcd(name):
    with pytest.raises(ConfigError, match="reduction"):
        _build(name, 4, 4, 3, reduction=0)


def test_zero_reduction_is_condconvs_single_linear_routing():
    assert (
        CONV_TYPES["condconv"][1]
        == CONDCONV
        == {"num_kernels": 8, "routing": "sigmoid", "reduction": 0, "temperature": 1.0}
    )  # a plain sigmoid
    assert CONV_TYPES["pad-condconv"] == (PADConv2d, CONDCONV)
    att = KernelAttention(4, 8, reduction=0, routing="sigmoid")
    assert [n for n, _ in att.named_parameters()] == ["fc2.weight", "fc2.bias"]
    with pytest.raises(ConfigError, match="reduction"):
        KernelAttention(4, 8, reduction=-1)


@pytest.mark.parametrize("name", ["odconv", "pad-odconv"])
@pytest.mark.parametrize("t", [0.0, -1.0])
def test_odconv_rejects_non_positive_temperature(name, t):
    with pytest.raises(ConfigError, match="temperature"):
        _build(name, 4, 4, 3, temperature=t)


@pytest.mark.parametrize("name", ["dcd", "pad-dcd"])
def test_layer_options_rejects_num_kernels_for_dcd(name):
    with pytest.raises(ConfigError, match="num_kernels"):
        layer_options(name, num_kernels=4)
    assert layer_options(name, num_kernels=None) == {}  # None = the type's default: fine


def test_layer_options_keeps_what_the_type_takes():
    values = {"num_kernels": 2, "reduction": 8, "temperature": 3.0, "routing": "softmax", "granularity": None}
    assert layer_options("dcd", reduction=8, num_kernels=None, temperature=3.0) == {"reduction": 8}
    assert layer_options("odconv", **values) == {"num_kernels": 2, "reduction": 8, "temperature": 3.0}
    assert layer_options("pad-odconv", **{**values, "granularity": "kernel"}) == {
        "num_kernels": 2,
        "reduction": 8,
        "temperature": 3.0,
        "granularity": "kernel",
    }
    assert layer_options("condconv", **values) == {
        "num_kernels": 2,
        "reduction": 8,
        "temperature": 3.0,
        "routing": "softmax",
    }
    assert layer_options("static", **values) == {}  # static convolutions ignore dynamic options
    assert layer_options("pad-dcd", scale_mode="none", reduction=None) == {"scale_mode": "none"}


_OPTION_VALUES = {
    "num_kernels": 2,
    "reduction": 2,
    "temperature": 2.0,
    "routing": "softmax",
    "formulation": "grouped",
    "granularity": "shared",
    "scale_mode": "none",
    "mask_semantics": "static",
    "mask_strategy": "same",
    "mask_temperature": 0.01,
    "threshold": 0.05,
}


def test_accepted_options_per_type():
    dy = ("num_kernels", "reduction", "temperature", "routing", "formulation")
    pad = ("granularity", "scale_mode", "mask_semantics")
    expected = {
        "static": (),
        "dy": dy,
        "pad": dy + pad,
        "condconv": dy,
        "pad-condconv": dy + pad,
        "odconv": ("num_kernels", "reduction", "temperature"),
        "pad-odconv": ("num_kernels", "reduction", "temperature") + pad,
        "dcd": ("reduction",),
        "pad-dcd": ("reduction", "scale_mode", "mask_semantics"),
    }
    for name, options in expected.items():
        assert accepted_options(name) == options, name


@pytest.mark.parametrize("name", _DYNAMIC_TYPES)
def test_every_accepted_option_is_taken_by_the_constructor(name):
    options = {key: _OPTION_VALUES[key] for key in accepted_options(name)}
    layer = _build(name, 4, 4, 3, **options)
    x = _input()
    assert layer(x).shape == (3, 4, 9, 9)
    if "num_kernels" in options:
        assert layer.num_kernels == 2
    if "scale_mode" in options:
        assert layer.scales.mode == "none"
    if "mask_strategy" in options:
        mode = layer.weight_mode
        assert (mode.strategy, mode.temperature, float(mode.threshold)) == ("same", 0.01, pytest.approx(0.05))


def test_conv_factory_defaults_and_overrides():
    assert conv_factory("static") is nn.Conv2d
    cond = conv_factory("condconv")(4, 6, 3)
    assert (
        type(cond) is DynamicConv2d and cond.num_kernels == 8 and cond.bias is not None
    )  # bias=True default
    assert conv_factory("condconv", num_kernels=3)(4, 6, 3).num_kernels == 3
    assert conv_factory("pad-odconv")(4, 6, 3).num_kernels == 4
    assert conv_factory("ODConv")(4, 6, 3, padding=1).attention.kernel.head.out_features == 4
    assert type(conv_factory("dcd")(4, 6, 3, 1, 1, bias=False)) is DCDConv2d
    with pytest.raises(ConfigError):
        conv_factory("no-such-conv")


# --------------------------------------------------------------------------------------------- gradients

_GRAD_GEOMETRY = [(4, 6, 3, 1, 1, True), (4, 4, 3, 2, 4, True), (4, 6, 1, 1, 2, False)]
_GRAD_IDS = ["3x3-bias", "dw-s2-bias", "1x1-g2"]


@pytest.mark.parametrize("geometry", _GRAD_GEOMETRY, ids=_GRAD_IDS)
@pytest.mark.parametrize("name,options", _CASES, ids=_CASE_IDS)
def test_gradients_reach_every_parameter(name, options, geometry):
    cin, cout, k, stride, groups, bias = geometry
    torch.manual_seed(0)
    layer = _build(name, cin, cout, k, stride, groups=groups, bias=bias, **options)
    _randomise(layer)
    if layer.partial:
        _set_masks(layer, _mixed_mask)
        _pad_phi(layer, 0.3)
    x = _input(cin).requires_grad_(True)
    out = layer(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(9))).sum().backward()
    assert x.grad is not None and torch.any(x.grad != 0)
    for pname, p in layer.named_parameters():
        assert p.requires_grad
        assert p.grad is not None, pname
        assert torch.any(p.grad != 0), pname
    # static elements: the dynamic factors get no gradient; dynamic elements: the static values get none
    for mname, mode in partial_modes(layer):
        on = mode.mask.mean(0) == 1
        assert torch.all(mode.static.grad[on] == 0), mname
    for vec in (m for m in layer.modules() if isinstance(m, DynamicVector) and m.mode.partial):
        off = vec.mode.mask[0] == 0
        assert torch.all(vec.head.weight.grad[off] == 0) and torch.all(vec.head.bias.grad[off] == 0)
    if (
        isinstance(getattr(layer, "weight_mode", None), PartialMode)
        and layer.weight_mode.granularity == "shared"
    ):
        off = (layer.weight_mode.mask == 0).expand_as(layer.weight)
        assert torch.all(layer.weight.grad[off] == 0)


def test_pad_odconv_gradients_with_kernel_granularity_and_zero_semantics():
    for options in ({"granularity": "kernel"}, {"mask_semantics": "zero"}):
        torch.manual_seed(0)
        layer = _build("pad-odconv", 4, 6, 3, bias=True, **options)
        _randomise(layer)
        _set_masks(layer, _mixed_mask)
        layer(_input()).square().sum().backward()
        for pname, p in layer.named_parameters():
            assert p.grad is not None and torch.any(p.grad != 0), (options, pname)
