"""padnet: partially dynamic networks for PyTorch.

DY-Conv, CondConv, ODConv, DCD and their PAD-Net forms (`padnet.layers`), Iterative Mode Partition (`padnet.partition`, module `padnet.partitioning`),
model building and conversion (`create_model`, `convert`), accounting (`count_parameters`,
`count_flops`), a trainer (`padnet.training.engine`), the fastest formulation per layer (`autotune`), the compact
deployment form (`deploy`), one file format for every model (`save_pretrained`, `load_pretrained`) and export (`export_onnx`,
`export_torchscript`); Mixture-of-Experts, PAD-MoE and MoE-P for Hugging Face encoders with GLUE fine-tuning
(`padnet.training.nlp`, needs the `nlp` extra). Importing padnet touches no network and no data.
"""

from padnet.adapter.config import PadConfig
from padnet.adapter.methods import PadTraining
from padnet.adapter.model import PadModel, convert, get_pad_model, load_pretrained, save_pretrained
from padnet.deployment.deploy import deploy
from padnet.deployment.export import export_onnx, export_torchscript
from padnet.layers import (
    DCDConv2d,
    DeployedConv2d,
    DynamicConv2d,
    ODConv2d,
    PADConv2d,
    PADDCDConv2d,
    PADODConv2d,
    autotune,
    set_temperature,
)
from padnet.metrics import count_flops, count_parameters
from padnet.models import create_model, list_models
from padnet.partitioning import PartitionReport, partition

__version__ = "0.1.0"

__all__ = [
    "DCDConv2d",
    "DeployedConv2d",
    "DynamicConv2d",
    "ODConv2d",
    "PADConv2d",
    "PADDCDConv2d",
    "PADODConv2d",
    "PadConfig",
    "PadModel",
    "PadTraining",
    "PartitionReport",
    "autotune",
    "convert",
    "count_flops",
    "count_parameters",
    "create_model",
    "deploy",
    "export_onnx",
    "export_torchscript",
    "get_pad_model",
    "list_models",
    "load_pretrained",
    "partition",
    "save_pretrained",
    "set_temperature",
]
