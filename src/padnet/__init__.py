"""padnet: partially dynamic networks for PyTorch.

DY-Conv, CondConv, ODConv, DCD and their PAD-Net forms (``padnet.layers``), Iterative Mode Partition (``padnet.partition``, module ``padnet.partitioning``),
model building and conversion (``create_model``, ``convert``), accounting (``count_parameters``,
``count_flops``) and a trainer (``padnet.engine``). Importing padnet touches no network and no data.
"""

from .convert import convert
from .layers import DCDConv2d, DynamicConv2d, ODConv2d, PADConv2d, PADDCDConv2d, PADODConv2d, set_temperature
from .metrics import count_flops, count_parameters
from .models import create_model
from .partitioning import PartitionReport, partition

__version__ = "0.1.0"

__all__ = [
    "DCDConv2d", "DynamicConv2d", "ODConv2d", "PADConv2d", "PADDCDConv2d", "PADODConv2d", "PartitionReport",
    "convert", "count_flops", "count_parameters", "create_model", "partition", "set_temperature",
]
