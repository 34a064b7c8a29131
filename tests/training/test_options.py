"""Per-type option defaults: validation, resuming runs saved with the defaults written out, FLOPs of vector masks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from padnet.errors import ConfigError
from padnet.layers import PADODConv2d
from padnet.layers.registry import effective_option
from padnet.metrics import count_flops
from padnet.training.config import TrainConfig
from padnet.training.engine.trainer import config_differences


@pytest.mark.parametrize(
    "conv,key,expected",
    [
        ("dy", "num_kernels", 4),
        ("dy", "reduction", 4),
        ("condconv", "num_kernels", 8),
        ("condconv", "reduction", 0),
        ("odconv", "reduction", 16),
        ("dcd", "num_kernels", None),
    ],
)
def test_effective_option(conv, key, expected):
    assert effective_option(conv, key, None) == expected
    assert effective_option(conv, key, 3) == 3


def test_runs_saved_with_defaults_written_out_still_resume():
    cfg = TrainConfig(conv="dy").validate()
    saved = {**cfg.to_dict(), "num_kernels": 4, "reduction": 4}  # how runs were saved before None defaults
    assert config_differences(saved, cfg) == []
    assert config_differences({**saved, "num_kernels": 8}, cfg) == ["num_kernels"]
    assert config_differences({**saved, "conv": "pad"}, cfg) == ["conv"]


def test_granularity_is_checked_only_for_pad_forms_without_it():
    TrainConfig(conv="static", granularity="kernel").validate()  # compare's base config, for example
    TrainConfig(conv="pad-odconv", granularity="kernel").validate()
    with pytest.raises(ConfigError, match="no mask granularity option"):
        TrainConfig(conv="pad-dcd", granularity="kernel").validate()
    with pytest.raises(ConfigError, match="has no option num_kernels"):
        dataclasses.replace(TrainConfig(), conv="dcd", num_kernels=4).validate()


def test_static_vector_elements_save_one_head_row_of_macs():
    torch.manual_seed(0)
    layer = PADODConv2d(8, 8, 3, padding=1, num_kernels=1)
    model = nn.Sequential(layer)
    full = count_flops(model, (8, 6, 6))
    hidden = layer.attention.fc.out_features
    layer.attention.channel.mode.mask[0, :3] = 0
    layer.attention.spatial.mode.mask[0, :2] = 0
    assert full - count_flops(model, (8, 6, 6)) == 5 * hidden
