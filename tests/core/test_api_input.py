"""Bad input to the Python API found by a probe: every case ends in one padnet error of one line, and what is
read from disk (a model folder's record and tensors) is validated like command-line input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import padnet
from padnet.errors import CheckpointError, ConfigError


def _static(seed=0):
    torch.manual_seed(seed)
    return padnet.create_model("resnet10", num_classes=4, in_chans=1, stem="small", width=0.125)


def _one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text
    return text


def _edit_record(directory, **config):
    """Change fields of the PadConfig recorded in ``directory/padnet_config.json``."""
    path = directory / "padnet_config.json"
    record = json.loads(path.read_text())
    record["config"].update(config)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "dy", "temperature_anneal": 1e308}, "temperature_anneal must be a number >= 0 and <= 100000, got 1e+308"),
    ({"method": "dy", "temperature_anneal": 2e9, "temperature_unit": "steps"},
     "temperature_anneal must be a number >= 0 and <= 1000000000, got 2000000000.0"),
    ({"method": "pad", "partition_at": "epochs", "partition_after": 1e308},
     "partition_after must be a number >= 0 and <= 100000, got 1e+308"),
    ({"method": "dy", "num_kernels": 10**9}, "num_kernels must be an integer >= 1 and <= 64, got 1000000000"),
    ({"method": "dy", "layer_options": {"num_kernels": 1e9}}, "layer_options num_kernels must be an integer"),
    ({"method": "moe", "num_experts": 10**6}, "num_experts must be an integer >= 1 and <= 256"),
    ({"method": "pad", "partition_iterations": 10**7}, "partition_iterations must be an integer >= 1 and <= 1000"),
])
def test_pad_config_bounds_every_size_and_amount_of_time(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+").replace(".", r"\.")) as info:
        padnet.PadConfig(**kwargs)
    _one_line(info)


def test_a_record_asking_for_a_huge_layer_is_refused_before_building_it(tmp_path):
    pristine = _static()
    padnet.get_pad_model(copy.deepcopy(pristine), method="dy").save_pretrained(tmp_path)
    _edit_record(tmp_path, num_kernels=1e9)
    with pytest.raises(CheckpointError) as info:
        padnet.load_pretrained(tmp_path, copy.deepcopy(pristine))
    assert _one_line(info) == (f"{tmp_path / 'padnet_config.json'}: num_kernels must be an integer >= 1 and <= 64, "
                               "got 1000000000.0")


def test_a_kappa_that_keeps_no_dynamic_element_is_refused_and_the_masks_stay():
    model = padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, stem="small", width=0.125)
    padnet.partition(model, 0.5, "random")
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("mask")}
    total = sum(v.numel() for v in before.values())
    with pytest.raises(ConfigError) as info:
        padnet.partition(model, 1e-300, "random")
    assert _one_line(info) == (f"kappa 1e-300 leaves no dynamic element of the {total:,} mask elements (global "
                               f"scope); use kappa >= {1 / total:.3g}")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    assert padnet.partition(model, 1 / total, "random").dynamic == 1
