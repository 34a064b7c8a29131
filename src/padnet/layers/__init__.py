"""Dynamic layers and the PAD-Net mask / static / scale-factor logic."""

from padnet.layers.attention import KernelAttention, TemperatureRouting, TemperatureSchedule, set_temperature
from padnet.layers.autotune import autotune
from padnet.layers.conv_base import DynamicConvBase
from padnet.layers.dcd import DCDConv2d, PADDCDConv2d
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.dynamic_conv import DynamicConv2d, PADConv2d
from padnet.layers.modes import FullyDynamic, PartialMode, ScaleFactors, partial_modes
from padnet.layers.odconv import ODConv2d, OmniAttention, PADODConv2d
from padnet.layers.registry import CONV_TYPES, accepted_options, conv_factory, layer_options, register_conv
from padnet.layers.vectors import DynamicVector

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
