"""Renamed names (issue 27, "one meaning per name"): each old name warns with a FutureWarning naming the new one
and still does the same thing for one release; the new names work without a warning. CHANGELOG.md lists them."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import padnet
from padnet.errors import ConfigError, deprecated
from padnet.layers.modes import MODE_GRANULARITIES, PartialMode
from padnet.layers.moe import MoEFeedForward
from padnet.models import create_model, load_pretrained_weights
from padnet.models import pretrained as pretrained_module


def _no_warning(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------- the helper


def test_deprecated_warns_naming_both_names_and_the_releases():
    with pytest.warns(FutureWarning) as record:
        deprecated("old_thing", "new_thing")
    (warning,) = record
    assert str(warning.message) == (
        "old_thing is deprecated since 0.2.0 and will be removed in 0.3.0; use new_thing instead"
    )


def test_deprecated_points_at_the_code_that_called_the_shim():
    def shim():
        deprecated("shim", "target")

    def shim_behind_a_helper():
        deprecated("shim", "target", stacklevel=2)

    def helper():
        shim_behind_a_helper()

    for call in (shim, helper):
        with pytest.warns(FutureWarning) as record:
            line = sys._getframe().f_lineno + 1
            call()  # the line the warning must name
        assert (record[0].filename, record[0].lineno) == (__file__, line)


# ------------------------------------------------------------------ padnet.models.load_pretrained_weights


def _pair():
    source = create_model("resnet10", num_classes=10, width=0.25, stem="small")
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    return source, create_model("resnet10", num_classes=10, width=0.25, stem="small")


def test_models_load_pretrained_warns_names_the_new_name_and_still_copies_the_weights():
    source, target = _pair()
    with pytest.warns(FutureWarning, match=r"use padnet\.models\.load_pretrained_weights instead") as record:
        kept_fresh = padnet.models.load_pretrained(target, source.state_dict(), "resnet10")
    assert record[0].filename == __file__  # the warning points at the user's line
    assert kept_fresh == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_the_old_name_is_also_kept_in_its_module():
    source, target = _pair()
    with pytest.warns(FutureWarning, match="load_pretrained_weights"):
        pretrained_module.load_pretrained(target, source.state_dict(), "resnet10")
    assert torch.equal(target.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


def test_load_pretrained_weights_works_without_a_warning():
    source, target = _pair()
    assert _no_warning(load_pretrained_weights, target, source.state_dict(), "resnet10") == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # create_model(pretrained=...) goes through the new name: no warning either
    model = _no_warning(
        create_model, "resnet10", num_classes=10, width=0.25, stem="small", pretrained=source.state_dict()
    )
    assert torch.equal(model.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


def test_the_two_meanings_have_two_names():
    assert padnet.models.load_pretrained_weights is load_pretrained_weights
    assert (
        "load_pretrained_weights" in padnet.models.__all__ and "load_pretrained" not in padnet.models.__all__
    )
    assert padnet.load_pretrained is not padnet.models.load_pretrained  # the folder reader keeps its name


# ------------------------------------------------------------------------------ granularity "neuron"


def test_partial_mode_granularity_neuron_has_one_mask_element_per_last_slice():
    assert "neuron" in MODE_GRANULARITIES and "column" not in MODE_GRANULARITIES
    mode = _no_warning(PartialMode, (5, 3), 4, granularity="neuron")
    assert mode.granularity == "neuron"
    assert tuple(mode.mask.shape) == (1, 1, 3)
    assert mode.block == 5
    mode.mask[..., 1] = 0
    split = mode.structured_split()
    assert split.static.tolist() == [1] and split.dynamic.tolist() == [0, 2]
    pooled = mode.pool_scores(torch.ones(1, 5, 3))
    assert pooled.shape == (1, 1, 3) and pooled.flatten().tolist() == [5.0, 5.0, 5.0]


def test_partial_mode_granularity_column_warns_and_becomes_neuron():
    with pytest.warns(FutureWarning, match="granularity 'neuron'") as record:
        mode = PartialMode((5, 3), 4, granularity="column")
    assert record[0].filename == __file__
    assert mode.granularity == "neuron"
    assert tuple(mode.mask.shape) == (1, 1, 3)
    assert mode.state_dict().keys() == PartialMode((5, 3), 4, granularity="neuron").state_dict().keys()


def test_an_unknown_granularity_is_still_refused():
    with pytest.raises(ConfigError, match="unknown mask granularity 'row'"):
        PartialMode((5, 3), 4, granularity="row")


def test_moe_neuron_granularity_is_neuron_inside_the_layer():
    layer = _no_warning(MoEFeedForward, 8, 6, num_experts=3, top_k=1, mode="pad", granularity="neuron")
    assert layer.granularity == "neuron" and layer.neuron_mode.granularity == "neuron"
    assert tuple(layer.neuron_mode.mask.shape) == (1, 1, 6)
