"""MobileNetV2: the paper's static counts for every width, layer types, stems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from padnet.layers import DynamicConvBase, PADConv2d
from padnet.metrics import count_flops, count_parameters
from padnet.models import MobileNetV2, create_model
from padnet.models.mobilenetv2 import make_divisible


@pytest.mark.parametrize(
    "width,params,macs",
    [(0.5, 1_968_680, 97_131_840), (0.75, 2_636_424, 209_069_792), (1.0, 3_504_872, 300_774_272)],
)
def test_static_counts_match_paper_table_1(width, params, macs):
    # paper: 2.0M / 97.0M, 2.64M / 209.1M, 3.5M / 300.8M (classifier included)
    model = create_model("mobilenetv2", width=width)
    assert count_parameters(model) == params
    assert count_flops(model, (3, 224, 224)) == macs


def test_make_divisible():
    assert [make_divisible(c * 0.75) for c in (32, 16, 24, 96, 320)] == [24, 16, 24, 72, 240]
    assert make_divisible(9.0) == 16  # rounding down to 8 would lose more than 10 %


@pytest.mark.parametrize("conv", ["dy", "pad", "condconv", "odconv", "pad-odconv", "dcd", "pad-dcd"])
def test_every_conv_but_the_stem_is_of_the_chosen_type(conv):
    model = create_model("mobilenetv2", conv=conv, width=0.35, num_classes=10, in_chans=1, stem="small")
    static = [m for m in model.modules() if type(m) is nn.Conv2d]
    dynamic = [m for m in model.modules() if isinstance(m, DynamicConvBase)]
    assert static == [model.stem[0]]
    # 17 blocks: the first has 2 convolutions, the other 16 have 3, plus the final 1×1 → 51
    assert len(dynamic) == 51
    assert sum(m.depthwise for m in dynamic) == 17
    assert isinstance(model.get_classifier(), nn.Linear)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("stem,size,final", [("imagenet", 224, 7), ("small", 28, 4), ("small", 32, 4)])
def test_stems_downsample_as_documented(stem, size, final):
    model = MobileNetV2(nn.Conv2d, num_classes=3, width=0.25, stem=stem).eval()
    features = model.features(model.stem(torch.randn(1, 3, size, size)))
    assert features.shape[-1] == final


def test_dynamic_kernels_start_like_static_ones():
    torch.manual_seed(0)
    model = create_model("mobilenetv2", conv="pad", width=0.5)
    layer = model.features[3].block[0][0]
    assert isinstance(layer, PADConv2d)
    fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
    expected = (2.0 / fan_out) ** 0.5  # Kaiming normal, fan-out, ReLU
    for tensor in (*layer.weight, layer.weight_mode.static):
        assert tensor.std().item() == pytest.approx(expected, rel=0.1)
