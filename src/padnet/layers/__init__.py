"""Dynamic layers and the PAD-Net mask / static / scale-factor logic."""

from .attention import KernelAttention, TemperatureSchedule, set_temperature
from .dynamic_conv import DynamicConv2d, PADConv2d
from .modes import FullyDynamic, PartialMode, ScaleFactors, partial_modes
from .registry import CONV_TYPES, conv_factory, register_conv

__all__ = [
    "CONV_TYPES", "DynamicConv2d", "FullyDynamic", "KernelAttention", "PADConv2d", "PartialMode",
    "ScaleFactors", "TemperatureSchedule", "conv_factory", "partial_modes", "register_conv", "set_temperature",
]
