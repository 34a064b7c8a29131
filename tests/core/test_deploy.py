"""Tests of padnet.deploy (BatchNorm folding, DeployedConv2d layouts, compact safetensors files), filter-granular
PAD-Net masks (counts, partition, scores, the structured forward path) and autotune."""

from __future__ import annotations

import copy
import json
import math
import os
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import padnet
from padnet.adapter.model import load_pretrained, save_pretrained
from padnet.deployment.deploy import conv_bn_pairs, deploy
from padnet.errors import CheckpointError, ConfigError
from padnet.layers import DynamicConv2d, PADConv2d, PartialMode
from padnet.layers.deployed import DeployedConv2d
from padnet.metrics import count_parameters
from padnet.partitioning import magnitude_scores, masked_tensors, snip_scores
from padnet.saving.folder import CONFIG_FILE, WEIGHTS_FILE
from padnet.training.engine.checkpoint import save_checkpoint

torch.set_num_threads(1)

FORMULATIONS = ("grouped", "per_sample", "batched")
ARCHS = {"resnet": ("resnet18", 0.25), "mobilenet": ("mobilenetv2", 0.5)}
# (conv type, granularity or None)
CONVS = [("dy", None), ("condconv", None), ("pad", "shared"), ("pad", "kernel"), ("pad", "filter")]
CONV_IDS = ["dy", "condconv", "pad-shared", "pad-kernel", "pad-filter"]


# ------------------------------------------------------------------------------------------- helpers


def _input(batch=3, size=16, seed=1, channels=3):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter distinct random values (biases and static parts included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@torch.no_grad()
def _train_bn(model: nn.Module, size=16, seed=7) -> nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters, and λs ≠ λd for PAD-Net layers."""
    model.train()
    gen = torch.Generator().manual_seed(seed)
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    for _ in range(3):
        model(torch.randn(4, channels, size, size, generator=gen) * 2 + 0.5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
        if isinstance(m, PADConv2d):
            m.scales.phi.fill_(0.4)  # λd = 2σ(0.4) ≈ 1.2, λs ≈ 0.8
    return model.eval()


def _zoo(arch="resnet", conv="pad", granularity="shared", kappa=0.3, seed=0):
    """A tiny zoo model, partitioned (random, local) when it is a PAD-Net model, with trained BatchNorm."""
    name, width = ARCHS[arch]
    torch.manual_seed(seed)
    options = {"granularity": granularity} if conv.startswith("pad") else {}
    model = padnet.create_model(
        name, conv=conv, num_classes=10, stem="small", width=width, temperature=1.0, **options
    )
    if conv.startswith("pad"):
        padnet.partition(model, kappa, "random", scope="local")
    return _train_bn(model)


def _deployed_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DeployedConv2d)]


def _set_formulation(model, formulation):
    layers = _deployed_layers(model)
    assert layers
    for _, layer in layers:
        layer.formulation = formulation


def _assert_close_scaled(got, expected, tol=1e-5, msg=None):
    """Equal within ``tol`` relative to the output scale (CondConv's sigmoid routing makes outputs large)."""
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * scale, msg=msg)


def _count_bn(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _sequential(bias=True):
    """Static convolutions with BatchNorm, a grouped and a depthwise one, one BatchNorm after a ReLU."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=bias),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=bias),
        nn.ReLU(),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 6, 1, bias=bias),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )


def _converted(granularity="shared", seed=0, partitioned=True, **options):
    torch.manual_seed(seed)
    model = padnet.convert(_sequential(), "pad", temperature_start=1.0, granularity=granularity, **options)
    if partitioned:
        padnet.partition(model, 0.4, "random", scope="local")
        _train_bn(model, size=8)
    return model


# ------------------------------------------------------------------ 1. deployed == training form (eval)


@pytest.mark.parametrize("conv,granularity", CONVS, ids=CONV_IDS)
@pytest.mark.parametrize("arch", ["resnet", "mobilenet"])
def test_deployed_model_equals_training_form(arch, conv, granularity):
    model = _zoo(arch, conv, granularity)
    deployed = deploy(model)
    assert not deployed.training
    n_dynamic = sum(isinstance(m, DynamicConv2d) for m in model.modules())
    assert n_dynamic > 0 and len(_deployed_layers(deployed)) == n_dynamic
    assert not any(isinstance(m, DynamicConv2d) for m in deployed.modules())
    with torch.no_grad():
        for batch in (1, 3):
            x = _input(batch)
            expected = model(x)
            for formulation in FORMULATIONS:
                _set_formulation(deployed, formulation)
                _assert_close_scaled(deployed(x), expected, msg=f"batch {batch}, {formulation}")


@pytest.mark.parametrize("semantics", ["static", "zero"])
@pytest.mark.parametrize("granularity", ["shared", "kernel", "filter"])
def test_deployed_converted_model_with_biases_equals_training_form(granularity, semantics):
    """Convolution biases (static and partially dynamic), a grouped (non-depthwise) layer, a BatchNorm that does
    not follow a convolution, a layer without BatchNorm, and zero semantics (MoE-P)."""
    model = _converted(granularity, mask_semantics=semantics)
    deployed = deploy(model)
    x = _input(3, size=8)
    with torch.no_grad():
        expected = model(x)
        for formulation in FORMULATIONS:
            _set_formulation(deployed, formulation)
            _assert_close_scaled(deployed(x), expected, msg=formulation)


# --------------------------------------------------------------------------------- 2. BatchNorm folding


@pytest.mark.parametrize("arch", ["resnet", "mobilenet"])
def test_every_batchnorm_after_a_convolution_is_folded(arch):
    model = _zoo(arch, "pad", "shared")
    pairs = conv_bn_pairs(model)
    assert len(pairs) == _count_bn(model) > 0  # in both zoo models every BatchNorm follows a convolution
    deployed = deploy(model)
    assert _count_bn(deployed) == 0
    assert conv_bn_pairs(deployed) == []
    assert sorted(deployed.padnet_deployed["folded_bn"]) == sorted(bn for _, bn in pairs)
    # the static stem convolution is fused (it gains the BatchNorm shift as its bias)
    stem = deployed.stem[0]
    assert type(stem) is nn.Conv2d and stem.bias is not None
    assert "stem.0" in deployed.padnet_deployed["fused_convs"]


def test_batchnorm_not_following_a_convolution_is_kept():
    model = _converted()
    deployed = deploy(model)
    remaining = [m for m in deployed.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(remaining) == 1 and remaining[0] is deployed[11]  # the one after a ReLU
    assert conv_bn_pairs(deployed) == []
    assert _count_bn(deploy(model, fold_bn=False)) == _count_bn(model) == 4


def test_deploy_leaves_the_original_model_unchanged():
    model = _zoo("resnet", "pad", "filter")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = [(n, type(m)) for n, m in model.named_modules()]
    x = _input(2)
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    deployed = deploy(model)
    assert deployed is not model
    assert model.training and all(m.training for m in model.modules())
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_deploy_inplace_modifies_and_returns_the_model():
    model = _zoo("resnet", "dy")
    x = _input(2)
    with torch.no_grad():
        expected = model(x)
        deployed = deploy(model, inplace=True)
        assert deployed is model
        assert _count_bn(model) == 0 and _deployed_layers(model)
        _assert_close_scaled(model(x), expected)


def test_untraceable_model_raises_config_error_unless_fold_bn_is_off():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = PADConv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.bn(self.conv(x))
            return self.bn(self.conv(-x))

    model = Branchy().eval()
    with pytest.raises(ConfigError, match="fold_bn=False"):
        deploy(model)
    deployed = deploy(model, fold_bn=False)
    assert isinstance(deployed.bn, nn.BatchNorm2d) and isinstance(deployed.conv, DeployedConv2d)
    x = _input(2, size=6)
    with torch.no_grad():
        _assert_close_scaled(deployed(x), model(x))


# ------------------------------------------------------------------------------------------- 3. layouts


def _pad_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PADConv2d)]


@pytest.mark.parametrize("conv", ["dy", "condconv"])
def test_fully_dynamic_layers_deploy_dense(conv):
    model = _zoo("mobilenet", conv)
    deployed = deploy(model)
    for name, layer in _deployed_layers(deployed):
        source = model.get_submodule(name)
        assert layer.layout == "dense", name
        assert layer.static_weight is None
        assert layer.dynamic_weight.shape == source.weight.shape
        assert layer.num_kernels == source.num_kernels


@pytest.mark.parametrize("arch", ["resnet", "mobilenet"])
def test_shared_masks_deploy_to_elements_at_dynamic_positions(arch):
    model = _zoo(arch, "pad", "shared")
    deployed = deploy(model)
    layers = _pad_layers(model)
    assert layers
    for name, source in layers:
        layer = deployed.get_submodule(name)
        mask = source.weight_mode.mask
        assert mask.shape == (1, *source.kernel_shape)
        on = int(mask.sum())
        assert 0 < on < mask.numel()
        assert layer.layout == "elements", name
        assert layer.dynamic_weight.shape == (source.num_kernels, on)
        assert torch.equal(layer.dynamic_index, mask.reshape(-1).nonzero().flatten())
        assert layer.static_weight.shape == source.kernel_shape
        # the static kernel is zero exactly at the dynamic positions
        static = layer.static_weight.detach().reshape(-1)
        assert torch.all(static[layer.dynamic_index] == 0)
        assert torch.all(static[mask.reshape(-1) == 0] != 0)


def test_kernel_masks_deploy_to_elements_where_any_kernel_is_dynamic():
    model = _zoo("resnet", "pad", "kernel")
    deployed = deploy(model)
    for name, source in _pad_layers(model):
        layer = deployed.get_submodule(name)
        any_dynamic = source.weight_mode.mask.amax(0).reshape(-1) > 0
        assert layer.layout == "elements"
        assert layer.dynamic_weight.shape[1] == int(any_dynamic.sum())
        assert torch.equal(layer.dynamic_index, any_dynamic.nonzero().flatten())


@pytest.mark.parametrize("arch", ["resnet", "mobilenet"])
def test_filter_masks_deploy_to_filters(arch):
    model = _zoo(arch, "pad", "filter")
    deployed = deploy(model)
    seen_depthwise = False
    for name, source in _pad_layers(model):
        layer = deployed.get_submodule(name)
        assert source.groups == 1 or source.depthwise
        seen_depthwise |= source.depthwise
        mask = source.weight_mode.mask
        assert mask.shape == (1, source.out_channels, 1, 1, 1)
        n_filters = int(mask.sum())
        assert n_filters == round(0.3 * source.out_channels)
        assert layer.layout == "filters", name
        assert layer.dynamic_weight.shape == (source.num_kernels, n_filters, *source.kernel_shape[1:])
        assert layer.static_weight.shape == (source.out_channels - n_filters, *source.kernel_shape[1:])
        assert torch.equal(layer.dynamic_index, mask.reshape(-1).nonzero().flatten())
    assert seen_depthwise == (arch == "mobilenet")


def test_filter_masks_on_grouped_layers_deploy_to_elements():
    model = _converted("filter")
    deployed = deploy(model)
    layouts = {name: layer.layout for name, layer in _deployed_layers(deployed)}
    # layer 6 has groups = 2 (neither 1 nor depthwise): no structured split
    assert layouts == {"3": "filters", "6": "elements", "9": "filters", "12": "filters"}
    grouped = model[6]
    block = math.prod(grouped.kernel_shape[1:])
    assert deployed[6].dynamic_weight.shape[1] == int(grouped.weight_mode.mask.sum()) * block


# ------------------------------------------------------------------------------- 4. save / load round trip


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("conv,granularity", CONVS, ids=CONV_IDS)
def test_save_load_round_trip_rebuilds_the_architecture(tmp_path, conv, granularity):
    arch = "mobilenet" if conv == "condconv" else "resnet"
    deployed = deploy(_zoo(arch, conv, granularity))
    folder = save_pretrained(deployed, tmp_path / "model")
    assert folder == tmp_path / "model"
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporary left behind
    loaded = load_pretrained(folder)
    assert not loaded.training
    assert [(n, type(m)) for n, m in loaded.named_modules()] == [
        (n, type(m)) for n, m in deployed.named_modules()
    ]
    assert [(n, m.config) for n, m in _deployed_layers(loaded)] == [
        (n, m.config) for n, m in _deployed_layers(deployed)
    ]
    _assert_same_state(loaded, deployed)
    x = _input(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), deployed(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("granularity", ["shared", "kernel", "filter"])
def test_deployed_form_of_a_converted_model_loads_onto_its_base_model(tmp_path, granularity):
    torch.manual_seed(0)
    pad = padnet.get_pad_model(_sequential(), method="pad", temperature_start=1.0, granularity=granularity)
    padnet.partition(pad.base_model, 0.4, "random", scope="local")
    _train_bn(pad.base_model, size=8)
    pad.save_pretrained(tmp_path, form="deployed")
    with pytest.raises(CheckpointError, match="base_model="):
        load_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = load_pretrained(tmp_path, base_model=_sequential())
    deployed = pad.merge_and_unload()
    _assert_same_state(loaded, deployed)
    x = _input(3, size=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), deployed(x), rtol=0, atol=1e-6)


def test_a_plain_model_without_an_architecture_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="records no architecture"):
        save_pretrained(deploy(_converted()), tmp_path / "out")
    model = _zoo("resnet", "static")
    padnet.convert(model, "pad")  # converted after create_model: the recipe would rebuild a static model
    with pytest.raises(ConfigError, match="get_pad_model"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- 5. file size


def _data_bytes(path) -> int:
    """Bytes of tensor data in a safetensors file: size − 8-byte length − JSON header."""
    with open(path, "rb") as fh:
        (header,) = struct.unpack("<Q", fh.read(8))
    return os.path.getsize(path) - 8 - header


def _expected_bytes(model: nn.Module) -> int:
    """Bytes a compact deployed file must hold, computed from the training form's masks alone.

    Every dynamic convolution is followed by a BatchNorm (zoo models): it stores its attention (+ temperature),
    a static bias (the folded BatchNorm) and its kernels — all k kernels (fully dynamic), the static values at
    static positions + k values per dynamic position + 1 bit per kernel element (shared mask), or the static
    filters + k dynamic filters + an int64 index per dynamic filter (filter mask). Static convolutions gain a
    bias; BatchNorm layers store nothing.
    """
    dynamic = {n: m for n, m in model.named_modules() if isinstance(m, DynamicConv2d)}
    floats, extra = 0, 0
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        if any(name.startswith(d + ".") for d in dynamic) or isinstance(owner, nn.BatchNorm2d):
            continue
        floats += p.numel()
    for m in model.modules():
        if type(m) is nn.Conv2d and m.bias is None:
            floats += m.out_channels
    for layer in dynamic.values():
        assert layer.bias is None
        floats += sum(p.numel() for p in layer.attention.parameters()) + 1 + layer.out_channels
        k, numel = layer.num_kernels, math.prod(layer.kernel_shape)
        if not layer.partial:
            floats += k * numel
            continue
        mask = layer.weight_mode.mask
        if layer.weight_mode.granularity == "shared":
            on = int(mask.sum())
            floats += (numel - on) + k * on
            extra += math.ceil(numel / 8)
        else:
            assert layer.weight_mode.granularity == "filter"
            filters, block = int(mask.sum()), layer.weight_mode.block
            floats += (layer.out_channels - filters) * block + k * filters * block
            extra += 8 * filters
    return 4 * floats + extra


@pytest.mark.parametrize("granularity", ["shared", "filter"])
def test_file_size_follows_the_compact_parameter_count(tmp_path, granularity):
    pad = _zoo("resnet", "pad", granularity)
    dy = _zoo("resnet", "dy")
    pad_file = save_pretrained(deploy(pad), tmp_path / "pad") / WEIGHTS_FILE
    dy_file = save_pretrained(deploy(dy), tmp_path / "dy") / WEIGHTS_FILE
    for model, path in ((pad, pad_file), (dy, dy_file)):
        expected = _expected_bytes(model)
        assert _data_bytes(path) == expected, path.name
        size = os.path.getsize(path)
        assert expected < size <= 1.01 * expected + 4096, path.name  # the header is small
    pad_size, dy_size = os.path.getsize(pad_file), os.path.getsize(dy_file)
    assert pad_size < 0.6 * dy_size
    ratio = count_parameters(pad, compact=True) / count_parameters(dy, compact=True)
    assert pad_size / dy_size == pytest.approx(ratio, rel=0.03)


def test_deployed_parameters_match_compact_counts_of_filter_masks():
    model = _zoo("mobilenet", "pad", "filter")
    deployed = deploy(model)
    for name, source in _pad_layers(model):
        counts = source.weight_mode.compact_counts()
        layer = deployed.get_submodule(name)
        assert layer.dynamic_weight.numel() == counts["dynamic"], name
        assert layer.static_weight.numel() == counts["static"], name


# ------------------------------------------------------------------------------------------- 6. bad files


@pytest.fixture(scope="module")
def deployed_folder(tmp_path_factory):
    return save_pretrained(
        deploy(_zoo("resnet", "pad", "shared")), tmp_path_factory.mktemp("deployed") / "pad"
    )


def _assert_one_line_checkpoint_error(folder, **kwargs):
    with pytest.raises(CheckpointError) as info:
        load_pretrained(folder, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def _folder(tmp_path, name, source, weights: bytes | None = None, record: str | None = None):
    """A copy of the folder ``source`` with its weights file or its record replaced."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(record if record is not None else (source / CONFIG_FILE).read_text())
    (folder / WEIGHTS_FILE).write_bytes(
        weights if weights is not None else (source / WEIGHTS_FILE).read_bytes()
    )
    return folder


def test_missing_folder_or_file_raises_checkpoint_error(tmp_path, deployed_folder):
    message = _assert_one_line_checkpoint_error(tmp_path / "absent")
    assert "absent" in message
    _assert_one_line_checkpoint_error(deployed_folder / WEIGHTS_FILE)  # a file is not a folder
    folder = _folder(tmp_path, "no-weights", deployed_folder)
    (folder / WEIGHTS_FILE).unlink()
    assert WEIGHTS_FILE in _assert_one_line_checkpoint_error(folder)


def test_truncated_weights_raise_checkpoint_error(tmp_path, deployed_folder):
    data = (deployed_folder / WEIGHTS_FILE).read_bytes()
    for n, cut in enumerate((len(data) // 2, len(data) - 1, 20)):
        _assert_one_line_checkpoint_error(_folder(tmp_path, f"cut{n}", deployed_folder, data[:cut]))


def test_random_bytes_raise_checkpoint_error(tmp_path, deployed_folder):
    noise = bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist())
    _assert_one_line_checkpoint_error(_folder(tmp_path, "noise", deployed_folder, noise))
    _assert_one_line_checkpoint_error(_folder(tmp_path, "empty", deployed_folder, b""))
    _assert_one_line_checkpoint_error(_folder(tmp_path, "record", deployed_folder, record="\x00\xff{"))


def test_training_checkpoint_is_not_a_deployed_model(tmp_path, deployed_folder):
    model = _zoo("resnet", "pad", "shared")
    path = save_checkpoint(tmp_path / "train.safetensors", model, {"epoch": 1})
    message = _assert_one_line_checkpoint_error(
        _folder(tmp_path, "train", deployed_folder, path.read_bytes())
    )
    assert "deployed" in message


def test_safetensors_without_padnet_metadata_raise_checkpoint_error(tmp_path, deployed_folder):
    model = deploy(_zoo("resnet", "dy"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    _assert_one_line_checkpoint_error(
        _folder(tmp_path, "plain", deployed_folder, (tmp_path / "plain.safetensors").read_bytes())
    )
    save_file({"a": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"), metadata={"padnet": "{not json"})
    _assert_one_line_checkpoint_error(
        _folder(tmp_path, "foreign", deployed_folder, (tmp_path / "foreign.safetensors").read_bytes())
    )


@pytest.mark.parametrize("header", ["[1, 2]", '"padnet-adapter-1"', "null", "3"])
def test_non_object_padnet_metadata_raises_checkpoint_error(tmp_path, deployed_folder, header):
    """Valid JSON that is not an object is a foreign file, not an AttributeError/TypeError."""
    save_file({"a": torch.zeros(3)}, str(tmp_path / "odd.safetensors"), metadata={"padnet": header})
    _assert_one_line_checkpoint_error(
        _folder(tmp_path, "odd", deployed_folder, (tmp_path / "odd.safetensors").read_bytes())
    )
    _assert_one_line_checkpoint_error(_folder(tmp_path, "record", deployed_folder, record=header))


def test_file_with_missing_tensors_raises_checkpoint_error(tmp_path, deployed_folder):
    from safetensors import safe_open

    with safe_open(str(deployed_folder / WEIGHTS_FILE), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    bits = next(k for k in tensors if k.endswith(".dynamic_index.bits"))
    del tensors[bits]
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata=meta)
    _assert_one_line_checkpoint_error(
        _folder(tmp_path, "missing", deployed_folder, (tmp_path / "missing.safetensors").read_bytes())
    )


WRONG_ARCHS = {
    "wider": {"width": 0.5},
    "mobilenet": {"name": "mobilenetv2", "width": 0.5},
    "classes": {"num_classes": 7},
    "static": {"conv": "static"},
    "resnet10": {"name": "resnet10"},
}


@pytest.mark.parametrize("wrong", list(WRONG_ARCHS))
def test_deployed_folder_with_the_wrong_architecture_raises_checkpoint_error(
    tmp_path, deployed_folder, wrong
):
    record = json.loads((deployed_folder / CONFIG_FILE).read_text())
    record["architecture"]["padnet"].update(WRONG_ARCHS[wrong])
    _assert_one_line_checkpoint_error(_folder(tmp_path, wrong, deployed_folder, record=json.dumps(record)))


@pytest.mark.parametrize(
    "bad",
    [
        {"width": 1e5},
        {"num_classes": 10**9},
        {"num_kernels": 4096},
        {"name": 5},
        {"in_chans": True},
        {"conv": ["pad"]},
        {"name": "vgg"},
    ],
)
def test_an_architecture_read_from_disk_is_validated_with_bounds(tmp_path, deployed_folder, bad):
    record = json.loads((deployed_folder / CONFIG_FILE).read_text())
    record["architecture"]["padnet"].update(bad)
    message = _assert_one_line_checkpoint_error(
        _folder(tmp_path, "bad", deployed_folder, record=json.dumps(record))
    )
    assert "architecture" in message


def test_a_folder_of_another_base_model_or_layout_is_refused(tmp_path, deployed_folder):
    record = json.loads((deployed_folder / CONFIG_FILE).read_text())
    record["deploy"]["folded_bn"] = "layer1"
    _assert_one_line_checkpoint_error(_folder(tmp_path, "layout", deployed_folder, record=json.dumps(record)))
    record = json.loads((deployed_folder / CONFIG_FILE).read_text())
    record["architecture"] = {"padnet": record["architecture"]["padnet"], "transformers": "BertModel"}
    _assert_one_line_checkpoint_error(_folder(tmp_path, "two", deployed_folder, record=json.dumps(record)))


# ------------------------------------------------------------------------------- 7. filter granularity


def test_filter_mode_compact_counts_for_a_hand_set_mask():
    mode = PartialMode((4, 3, 3, 3), 4, granularity="filter")
    assert mode.mask.shape == (1, 4, 1, 1, 1)
    assert mode.block == 27 and mode.numel == 4
    assert mode.compact_counts() == {"dynamic": 4 * 4 * 27, "static": 0}
    with torch.no_grad():
        mode.mask.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]).reshape(1, 4, 1, 1, 1))
    assert mode.compact_counts() == {"dynamic": 4 * 27, "static": 3 * 27}
    assert mode.dynamic_ratio() == pytest.approx(0.25)
    assert mode.element_mask().shape == (1, 4, 3, 3, 3)
    assert torch.equal(mode.element_mask()[0].sum((1, 2, 3)), torch.tensor([0.0, 27.0, 0.0, 0.0]))
    zero = PartialMode((4, 3, 3, 3), 4, granularity="filter", semantics="zero")
    with torch.no_grad():
        zero.mask.copy_(mode.mask)
    assert zero.compact_counts() == {"dynamic": 4 * 27, "static": 0}


def test_filter_layer_parameter_count_uses_compact_counts():
    layer = PADConv2d(3, 4, 3, num_kernels=4, granularity="filter")
    with torch.no_grad():
        layer.weight_mode.mask.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]).reshape(1, 4, 1, 1, 1))
    attention = sum(p.numel() for p in layer.attention.parameters())
    assert count_parameters(layer, compact=True) == attention + 1 + 4 * 27 + 3 * 27  # + φ
    assert count_parameters(layer, compact=False) == attention + 1 + 4 * 4 * 27 + 4 * 27


@pytest.mark.parametrize("kappa", [0.3, 0.55])
@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_local_partition_of_filter_masks_is_exact_per_layer(method, kappa):
    torch.manual_seed(0)
    model = padnet.create_model(
        "mobilenetv2", conv="pad", num_classes=10, stem="small", width=0.5, granularity="filter"
    )
    report = padnet.partition(model, kappa, method, scope="local")
    tensors = masked_tensors(model)
    assert len(report.layers) == len(tensors) > 0
    for name, mode, _ in tensors:
        cout = mode.shape[0]
        assert mode.mask.shape == (1, cout, 1, 1, 1)
        assert torch.all((mode.mask == 0) | (mode.mask == 1))
        assert int(mode.mask.sum()) == round(kappa * cout), name


def test_magnitude_scores_of_filter_masks_sum_element_magnitudes_per_filter():
    torch.manual_seed(0)
    model = nn.Sequential(
        PADConv2d(3, 6, 3, padding=1, granularity="filter"),
        PADConv2d(6, 6, 3, padding=1, groups=6, granularity="filter"),
    )
    tensors = masked_tensors(model)
    scores = magnitude_scores(tensors)
    for (name, mode, factors), score in zip(tensors, scores):
        expected = torch.zeros(1, 6, 1, 1, 1)
        w = factors.detach()  # (k, Cout, Cin/g, kh, kw)
        for o in range(6):
            per_element = [
                sum(abs(float(w[i, o].reshape(-1)[e])) for i in range(w.shape[0])) / w.shape[0]
                for e in range(w[0, o].numel())
            ]
            expected[0, o, 0, 0, 0] = sum(per_element)
        assert score.shape == mode.mask.shape, name
        torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-6)
    # a magnitude partition keeps the filters of largest summed magnitude
    kept = round(0.5 * 6)
    padnet.partition(model, 0.5, "magnitude", scope="local")
    for (_, mode, _), score in zip(tensors, scores):
        top = set(torch.topk(score.reshape(-1), kept).indices.tolist())
        assert set(mode.mask.reshape(-1).nonzero().flatten().tolist()) == top


def _snip_pair(filter_mask):
    """Two models with identical weights: granularity "filter" with ``filter_mask`` (one per layer) and
    "shared" with that mask expanded to every element."""

    def build(granularity):
        torch.manual_seed(0)
        return nn.Sequential(
            PADConv2d(3, 6, 3, padding=1, temperature=1.0, granularity=granularity),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            PADConv2d(6, 6, 3, padding=1, groups=6, temperature=1.0, granularity=granularity),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 4),
        )

    filt, shared = build("filter"), build("shared")
    for i in (0, 3, 8):  # the convolutions and the classifier; BatchNorm keeps γ = 1, β = 0 (no dead ReLU)
        _randomise(filt[i], seed=i)
    with torch.no_grad():
        for _, mode, _ in masked_tensors(filt):
            mode.mask.copy_(filter_mask.reshape(mode.mask.shape))
    state = filt.state_dict()
    for i in (0, 3):
        state[f"{i}.weight_mode.mask"] = filt[i].weight_mode.element_mask().clone()
    shared.load_state_dict(state)
    assert shared[0].weight_mode.mask.shape == (1, 6, 3, 3, 3)
    assert shared[3].weight_mode.mask.shape == (1, 6, 1, 3, 3)
    return filt, shared


@pytest.mark.parametrize(
    "mask", [torch.ones(6), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])], ids=["full", "mixed"]
)
def test_snip_scores_of_filter_masks_sum_element_scores_per_filter(mask):
    filt, shared = _snip_pair(mask)
    gen = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(4, 3, 6, 6, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(2)
    ]
    x = batches[0][0]
    with torch.no_grad():
        torch.testing.assert_close(filt(x), shared(x), rtol=1e-5, atol=1e-6)  # the same function
    filt_scores = snip_scores(filt, masked_tensors(filt), batches, F.cross_entropy, num_batches=2)
    shared_scores = snip_scores(shared, masked_tensors(shared), batches, F.cross_entropy, num_batches=2)
    for fs, ss in zip(filt_scores, shared_scores):
        assert fs.shape == (1, 6, 1, 1, 1) and ss.shape[2:] in ((3, 3, 3), (1, 3, 3))
        expected = ss.sum(dim=(2, 3, 4), keepdim=True)
        assert torch.all(expected > 0)
        torch.testing.assert_close(fs, expected, rtol=1e-4, atol=1e-9)
    # the masks survived the relaxation
    for _, mode, _ in masked_tensors(filt):
        assert mode.mask.shape == (1, 6, 1, 1, 1) and torch.equal(mode.mask.reshape(-1), mask)


# ---------------------------------------------------------------------- 8. structured forward path


def _forward_backward(layer, x):
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {"input": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


def _filter_layer(depthwise: bool):
    torch.manual_seed(0)
    cin, groups = (6, 6) if depthwise else (4, 1)
    layer = PADConv2d(
        cin, 6, 3, padding=1, groups=groups, bias=True, num_kernels=3, temperature=1.0, granularity="filter"
    )
    _randomise(layer)
    with torch.no_grad():
        layer.scales.phi.fill_(0.4)
    return layer, _input(3, size=7, channels=cin)


def _element_reference(layer, mask):
    reference = copy.deepcopy(layer)
    reference.structured = False
    with torch.no_grad():
        reference.weight_mode.mask.copy_(mask)
    return reference


MASK_A = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]).reshape(1, 6, 1, 1, 1)
MASK_B = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0]).reshape(1, 6, 1, 1, 1)


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("depthwise", [False, True], ids=["dense", "depthwise"])
def test_structured_path_follows_mask_changes(depthwise, formulation):
    layer, x = _filter_layer(depthwise)
    layer.formulation = formulation
    with torch.no_grad():
        layer.weight_mode.mask.copy_(MASK_A)
    out_a, _ = _forward_backward(layer, x)
    assert layer.structured_split() is not None
    torch.testing.assert_close(
        out_a, _forward_backward(_element_reference(layer, MASK_A), x)[0], rtol=1e-5, atol=1e-5
    )
    with torch.no_grad():
        layer.weight_mode.mask.copy_(MASK_B)  # after the split for A was cached
    static_idx, dynamic_idx, _ = layer.structured_split()
    assert dynamic_idx.tolist() == [1, 2, 3] and static_idx.tolist() == [0, 4, 5]
    out_b, grads_b = _forward_backward(layer, x)
    ref_b, ref_grads = _forward_backward(_element_reference(layer, MASK_B), x)
    assert not torch.allclose(out_b, out_a, atol=1e-3)
    torch.testing.assert_close(out_b, ref_b, rtol=1e-5, atol=1e-5)
    assert grads_b.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads_b[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_structured_path_follows_partition_and_load_state_dict():
    layer, x = _filter_layer(False)
    model = nn.Sequential(layer)
    layer(x)  # cache the split of the all-dynamic mask
    padnet.partition(model, 0.5, "random", scope="local", seed=3)
    mask = layer.weight_mode.mask.clone()
    assert int(mask.sum()) == 3
    torch.testing.assert_close(layer(x), _element_reference(layer, mask)(x), rtol=1e-5, atol=1e-5)
    state = layer.state_dict()
    state["weight_mode.mask"] = 1.0 - mask
    layer.load_state_dict(state)
    torch.testing.assert_close(layer(x), _element_reference(layer, 1.0 - mask)(x), rtol=1e-5, atol=1e-5)


def test_structured_path_follows_mask_changes_through_data():
    """``mask.data`` writes (common in pruning code) bypass the tensor's version counter; the cached filter
    split must not serve a stale mask."""
    layer, x = _filter_layer(False)
    with torch.no_grad():
        layer.weight_mode.mask.copy_(MASK_A)
    layer(x)
    layer.weight_mode.mask.data.copy_(MASK_B)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _element_reference(layer, MASK_B)(x), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- 9. autotune


def _dy_model(arch="resnet"):
    name, width = ARCHS[arch]
    torch.manual_seed(0)
    model = padnet.create_model(name, conv="dy", num_classes=10, stem="small", width=width, temperature=1.0)
    return _train_bn(model)


def _autotune(model, x):
    from padnet.layers.autotune import autotune

    return autotune(model, x, train=True, repeats=1)


def test_autotune_chooses_a_formulation_for_every_dynamic_layer():
    model = _dy_model()
    x = _input(2)
    choices = _autotune(model, x)
    names = [n for n, m in model.named_modules() if isinstance(m, DynamicConv2d)]
    assert sorted(choices) == sorted(names)
    assert set(choices.values()) <= set(FORMULATIONS)
    shapes = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda mod, args, n=n: shapes.__setitem__(n, tuple(args[0].shape))
        )
        for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    with torch.enable_grad():
        for name in names:
            layer = model.get_submodule(name)
            assert layer.formulation == "auto"
            assert layer.path_for(torch.Size(shapes[name])) == choices[name], name


def test_autotune_leaves_outputs_gradients_and_modes_unchanged():
    model = _dy_model()
    x = _input(2)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _autotune(model, x)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    changed = [k for k in state if not torch.equal(after[k], state[k])]
    assert changed == [], f"autotune changed {len(changed)} tensors, e.g. {changed[:3]}"
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_autotune_leaves_the_global_rng_untouched():
    model = _dy_model("mobilenet")  # has dropout before the classifier
    x = _input(2)
    state = torch.get_rng_state()
    _autotune(model, x)
    assert torch.equal(torch.get_rng_state(), state)


def test_autotune_on_a_deployed_model():
    deployed = deploy(_zoo("resnet", "pad", "shared"))
    x = _input(2)
    with torch.no_grad():
        before = deployed(x)
    from padnet.layers.autotune import autotune

    choices = autotune(deployed, x, train=False, repeats=1)
    assert sorted(choices) == sorted(n for n, _ in _deployed_layers(deployed))
    assert set(choices.values()) <= set(FORMULATIONS)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), before, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- header content (sanity)


def test_record_holds_format_architecture_and_layers(deployed_folder):
    from safetensors import safe_open

    record = json.loads((deployed_folder / CONFIG_FILE).read_text())
    with safe_open(str(deployed_folder / WEIGHTS_FILE), framework="pt") as fh:
        keys = set(fh.keys())
    assert (
        record["format"] == "padnet-adapter-1" and record["form"] == "deployed" and record["config"] is None
    )
    assert (
        record["architecture"]["padnet"]["name"] == "resnet18"
        and record["architecture"]["padnet"]["width"] == 0.25
    )
    layers = record["deploy"]["layers"]
    assert layers and all(cfg["layout"] == "elements" for cfg in layers.values())
    for name in layers:
        assert f"{name}.dynamic_index.bits" in keys and f"{name}.static_weight.values" in keys
        assert f"{name}.dynamic_index" not in keys and f"{name}.static_weight" not in keys
