"""Bad input to the Python API found by a probe: every case ends in one padnet error of one line, and what is
read from disk (a model folder's record and tensors) is validated like command-line input."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import padnet
from padnet.errors import CheckpointError, ConfigError, DataError


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"method": "dy", "temperature_anneal": 1e308},
            "temperature_anneal must be a number >= 0 and <= 100000, got 1e+308",
        ),
        (
            {"method": "dy", "temperature_anneal": 2e9, "temperature_unit": "steps"},
            "temperature_anneal must be a number >= 0 and <= 1000000000, got 2000000000.0",
        ),
        (
            {"method": "pad", "partition_at": "epochs", "partition_after": 1e308},
            "partition_after must be a number >= 0 and <= 100000, got 1e+308",
        ),
        (
            {"method": "dy", "num_kernels": 10**9},
            "num_kernels must be an integer >= 1 and <= 64, got 1000000000",
        ),
        (
            {"method": "dy", "layer_options": {"num_kernels": 1e9}},
            "layer_options num_kernels must be an integer",
        ),
        ({"method": "moe", "num_experts": 10**6}, "num_experts must be an integer >= 1 and <= 256"),
        (
            {"method": "pad", "partition_iterations": 10**7},
            "partition_iterations must be an integer >= 1 and <= 1000",
        ),
        (
            {"method": "dy", "temperature_start": 1e308},
            "temperature_start must be a number > 0 and <= 10000.0",
        ),
        (
            {"method": "dy", "layer_options": {"temperature": 1e39}},
            "layer_options temperature must be a number > 0",
        ),
    ],
)
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
    assert _one_line(info) == (
        f"{tmp_path / 'padnet_config.json'}: num_kernels must be an integer >= 1 and <= 64, got 1000000000.0"
    )


def test_a_kappa_that_keeps_no_dynamic_element_is_refused_and_the_masks_stay():
    model = padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, stem="small", width=0.125)
    padnet.partition(model, 0.5, "random")
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("mask")}
    total = sum(v.numel() for v in before.values())
    with pytest.raises(ConfigError) as info:
        padnet.partition(model, 1e-300, "random")
    assert _one_line(info) == (
        f"kappa 1e-300 leaves no dynamic element of the {total:,} mask elements (global "
        f"scope); use kappa >= {1 / total:.3g}"
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    assert padnet.partition(model, 1 / total, "random").dynamic == 1


def _edit_tensor(directory, key, value):
    """Set tensor ``key`` of ``directory/padnet_model.safetensors`` to ``value``, metadata kept."""
    path = directory / "padnet_model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, str(path), metadata=metadata)


def test_a_mask_read_from_disk_must_hold_only_0_and_1(tmp_path):
    pristine = _static()
    pad = padnet.get_pad_model(copy.deepcopy(pristine), method="pad", init_from_pretrained=False)
    pad.partition(partition="random")
    pad.save_pretrained(tmp_path)
    padnet.load_pretrained(tmp_path, copy.deepcopy(pristine))
    _edit_tensor(tmp_path, "layer1.0.conv1.weight_mode.mask", 0.5)
    with pytest.raises(CheckpointError) as info:
        padnet.load_pretrained(tmp_path, copy.deepcopy(pristine))
    assert _one_line(info) == (
        f"{tmp_path / 'padnet_model.safetensors'}: mask layer1.0.conv1.weight_mode.mask "
        "holds values other than 0 and 1"
    )


def _mixtral():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        intermediate_size=24,
        num_local_experts=4,
        num_experts_per_tok=2,
        head_dim=8,
    )
    return transformers.MixtralForCausalLM(config).eval()


def test_a_pretrained_moe_keeps_its_own_expert_count_and_a_record_must_agree(tmp_path):
    pristine = _mixtral()
    with pytest.raises(ConfigError) as info:
        padnet.get_pad_model(copy.deepcopy(pristine), method="pad-moe", num_experts=8)
    assert _one_line(info) == (
        "num_experts 8 differs from the model's own (4): a pretrained MoE keeps its experts "
        "and routers; leave num_experts unset"
    )
    padnet.get_pad_model(copy.deepcopy(pristine), method="pad-moe", num_experts=4, top_k=2).save_pretrained(
        tmp_path
    )
    padnet.load_pretrained(tmp_path, copy.deepcopy(pristine))
    _edit_record(tmp_path, num_experts=2)
    with pytest.raises(CheckpointError) as info:
        padnet.load_pretrained(tmp_path, copy.deepcopy(pristine))
    assert _one_line(info).startswith(
        f"{tmp_path / 'padnet_config.json'}: num_experts 2 differs from the model's own (4)"
    )
    _edit_record(tmp_path, num_experts=None, top_k=1)
    with pytest.raises(CheckpointError, match="top_k 1 differs from the model's own"):
        padnet.load_pretrained(tmp_path, copy.deepcopy(pristine))


@pytest.mark.parametrize(
    "entry, call",
    [
        ("get_pad_model", lambda m: padnet.get_pad_model(m, method="dy")),
        ("convert", lambda m: padnet.convert(m, "dy")),
        ("partition", lambda m: padnet.partition(m, 0.3, "random")),
        ("deploy", padnet.deploy),
        ("save_pretrained", lambda m: padnet.save_pretrained(m, "unused")),
        ("load_pretrained's base_model", lambda m: padnet.load_pretrained("unused", m)),
        ("export", lambda m: padnet.export_onnx(m, "unused.onnx", torch.zeros(1, 1, 8, 8))),
        ("autotune", lambda m: padnet.autotune(m, torch.zeros(1, 1, 8, 8))),
        ("count_parameters", padnet.count_parameters),
        ("count_flops", lambda m: padnet.count_flops(m, (1, 8, 8))),
    ],
)
def test_entry_points_given_a_name_instead_of_a_model_say_how_to_build_one(
    entry, call, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        call("resnet18")
    assert (
        _one_line(info)
        == f"{entry} needs an nn.Module, got str; build one with padnet.create_model('resnet18')"
    )
    assert not list(tmp_path.iterdir())


def test_save_pretrained_onto_a_file_is_a_one_line_error(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    for save in (
        lambda d: padnet.save_pretrained(_static(), d),
        lambda d: padnet.get_pad_model(_static(), method="dy").save_pretrained(d),
    ):
        with pytest.raises(ConfigError) as info:
            save(target)
        assert _one_line(info) == f"{target} is a file, not a folder; save into a folder"
    with pytest.raises(ConfigError, match=r"^cannot create folder .*taken/sub \(Not a directory\)$"):
        padnet.save_pretrained(_static(), target / "sub")
    assert target.read_text() == "x"


def _pad_net():
    torch.manual_seed(0)
    return padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, stem="small", width=0.125)


def _masks(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("mask")}


def test_partition_batches_that_do_not_fit_name_the_batch_and_leave_the_masks():
    model = _pad_net()
    padnet.partition(model, 0.5, "random")
    before = _masks(model)
    good = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    cases = [
        (
            (torch.randn(4, 3, 8, 8), good[1]),
            "partition batch 1: inputs of shape (4, 3, 8, 8) do not fit the model, which expects (N, 1, H, W) (",
        ),
        (
            (good[0], torch.tensor([0, 1, 9, 2])),
            "partition batch 1: labels must be in [0, 3] for the model's 4 classes, got 0..9",
        ),
        (
            (good[0], torch.tensor([0, -1, 1, 2])),
            "partition batch 1: labels must be in [0, 3] for the model's 4 classes, got -1..2",
        ),
        ((good[0], torch.randn(4, 7)), "partition batch 1: the loss failed ("),
        (
            good[0],
            "partition batch 1 is not an (inputs, targets) pair of tensors; pass batch_loss= for other batches",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(DataError) as info:
            padnet.partition(model, 0.3, "imp", [good, bad], check_scores=False, reset=False)
        assert _one_line(info).startswith(message)
        assert all(torch.equal(v, before[k]) for k, v in _masks(model).items())
    pad = padnet.get_pad_model(_pad_net(), method="pad", init_from_pretrained=False)
    with pytest.raises(DataError, match=r"^partition batch 0: the batch loss failed \(.*\)$"):
        pad.partition([good], batch_loss=lambda model, batch: model(batch[0][:, :0]).sum())
    assert all(bool(v.all()) for v in _masks(pad.base_model).values())
    assert padnet.partition(
        model, 0.3, "imp", [good, (good[0], torch.tensor([0, -100, 1, 2]))], check_scores=False
    ).dynamic_ratio == pytest.approx(0.3, abs=1e-4)  # ignore_index


def test_an_upcycled_moe_record_must_agree_with_the_experts_stored(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    pristine = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=50,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=16,
        )
    )
    padnet.get_pad_model(copy.deepcopy(pristine), method="pad-moe", num_experts=4).save_pretrained(tmp_path)
    _edit_record(tmp_path, num_experts=2)
    with pytest.raises(CheckpointError) as info:
        padnet.load_pretrained(tmp_path, copy.deepcopy(pristine))
    assert _one_line(info) == (
        f"{tmp_path / 'padnet_config.json'}: num_experts 2 does not match the 4 experts the "
        "weights store for bert.encoder.layer.0.intermediate.dense"
    )


def test_a_hugging_face_config_is_checked_against_the_weights_before_anything_is_allocated(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=50,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=16,
        )
    )
    padnet.get_pad_model(bert, method="moe", num_experts=2).save_pretrained(tmp_path, full=True)
    padnet.load_pretrained(tmp_path)
    config = tmp_path / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "hidden_size": 10**6, "num_attention_heads": 1}))
    with pytest.raises(CheckpointError) as info:
        padnet.load_pretrained(tmp_path)
    assert re.fullmatch(
        rf"{re.escape(str(config))} describes a model of [\d,]+ parameters; padnet_model.safetensors "
        r"holds [\d,]+ values",
        _one_line(info),
    )
    config.write_text(json.dumps({**saved, "num_attention_heads": 3}))
    with pytest.raises(CheckpointError) as info:
        padnet.load_pretrained(tmp_path)
    assert _one_line(info).startswith(f"{config} does not build a BertForSequenceClassification (")
