"""`create_model` and `list_models` by name, in the spirit of timm."""

from __future__ import annotations

import fnmatch
import math

from torch import nn

from padnet.errors import ConfigError, check_choice
from padnet.layers.registry import conv_factory, resolve_conv
from padnet.layers.surgery import replace_convs
from padnet.models.mobilenetv2 import MobileNetV2
from padnet.models.pretrained import load_pretrained_weights
from padnet.models.resnet import DEPTHS, ResNet

MODELS = (*(f"resnet{d}" for d in DEPTHS), "mobilenetv2")
STEMS = ("imagenet", "small")


def list_models(pattern: str = "*") -> list[str]:
    """Model names `create_model` builds, filtered by a glob `pattern` (e.g. `"resnet*"`)."""
    return sorted(
        (m for m in MODELS if fnmatch.fnmatch(m, pattern)), key=lambda m: (m.rstrip("0123456789"), len(m), m)
    )


def create_model(
    name: str,
    conv: str = "static",
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
    stem: str = "imagenet",
    pretrained=None,
    **conv_options,
) -> nn.Module:
    """Build a model whose convolutions (all but the stem) are of type `conv`.

    Args:
        name: `"resnet10"`, `"resnet18"`, `"resnet34"`, `"resnet50"` or `"mobilenetv2"`.
        conv: `"static"`, `"dy"` (DY-Conv, k = 4), `"pad"` (PAD-Net, k = 4), `"condconv"` (k = 8),
            `"odconv"`, `"dcd"`, `"pad-condconv"`, `"pad-odconv"`, `"pad-dcd"` or a registered type.
        num_classes: classifier outputs.
        in_chans: input channels.
        width: width multiplier (> 0): ResNet stage widths, MobileNetV2 ×0.5 / ×0.75 / ×1.0.
        stem: `"imagenet"` (224×224 inputs) or `"small"` (28×28 / 32×32).
        pretrained: a state dict, or a `.safetensors` / tensors-only `torch.save` file, in padnet's,
            torchvision's or timm's key layout ([`padnet.models.pretrained`][padnet.models.pretrained]),
            mapped by name. The static model is loaded, then its convolutions (all but the stem) become `conv`
            layers that start from the pretrained kernels (`padnet.convert`); a classifier for another number
            of classes stays fresh.
        **conv_options: options of the dynamic layers (`num_kernels`, `reduction`, `temperature`,
            `granularity`, `scale_mode`).

    Raises:
        ConfigError: unknown model, conv type or stem; non-positive width; pretrained weights whose first
            misfitting key is named.
        CheckpointError: unreadable pretrained weights.
    """
    check_choice("model", name.lower(), MODELS)
    check_choice("stem", stem, STEMS)
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ConfigError(f"width multiplier must be > 0, got {width}")
    if pretrained is not None:
        model = create_model(name, "static", num_classes, in_chans, width, stem)
        load_pretrained_weights(model, pretrained, name)
        if resolve_conv(conv)[0] is not nn.Conv2d:
            replace_convs(model, conv, **conv_options)
        model.padnet_config = {
            "name": name,
            "conv": conv,
            "num_classes": num_classes,
            "in_chans": in_chans,
            "width": width,
            "stem": stem,
            **conv_options,
        }
        return model
    factory = conv_factory(conv, **conv_options)
    if name.lower() == "mobilenetv2":
        model = MobileNetV2(factory, num_classes, in_chans, width, stem)
    else:
        model = ResNet(int(name.lower().removeprefix("resnet")), factory, num_classes, in_chans, width, stem)
    # the arguments that rebuild this architecture (recorded by padnet.save_pretrained)
    model.padnet_config = {
        "name": name,
        "conv": conv,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "width": width,
        "stem": stem,
        **conv_options,
    }
    return model
