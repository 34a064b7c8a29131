"""Model zoo: ``create_model``, the ResNet family and MobileNetV2."""

from .mobilenetv2 import MobileNetV2
from .registry import MODELS, create_model
from .resnet import ResNet

__all__ = ["MODELS", "MobileNetV2", "ResNet", "create_model"]
