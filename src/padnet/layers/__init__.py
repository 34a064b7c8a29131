"""Dynamic layers and the PAD-Net mask / static / scale-factor logic."""

from .attention import KernelAttention, TemperatureRouting, TemperatureSchedule, set_temperature
from .autotune import autotune
from .conv_base import DynamicConvBase
from .dcd import DCDConv2d, PADDCDConv2d
from .deployed import DeployedConv2d
from .dynamic_conv import DynamicConv2d, PADConv2d
from .modes import FullyDynamic, PartialMode, ScaleFactors, partial_modes
from .odconv import ODConv2d, OmniAttention, PADODConv2d
from .registry import CONV_TYPES, accepted_options, conv_factory, layer_options, register_conv
from .vectors import DynamicVector

__all__ = [
    "CONV_TYPES",
    "DCDConv2d",
    "DeployedConv2d",
    "DynamicConv2d",
    "DynamicConvBase",
    "DynamicVector",
    "FullyDynamic",
    "KernelAttention",
    "ODConv2d",
    "OmniAttention",
    "PADConv2d",
    "PADDCDConv2d",
    "PADODConv2d",
    "PartialMode",
    "ScaleFactors",
    "TemperatureRouting",
    "TemperatureSchedule",
    "accepted_options",
    "autotune",
    "conv_factory",
    "layer_options",
    "partial_modes",
    "register_conv",
    "set_temperature",
]
