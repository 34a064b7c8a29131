"""How a run computes faster without changing what it computes: `--compile` and `--channels-last`.

`torch.compile` traces padnet's layers without graph breaks (the temperature is a buffer, formulations follow
a rule fixed per input shape, MoE dispatch is one custom operator); on the CPU its inductor backend builds C++
kernels, so it needs a C++ compiler. channels_last lays out activations and every kernel as (N, H, W, C); the
dynamic layers keep the format of their input.

Inductor's layout optimisation (convolutions switched to channels_last inside the graph) slows the grouped
per-sample convolution of dynamic layers: measured here (CIFAR ResNet-18 training step, batch 64, 2 threads)
compiled ÷ eager 1.36 for DY-Conv and 1.25 for PAD-Net with it, 1.06 and 1.05 without it, so
[`compile_model`][padnet.training.speed.compile_model] turns it off for models with dynamic convolutions.
"""

from __future__ import annotations

import os
import shutil

import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers.conv_base import DynamicConvBase

MEMORY_FORMATS = {False: torch.contiguous_format, True: torch.channels_last}  # by the channels_last flag


def check_compiler(device: torch.device) -> None:
    """ConfigError (one line) when `torch.compile` cannot build kernels for `device`: on the CPU it needs a C++
    compiler (`$CXX`, g++, clang++ or c++ on the PATH)."""
    if device.type != "cpu":
        return
    candidates = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if not any(c and shutil.which(c) for c in candidates):
        raise ConfigError(
            "compile on the CPU needs a C++ compiler (g++ or clang++ on the PATH, or $CXX): install one or "
            "train without --compile"
        )


def compile_model(model: nn.Module) -> nn.Module:
    """`torch.compile(model, dynamic=False)`, with inductor's layout optimisation off (a process-wide setting) when
    the model holds dynamic convolutions (see the module docstring).

    Static shapes: a new input shape (a short last batch) compiles once more. With dynamic shapes inductor fails
    on the grouped per-sample convolution, which folds the batch into the channels (torch 2.13: "cannot determine
    truth value of Relational" while ordering its symbolic strides)."""
    if any(isinstance(m, DynamicConvBase) for m in model.modules()):
        import torch._inductor.config as inductor

        inductor.layout_optimization = False
    return torch.compile(model, dynamic=False)
