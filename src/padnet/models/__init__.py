"""Model zoo: ``create_model``, ``list_models``, the ResNet family and MobileNetV2, pretrained weights."""

from .mobilenetv2 import MobileNetV2
from .pretrained import load_pretrained
from .registry import MODELS, create_model, list_models
from .resnet import ResNet

__all__ = ["MODELS", "MobileNetV2", "ResNet", "create_model", "list_models", "load_pretrained"]
