"""Per-type option defaults: validation, resuming runs saved with the defaults written out, FLOPs of vector masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from padnet.adapter.config import PadConfig
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
    assert "conv" in config_differences({**saved, "conv": "pad"}, cfg)
    assert config_differences({**saved, "kappa": 0.5}, cfg) == []  # an option DY-Conv does not use


def test_options_that_a_layer_does_not_take_are_refused_by_the_one_applicability_table():
    base = TrainConfig().replace(granularity="kernel")  # compare's base config, for example: kept, unused
    assert base.pad_config() is None and base.value("granularity", "pad-odconv") == "kernel"
    assert base.replace(conv="pad-odconv").pad_config().granularity == "kernel"
    assert base.replace(conv="pad-dcd").pad_config().granularity is None  # a recipe's option where it applies
    with pytest.raises(ConfigError, match="option granularity does not apply to method 'pad-dcd'"):
        PadConfig(method="pad-dcd", granularity="kernel")
    with pytest.raises(ConfigError, match="option num_kernels does not apply to method 'dcd'"):
        PadConfig(method="dcd", num_kernels=4)
    with pytest.raises(ConfigError, match="num_kernels does not apply to conv 'dcd'"):
        TrainConfig().replace(conv="dcd", num_kernels=4).check_applies({"num_kernels"})


def test_static_vector_elements_save_one_head_row_of_macs():
    torch.manual_seed(0)
    layer = PADODConv2d(8, 8, 3, padding=1, num_kernels=1)
    model = nn.Sequential(layer)
    full = count_flops(model, (8, 6, 6))
    hidden = layer.attention.fc.out_features
    layer.attention.channel.mode.mask[0, :3] = 0
    layer.attention.spatial.mode.mask[0, :2] = 0
    assert full - count_flops(model, (8, 6, 6)) == 5 * hidden
