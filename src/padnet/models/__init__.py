"""Model zoo: ``create_model`` and the ResNet family."""

from .registry import MODELS, create_model
from .resnet import ResNet

__all__ = ["MODELS", "ResNet", "create_model"]
