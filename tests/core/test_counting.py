"""Tests of padnet.metrics.counting against the papers' numbers (ResNet-18/50, DY-ResNet-50, PAD-ResNet-50)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from padnet.layers import DynamicConv2d, PADConv2d
from padnet.metrics import count_flops, count_parameters
from padnet.models import create_model
from padnet.partitioning import partition

IMAGENET = (3, 224, 224)


def _fc_params(model):
    return sum(p.numel() for p in model.fc.parameters())


# ------------------------------------------------------------------------ ImageNet-size ResNets


@pytest.fixture(scope="module")
def resnet50_counts():
    model = create_model("resnet50")
    return count_parameters(model), _fc_params(model), count_flops(model, IMAGENET)


@pytest.fixture(scope="module")
def dy_resnet50_counts():
    model = create_model("resnet50", conv="dy", num_kernels=4, reduction=4)
    return count_parameters(model), count_parameters(model, compact=False), count_flops(model, IMAGENET)


@pytest.fixture(scope="module")
def pad_resnet50_counts():
    model = create_model("resnet50", conv="pad", num_kernels=4, reduction=4)
    report = partition(model, 0.3, "random", seed=0)
    return report, count_parameters(model), count_flops(model, IMAGENET)


def test_resnet50_parameters(resnet50_counts):
    params, fc, _ = resnet50_counts
    assert params == pytest.approx(25.6e6, rel=0.02)
    assert params - fc == pytest.approx(23.5e6, rel=0.02)
    assert fc == 2048 * 1000 + 1000


def test_resnet50_macs(resnet50_counts):
    assert resnet50_counts[2] == pytest.approx(3.86e9, rel=0.02)


def test_dy_resnet50(dy_resnet50_counts, resnet50_counts):
    params, full, macs = dy_resnet50_counts
    assert params == pytest.approx(100.9e6, rel=0.02)
    assert params == full  # nothing to compact in a fully dynamic model
    assert macs == pytest.approx(3.97e9, rel=0.02)
    assert macs > resnet50_counts[2]


def test_pad_resnet50_at_kappa_03(pad_resnet50_counts, dy_resnet50_counts, resnet50_counts):
    report, params, macs = pad_resnet50_counts
    assert report.dynamic == round(0.3 * report.total)
    assert macs == pytest.approx(3.90e9, rel=0.02)
    assert resnet50_counts[2] < macs < dy_resnet50_counts[2]
    assert params < dy_resnet50_counts[0]
    assert params > resnet50_counts[0]


def test_resnet18():
    model = create_model("resnet18")
    params = count_parameters(model)
    assert params == pytest.approx(11.7e6, rel=0.02)
    assert params - _fc_params(model) == pytest.approx(11.1e6, rel=0.02)  # the paper's 11.1M excludes fc
    assert count_flops(model, IMAGENET) == pytest.approx(1.81e9, rel=0.02)


# ------------------------------------------------------------------------------ compact params


def _tiny(conv="pad", seed=0, **options):
    torch.manual_seed(seed)
    return create_model(
        "resnet10", conv=conv, num_classes=5, in_chans=3, width=0.125, stem="small", **options
    )


def _hand_compact(model):
    """Static at non-dynamic positions + dynamic factors at dynamic positions + everything else."""
    skip, extra = set(), 0
    for name, module in model.named_modules():
        if not isinstance(module, PADConv2d):
            continue
        prefix = f"{name}." if name else ""
        k = module.num_kernels
        pairs = [("weight", module.weight_mode)]
        if module.bias is not None:
            pairs.append(("bias", module.bias_mode))
        for suffix, mode in pairs:
            skip.update({f"{prefix}{suffix}", f"{prefix}{suffix}_mode.static"})
            mask = mode.mask
            if mode.granularity == "shared":
                extra += k * int((mask == 1).sum()) + int((mask[0] == 0).sum())
            else:
                extra += int((mask == 1).sum()) + int((mask == 0).any(0).sum())
    rest = sum(p.numel() for n, p in model.named_parameters() if n not in skip)
    return rest + extra


@pytest.mark.parametrize("granularity", ["shared", "kernel"])
@pytest.mark.parametrize("kappa", [0.1, 0.3, 0.75])
def test_compact_parameters_match_hand_count(granularity, kappa):
    model = _tiny(granularity=granularity)
    partition(model, kappa, "random", seed=3)
    assert count_parameters(model) == _hand_compact(model)
    assert count_parameters(model, compact=False) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) < count_parameters(model, compact=False)


def test_compact_parameters_with_biases():
    torch.manual_seed(0)
    model = nn.Sequential(
        PADConv2d(3, 6, 3, padding=1, bias=True),
        nn.ReLU(),
        PADConv2d(6, 6, 3, padding=1, bias=True, granularity="kernel"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    partition(model, 0.4, "random", seed=1, scope="local")
    assert count_parameters(model) == _hand_compact(model)


def test_full_mask_pad_equals_dy_plus_phi():
    dy, pad = _tiny("dy"), _tiny("pad")
    n_pad = sum(isinstance(m, PADConv2d) for m in pad.modules())
    assert n_pad == sum(isinstance(m, DynamicConv2d) for m in dy.modules()) > 0
    assert count_parameters(pad) == count_parameters(dy) + n_pad
    partition(pad, 1.0, "random")
    assert count_parameters(pad) == count_parameters(dy) + n_pad


def test_zero_semantics_counts_no_static():
    pad = _tiny("pad", mask_semantics="zero")
    partition(pad, 0.3, "random")
    dy = _tiny("dy")
    dynamic = sum(
        int(m.weight_mode.mask.sum()) * m.num_kernels for m in pad.modules() if isinstance(m, PADConv2d)
    )
    kernels = sum(m.weight.numel() for m in dy.modules() if isinstance(m, DynamicConv2d))
    n_pad = sum(isinstance(m, PADConv2d) for m in pad.modules())
    assert count_parameters(pad) == count_parameters(dy) - kernels + dynamic + n_pad


def _conv_macs(cin, cout, k, h, w, groups=1):
    return cout * h * w * (cin // groups) * k * k


@pytest.mark.parametrize("formulation", ["auto", "grouped"])
def test_single_layer_macs_by_hand(formulation):
    # 8 -> 16 channels, 3x3, 10x10 map, k = 4, attention hidden = max(8 // 4, 4) = 4
    conv_macs = _conv_macs(8, 16, 3, 10, 10)
    attention = 8 * 4 + 4 * 4
    elements = 16 * 8 * 3 * 3
    shape = (8, 10, 10)

    static = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False))
    assert count_flops(static, shape) == conv_macs

    dy = nn.Sequential(DynamicConv2d(8, 16, 3, padding=1, formulation=formulation))
    assert count_flops(dy, shape) == conv_macs + attention + 4 * elements

    pad = nn.Sequential(PADConv2d(8, 16, 3, padding=1, formulation=formulation))
    with torch.no_grad():
        mask = pad[0].weight_mode.mask
        mask.zero_()
        mask.view(-1)[: elements // 4] = 1.0
    assert count_flops(pad, shape) == conv_macs + attention + 4 * (elements // 4)
    assert count_flops(pad, shape, compact=False) == conv_macs + attention + 4 * elements


def test_count_flops_ignores_batch_size_cache_and_restores_mode():
    model = _tiny()
    partition(model, 0.3, "random")
    fresh = count_flops(copy.deepcopy(model), (3, 8, 8))
    model.eval()
    with torch.no_grad():
        for batch in (8, 2, 1):
            model(torch.randn(batch, 3, 8, 8))  # fills the per-shape formulation cache
    model.train()
    assert count_flops(model, (3, 8, 8)) == fresh
    assert model.training
    model.eval()
    assert count_flops(model, (3, 8, 8)) == fresh
    assert not model.training


@pytest.mark.parametrize("formulation", ["auto", "batched"])
def test_count_flops_does_not_depend_on_formulation(formulation):
    grouped = _tiny(formulation="grouped")
    other = _tiny(formulation=formulation)
    other.load_state_dict(grouped.state_dict())
    for model in (grouped, other):
        partition(model, 0.3, "random")
    assert count_flops(other, (3, 8, 8)) == count_flops(grouped, (3, 8, 8))
