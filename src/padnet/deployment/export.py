"""Export to ONNX and TorchScript with a dynamic batch dimension.

The grouped formulation convolves with groups = batch × groups, which an exported graph freezes to the
example's batch size. Export therefore runs every dynamic convolution in the batched formulation
(one convolution with (k + 1)·Cout outputs and a π-weighted sum; see [`padnet.layers.formulations`][padnet.layers.formulations]),
whose graph has no batch-sized attribute. ODConv and DCD layers only have the grouped form and are refused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from padnet.errors import ConfigError, check_module
from padnet.layers.conv_base import DynamicConvBase
from padnet.layers.formulations import FormulationChoice, force_formulation
from padnet.saving.fileio import atomic_path


def check_exportable(model: nn.Module, onnx: bool = False) -> None:
    """Refuse what an export would refuse, before anything is written: a layer an exported graph cannot hold with
    a dynamic batch and, for ONNX (`onnx`), a missing exporter package.

    Raises:
        ConfigError: `model` is not an `nn.Module`; naming the layer (ODConv, DCD) or the package.
    """
    check_module(model, "export")
    for name, module in model.named_modules():
        if isinstance(module, DynamicConvBase) and not isinstance(module, FormulationChoice):
            raise ConfigError(
                f"{name} is {type(module).__name__}, whose per-sample kernels freeze the batch size "
                "in an export; export supports static, DY-Conv, CondConv and PAD-Net layers"
            )
    missing = [p for p in ("onnx", "onnxscript") if onnx and importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"ONNX export needs the onnx and onnxscript packages ({', '.join(missing)} not installed)"
        )


@contextlib.contextmanager
def _quiet_exporter():
    """Silence what the ONNX exporter reports about itself that a user cannot act on: the torchvision operators
    it skips registering (torchvision is not installed here, and padnet does not use it) and PyTorch-internal
    deprecation warnings. Other warnings still show."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec.*")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, opset: int | None = None) -> Path:
    """Write `model` (training or deployed form) as one ONNX file with a dynamic batch dimension, atomically.

    Uses `torch.onnx.export` (the `torch.export` based exporter, which needs the `onnxscript` package). Input
    `x`, output `y`.

    Args:
        model: the model to export, training or deployed form.
        path: the ONNX file written.
        example: one input batch (B, C, H, W) fixing every other dimension.
        opset: the ONNX opset version (default: the exporter's).

    Raises:
        ConfigError: ODConv/DCD layers, or a missing exporter dependency.
    """
    check_exportable(model, onnx=True)
    was_training = model.training
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with (
            force_formulation(model, "batched"),
            atomic_path(path) as tmp,
            contextlib.redirect_stdout(io.StringIO()),
            _quiet_exporter(),
        ):
            with torch.no_grad():
                model(example)  # eager pass: caches (e.g. filter splits) the trace then reads as constants
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                external_data=False,
            )  # one file: no side file left under the temporary name
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages ({exc})") from None
    finally:
        model.train(was_training)
    return Path(path)


def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Trace `model` to TorchScript (batched formulation, so any batch size runs) and save it atomically.

    Raises:
        ConfigError: ODConv/DCD layers.
    """
    check_exportable(model)
    was_training = model.training
    model.eval()
    try:
        with force_formulation(model, "batched"), torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
    finally:
        model.train(was_training)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return Path(path)
