"""Model zoo: `create_model`, `list_models`, the ResNet family and MobileNetV2, pretrained weights."""

from padnet.models.mobilenetv2 import MobileNetV2
from padnet.models.pretrained import load_pretrained as load_pretrained  # deprecated alias, removed in 0.3.0
from padnet.models.pretrained import load_pretrained_weights
from padnet.models.registry import MODELS, create_model, list_models
from padnet.models.resnet import ResNet

__all__ = ["MODELS", "MobileNetV2", "ResNet", "create_model", "list_models", "load_pretrained_weights"]
