"""Tests of padnet.convert and padnet.models.create_model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import padnet
from padnet import convert
from padnet.errors import ConfigError
from padnet.layers import DynamicConv2d, PADConv2d
from padnet.models import create_model

CLASSES = {"dy": DynamicConv2d, "pad": PADConv2d}


class UserNet(nn.Module):
    """A user model with nested modules, grouped/strided/1x1 convolutions and biases."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.body = nn.Sequential(
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=True),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Conv2d(8, 6, 1, bias=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
        )

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def _user_net():
    torch.manual_seed(0)
    net = UserNet()
    with torch.no_grad():  # non-trivial BN statistics for eval mode
        net.body[0].running_mean.uniform_(-0.5, 0.5)
        net.body[0].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _conv_names(model, cls=nn.Conv2d, exact=True):
    return [n for n, m in model.named_modules() if (type(m) is cls if exact else isinstance(m, cls))]


def _x(c=3, size=12, batch=4):
    return torch.randn(batch, c, size, size, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------- convert


@pytest.mark.parametrize("conv", ["dy", "pad"])
def test_convert_user_model_keeps_outputs(conv):
    net = _user_net()
    x = _x()
    before = net(x)
    originals = {n: m for n, m in net.named_modules() if type(m) is nn.Conv2d}
    out = convert(net, conv, temperature_start=1.0)
    assert out is net
    assert _conv_names(net) == ["stem"]
    converted = _conv_names(net, CLASSES[conv])
    assert converted == ["body.2", "body.4", "head.0"]
    for name in converted:
        layer, orig = net.get_submodule(name), originals[name]
        assert layer.groups == orig.groups and layer.stride == orig.stride and layer.dilation == orig.dilation
        assert (layer.bias is None) == (orig.bias is None)
    net.eval()
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", ["dy", "pad"])
def test_convert_resnet_keeps_outputs(conv):
    torch.manual_seed(0)
    model = create_model("resnet10", num_classes=4, width=0.125, stem="small").eval()
    n_convs = len(_conv_names(model))
    x = _x(size=8)
    before = model(x)
    convert(model, conv, temperature_start=30.0)
    assert _conv_names(model) == ["stem.0"]
    assert len(_conv_names(model, CLASSES[conv])) == n_convs - 1
    assert isinstance(model.fc, nn.Linear)
    model.eval()
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_convert_without_static_init_changes_outputs():
    net = _user_net()
    x = _x()
    before = net(x)
    convert(net, "dy", init_from_pretrained=False)
    assert not torch.allclose(net(x), before, atol=1e-3)


def test_convert_all_targets_converts_the_stem():
    net = _user_net()
    convert(net, "pad", target_modules="all")
    assert _conv_names(net) == []
    assert isinstance(net.stem, PADConv2d)


@pytest.mark.parametrize(
    "patterns,static",
    [
        (("head.*",), ["stem", "head.0"]),
        (("body.*",), ["stem", "body.2", "body.4"]),
        (("body.4", "head.0"), ["stem", "body.4", "head.0"]),
        (("*.2",), ["stem", "body.2"]),
    ],
)
def test_convert_respects_exclude(patterns, static):
    net = _user_net()
    convert(net, "pad", exclude_modules=list(patterns))
    assert _conv_names(net) == static
    assert len(_conv_names(net, PADConv2d)) == 4 - len(static)


def test_convert_min_channels():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3))
    convert(net, "dy", min_channels=8)
    assert [type(m) for m in net] == [nn.Conv2d, nn.Conv2d, DynamicConv2d]


def test_convert_passes_layer_options():
    net = _user_net()
    convert(net, "pad", num_kernels=3, granularity="kernel", temperature_start=7.0)
    layer = net.get_submodule("head.0")
    assert layer.num_kernels == 3 and layer.weight.shape[0] == 3
    assert layer.weight_mode.mask.shape[0] == 3
    assert float(layer.attention.temperature) == 7.0


def test_convert_is_get_pad_model_without_the_wrapper():
    net, other = _user_net(), _user_net()
    assert convert(net, "pad", layer_options={"formulation": "batched"}) is net
    pad = padnet.get_pad_model(other, method="pad", layer_options={"formulation": "batched"})
    assert [type(m) for m in net.modules()] == [type(m) for m in pad.base_model.modules()]
    assert net.get_submodule("head.0").formulation == "batched"
    with pytest.raises(ConfigError, match="unknown method 'static'"):
        convert(_user_net(), "static")


@pytest.mark.parametrize("conv", ["dynamic-conv", "cond-conv", ""])
def test_convert_unknown_conv_raises(conv):
    with pytest.raises(ConfigError):
        convert(_user_net(), conv)


def test_convert_nothing_to_convert_raises():
    with pytest.raises(ConfigError):
        convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "dy")
    with pytest.raises(ConfigError):
        convert(_user_net(), "dy", exclude_modules=["*"])


def test_from_conv_alone_refuses_reflect_padding_and_points_to_convert():
    conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ConfigError, match="padnet.convert supports every mode"):
        PADConv2d.from_conv(conv)


# ------------------------------------------------------------------------------------ create_model


@pytest.mark.parametrize("name", ["resnet101", "resnet", "vgg16", "resnet-18", ""])
def test_create_model_unknown_model(name):
    with pytest.raises(ConfigError):
        create_model(name, width=0.125)


@pytest.mark.parametrize("stem", ["cifar", "Small", ""])
def test_create_model_unknown_stem(stem):
    with pytest.raises(ConfigError):
        create_model("resnet10", width=0.125, stem=stem)


@pytest.mark.parametrize("width", [0, -0.5, float("nan")])
def test_create_model_bad_width(width):
    with pytest.raises(ConfigError):
        create_model("resnet10", width=width)


def test_create_model_unknown_conv():
    with pytest.raises(ConfigError):
        create_model("resnet10", conv="octave", width=0.125)


@pytest.mark.parametrize("conv,cls", [("pad", PADConv2d), ("padnet", PADConv2d), ("dy", DynamicConv2d)])
def test_create_model_dynamic_everywhere_but_stem(conv, cls):
    model = create_model("resnet18", conv=conv, width=0.125, num_classes=7)
    assert _conv_names(model) == ["stem.0"]
    dynamic = _conv_names(model, DynamicConv2d, exact=False)
    assert all(type(model.get_submodule(n)) is cls for n in dynamic)
    assert len(dynamic) == 8 * 2 + 3  # 8 basic blocks x 2 convs + 3 projection shortcuts
    assert type(model.fc) is nn.Linear and model.fc.out_features == 7
    with torch.no_grad():
        model.eval()
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_create_model_case_insensitive_and_options():
    model = create_model(
        "ResNet10",
        conv="pad",
        width=0.125,
        num_kernels=2,
        granularity="kernel",
        scale_mode="none",
        in_chans=1,
        stem="small",
    )
    layers = [m for m in model.modules() if isinstance(m, PADConv2d)]
    assert layers and all(m.num_kernels == 2 and m.weight_mode.granularity == "kernel" for m in layers)
    assert all(not list(m.scales.parameters()) for m in layers)
    assert model.stem[0].in_channels == 1
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 1000)
