"""create_model(pretrained=...) and list_models: weights in torchvision's and timm's key layouts, mapped by name.

torchvision and timm cannot be imported here (DESIGN.md §5), so the tests build small modules with their module
names and computation (written from their documented architectures) and check that padnet's model loaded from
their state dict computes what they compute.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import padnet
from padnet.errors import CheckpointError, ConfigError


def _bn_relu(ch):
    return nn.BatchNorm2d(ch), nn.ReLU(inplace=True)


class TvBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TvResNet18(nn.Module):
    """torchvision's resnet18 names: conv1, bn1, layerN.M.{conv,bn}{1,2}, layerN.0.downsample.{0,1}, fc."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(TvBasicBlock(cin, w, 1 if i == 0 else 2), TvBasicBlock(w, w, 1)),
            )
            cin = w
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean((2, 3)))


# MobileNetV2 ×1.0: (expansion t, channels c, repeats n, stride s)
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _cbr(cin, cout, k, s, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class TvInvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [_cbr(cin, hidden, 1, 1)]
        layers += [
            _cbr(hidden, hidden, 3, stride, hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TvMobileNetV2(nn.Module):
    """torchvision's mobilenet_v2 names: features.0 (stem), features.1–17 (.conv), features.18, classifier.1."""

    def __init__(self, num_classes=1000):
        super().__init__()
        features, cin = [_cbr(3, 32, 3, 2)], 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                features.append(TvInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_cbr(cin, 1280, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class TimmIR(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.conv_pw, self.bn1 = nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv_pwl, self.bn3 = nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = torch.clamp(self.bn1(self.conv_pw(x)), 0, 6)
        y = self.bn3(self.conv_pwl(torch.clamp(self.bn2(self.conv_dw(y)), 0, 6)))
        return x + y if self.residual else y


class TimmDS(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_dw, self.bn1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.BatchNorm2d(cin)
        self.conv_pw, self.bn2 = nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn2(self.conv_pw(torch.clamp(self.bn1(self.conv_dw(x)), 0, 6)))


class TimmMobileNetV2(nn.Module):
    """timm's mobilenetv2_100 names: conv_stem/bn1, blocks.S.B.*, conv_head/bn2, classifier."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv_stem, self.bn1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32)
        stages, cin = [], 32
        for t, c, n, s in SETTINGS:
            blocks = []
            for i in range(n):
                blocks.append(TimmDS(cin, c) if t == 1 else TimmIR(cin, c, s if i == 0 else 1, t))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2 = nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.blocks(torch.clamp(self.bn1(self.conv_stem(x)), 0, 6))
        return self.classifier(torch.clamp(self.bn2(self.conv_head(x)), 0, 6).mean((2, 3)))


def _randomised(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return module.eval()


@pytest.mark.parametrize(
    "name, source",
    [("resnet18", TvResNet18), ("mobilenetv2", TvMobileNetV2), ("mobilenetv2", TimmMobileNetV2)],
)
def test_pretrained_weights_in_other_layouts_give_the_same_network(name, source, tmp_path):
    reference = _randomised(source())
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = padnet.create_model(name, pretrained=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)


def test_pretrained_then_converted_keeps_the_output_and_a_new_head_stays_fresh(tmp_path):
    reference = _randomised(TvResNet18())
    path = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), path)
    pad = padnet.create_model("resnet18", conv="pad", pretrained=path).eval()
    assert isinstance(pad.layer1[0].conv1, padnet.PADConv2d)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(pad(x), reference(x), atol=1e-4, rtol=1e-4)
    ten = padnet.create_model("resnet18", num_classes=10, pretrained=reference.state_dict())
    assert ten.fc.out_features == 10 and torch.equal(ten.stem[0].weight, reference.conv1.weight)


def test_pretrained_errors_name_the_first_key_that_does_not_fit(tmp_path):
    state = _randomised(TvResNet18()).state_dict()
    with pytest.raises(
        ConfigError,
        match=r"pretrained key 'stem.0.weight' has shape \(64, 3, 7, 7\); .* needs "
        r"\(16, 3, 3, 3\)",
    ):
        padnet.create_model("resnet18", width=0.25, stem="small", pretrained=state)
    with pytest.raises(ConfigError, match="pretrained key 'extra.weight' has no place"):
        padnet.create_model("resnet18", pretrained={**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="lack 'layer4.1.bn2.running_var'"):
        padnet.create_model(
            "resnet18", pretrained={k: v for k, v in state.items() if k != "layer4.1.bn2.running_var"}
        )
    with pytest.raises(ConfigError, match="ResNet v1.5"):
        padnet.create_model("resnet50", pretrained={"conv1.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(ConfigError, match="unrecognised pretrained key layout"):
        padnet.create_model("resnet18", pretrained={"encoder.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not found"):
        padnet.create_model("resnet18", pretrained=tmp_path / "missing.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="is not a readable state dict"):
        padnet.create_model("resnet18", pretrained=tmp_path / "bad.pt")


def test_list_models_filters_by_pattern():
    assert padnet.list_models() == ["mobilenetv2", "resnet10", "resnet18", "resnet34", "resnet50"]
    assert padnet.list_models("resnet*") == ["resnet10", "resnet18", "resnet34", "resnet50"]
    assert padnet.list_models("vit*") == []
