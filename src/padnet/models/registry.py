"""``create_model`` by name, in the spirit of ``timm.create_model``."""

from __future__ import annotations

import math

from torch import nn

from ..errors import ConfigError, check_choice
from ..layers.registry import conv_factory
from .mobilenetv2 import MobileNetV2
from .resnet import DEPTHS, ResNet

MODELS = (*(f"resnet{d}" for d in DEPTHS), "mobilenetv2")
STEMS = ("imagenet", "small")


def create_model(
    name: str,
    conv: str = "static",
    num_classes: int = 1000,
    in_chans: int = 3,
    width: float = 1.0,
    stem: str = "imagenet",
    **conv_options,
) -> nn.Module:
    """Build a model whose convolutions (all but the stem) are of type ``conv``.

    Args:
        name: ``"resnet10"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"mobilenetv2"``.
        conv: ``"static"``, ``"dy"`` (DY-Conv, k = 4), ``"pad"`` (PAD-Net, k = 4), ``"condconv"`` (k = 8),
            ``"odconv"``, ``"dcd"``, ``"pad-condconv"``, ``"pad-odconv"``, ``"pad-dcd"`` or a registered type.
        num_classes, in_chans: classifier outputs and input channels.
        width: width multiplier (> 0): ResNet stage widths, MobileNetV2 ×0.5 / ×0.75 / ×1.0.
        stem: ``"imagenet"`` (224×224 inputs) or ``"small"`` (28×28 / 32×32).
        **conv_options: options of the dynamic layers (``num_kernels``, ``reduction``, ``temperature``,
            ``granularity``, ``scale_mode``).

    Raises:
        ConfigError: unknown model, conv type or stem; non-positive width.
    """
    check_choice("model", name.lower(), MODELS)
    check_choice("stem", stem, STEMS)
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ConfigError(f"width multiplier must be > 0, got {width}")
    factory = conv_factory(conv, **conv_options)
    if name.lower() == "mobilenetv2":
        model = MobileNetV2(factory, num_classes, in_chans, width, stem)
    else:
        model = ResNet(int(name.lower().removeprefix("resnet")), factory, num_classes, in_chans, width, stem)
    # the arguments that rebuild this architecture (used by padnet.save_deployed / load_deployed)
    model.padnet_config = {"name": name, "conv": conv, "num_classes": num_classes, "in_chans": in_chans,
                           "width": width, "stem": stem, **conv_options}
    return model
