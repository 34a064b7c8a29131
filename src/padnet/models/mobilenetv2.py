"""MobileNetV2 ("MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al. 2018) with
selectable convolutions.

Every convolution except the stem — expansion 1×1, depthwise 3×3, projection 1×1 and the final 1×1 to
1280 channels — is built by the `conv` factory, as in the dynamic-convolution papers; the classifier is
static. Channels are `width × base` rounded to a multiple of 8 (never down by more than 10 %); the last
layer keeps 1280 channels for widths ≤ 1. `stem="imagenet"`: 3×3/2 stem for 224×224 inputs;
`stem="small"`: 3×3/1 stem and stride 1 in the second stage, for 28×28 / 32×32 images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from padnet.models.init import init_weights

ConvFn = Callable[..., nn.Module]

# (expansion t, base channels c, blocks n, stride s of the first block)
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` to the nearest multiple of `divisor`, not below 90 % of it (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(
    conv: ConvFn, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers = [
        conv(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expansion (skipped for t = 1) → 3×3 depthwise → 1×1 linear projection, residual when shapes match."""

    def __init__(self, conv: ConvFn, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        layers = [_conv_bn(conv, in_ch, hidden, 1)] if expansion != 1 else []
        layers += [
            _conv_bn(conv, hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(conv, hidden, out_ch, 1, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with a static stem and classifier and `conv`-built convolutions everywhere else.

    Args:
        conv: factory with `nn.Conv2d`'s signature (see [`padnet.layers.registry.conv_factory`][padnet.layers.registry.conv_factory]).
        num_classes: classifier outputs.
        in_chans: input channels.
        width: width multiplier (paper Table 1: 0.5, 0.75, 1.0).
        stem: `"imagenet"` or `"small"`.
        dropout: dropout before the classifier (0.2 in Sandler et al.).

    Input (B, in_chans, H, W) → logits (B, num_classes).
    """

    def __init__(
        self,
        conv: ConvFn,
        num_classes: int = 1000,
        in_chans: int = 3,
        width: float = 1.0,
        stem: str = "imagenet",
        dropout: float = 0.2,
    ):
        super().__init__()
        stem_ch = make_divisible(32 * width)
        self.stem = _conv_bn(nn.Conv2d, in_chans, stem_ch, 3, 2 if stem == "imagenet" else 1)
        blocks, in_ch = [], stem_ch
        for i, (t, c, n, s) in enumerate(SETTINGS):
            out_ch = make_divisible(c * width)
            stride = 1 if (stem == "small" and i == 1) else s
            for j in range(n):
                blocks.append(InvertedResidual(conv, in_ch, out_ch, stride if j == 0 else 1, t))
                in_ch = out_ch
        self.num_features = make_divisible(LAST_CHANNELS * max(1.0, width))
        self.features = nn.Sequential(*blocks, _conv_bn(conv, in_ch, self.num_features, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self, linear_std=0.01)

    def get_classifier(self) -> nn.Module:
        """The (static) classification layer."""
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))
