"""ResNet-10/18/34/50 ("Deep Residual Learning", He et al. 2016) with selectable convolutions.

Stride placement is ResNet "v1" (the stride of a downsampling bottleneck sits on its first 1×1), which
gives the 3.86 GMACs of ResNet-50 that the PAD-Net paper reports (torchvision's "v1.5" puts it on the 3×3).
`stem="imagenet"`: 7×7/2 convolution + 3×3/2 max-pool; `stem="small"`: one 3×3/1 convolution, no
pooling, for 28×28 / 32×32 images. The stem and the classifier are always static.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from padnet.models.init import init_weights

ConvFn = Callable[..., nn.Module]

# depth -> (block, blocks per stage)
DEPTHS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


class BasicBlock(nn.Module):
    """Two 3×3 convolutions; stride on the first."""

    expansion = 1

    def __init__(self, conv: ConvFn, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = conv(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(conv, in_ch, out_ch, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 (×4 expansion); ResNet v1: stride on the first 1×1."""

    expansion = 4

    def __init__(self, conv: ConvFn, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = conv(in_ch, width, 1, stride, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv(width, out_ch, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(conv, in_ch, out_ch, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(conv: ConvFn, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(conv(in_ch, out_ch, 1, stride, 0, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """ResNet with a static stem and classifier and `conv`-built convolutions everywhere else.

    Args:
        depth: 10, 18, 34 or 50.
        conv: factory with `nn.Conv2d`'s signature (see [`padnet.layers.registry.conv_factory`][padnet.layers.registry.conv_factory]).
        num_classes: classifier outputs.
        in_chans: input channels (1 for Fashion-MNIST).
        width: width multiplier on the stage widths 64-128-256-512.
        stem: `"imagenet"` or `"small"`.

    Input (B, in_chans, H, W) → logits (B, num_classes).
    """

    def __init__(
        self,
        depth: int,
        conv: ConvFn,
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        stem: str = "imagenet",
    ):
        super().__init__()
        kind, layers = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        widths = [max(1, round(64 * width * 2**i)) for i in range(4)]
        stem_ch = widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_ch, 7, 2, 3, bias=False),
                nn.BatchNorm2d(stem_ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_ch, 3, 1, 1, bias=False),
                nn.BatchNorm2d(stem_ch),
                nn.ReLU(inplace=True),
            )
        stages, in_ch = [], stem_ch
        for i, (w, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(conv, in_ch, w, 2 if (i > 0 and j == 0) else 1))
                in_ch = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.num_features = in_ch
        init_weights(self)

    def get_classifier(self) -> nn.Module:
        """The (static) classification layer."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
