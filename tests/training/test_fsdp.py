"""Sharded training (padnet.training.sharding: shard, save_sharded / load_sharded, unsharded) with FSDP2 on
2 CPU processes (gloo) launched by torchrun, and the one-process paths and errors in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cpu_processes import ENV, TORCHRUN
from safetensors.torch import load_file
from torch import nn

import padnet
from padnet.errors import CheckpointError, ConfigError
from padnet.parallel import Context
from padnet.training import sharding

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)

HERE = Path(__file__).resolve().parent
MODELS = ("resnet", "bert")


def _worker(check: str, out: Path) -> None:
    cmd = [*TORCHRUN, str(HERE / "fsdp_worker.py"), check, str(out)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _ranks(out: Path, kind: str, check: str) -> list[dict[str, torch.Tensor]]:
    return [load_file(out / f"{kind}-{check}-rank{r}.safetensors") for r in range(2)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Both models trained 4 steps under FSDP2, with a sharded checkpoint on the way and the gathered folder."""
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("fsdp")
    _worker("run", out)
    return out


def _tiny(kind: str) -> padnet.PadModel:
    sys.path.insert(0, str(HERE))
    try:
        import fsdp_worker
    finally:
        sys.path.remove(str(HERE))
    return fsdp_worker.build(kind)


# ------------------------------------------------------------------------------------------- 2 processes


@pytest.mark.parametrize("kind", MODELS)
def test_mode_partition_under_fsdp_gives_every_process_the_same_masks(run, kind):
    ranks = _ranks(run, kind, "run")
    masks = [k for k in ranks[0] if k.endswith("mask")]
    assert masks
    for key in masks:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    dynamic = sum(ranks[0][k].sum() for k in masks) / sum(ranks[0][k].numel() for k in masks)
    assert abs(float(dynamic) - (0.3 if kind == "resnet" else 0.5)) < 1e-3  # the partition ran: κ reached
    # the parameters are sharded: process 1 holds other values than process 0
    sharded = [k for k in ranks[0] if k.startswith("model/") and not k.endswith("mask")]
    assert any(
        ranks[0][k].shape != ranks[1][k].shape or not torch.equal(ranks[0][k], ranks[1][k]) for k in sharded
    )
    assert all(torch.isfinite(r["losses"]).all() for r in ranks)


def test_a_resumed_sharded_run_is_bit_identical_to_the_uninterrupted_one(run):
    marker = json.loads((run / "bert-checkpoint" / sharding.MARKER_FILE).read_text())
    assert (marker["step"], marker["world_size"]) == (2, 2)
    assert not list(run.glob("*.incomplete")) and not list(run.glob("*.old"))
    _worker("resume", run)
    for kind in MODELS:
        for whole, resumed in zip(_ranks(run, kind, "run"), _ranks(run, kind, "resume")):
            assert whole.keys() == resumed.keys()
            optimiser = [k for k in whole if k.startswith("optim/")]
            assert optimiser and any(k.endswith("mask") for k in whole)
            for key in (k for k in whole if k != "losses"):  # parameters, masks, optimiser state, RNG
                assert torch.equal(whole[key], resumed[key]), f"{kind} {key}"
            assert torch.equal(whole["losses"][-len(resumed["losses"]) :], resumed["losses"])


@pytest.mark.parametrize("kind", MODELS)
def test_the_gathered_folder_loads_in_one_process_with_the_sharded_models_outputs(run, kind):
    sys.path.insert(0, str(HERE))
    try:
        import fsdp_worker
    finally:
        sys.path.remove(str(HERE))
    model = padnet.PadModel.from_pretrained(run / f"{kind}-folder").eval()
    assert isinstance(model, padnet.PadModel)
    batch = fsdp_worker.batches(kind)[0]
    with torch.no_grad():
        logits = model(batch[0]) if kind == "resnet" else model(input_ids=batch["input_ids"]).logits
    expected = load_file(run / f"{kind}-outputs.safetensors")["logits"]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    trained = _ranks(run, kind, "run")[0]
    masks = {k: v for k, v in model.state_dict().items() if k.endswith("mask")}
    assert masks and all(torch.equal(v, trained[f"model/{k}"]) for k, v in masks.items())


def test_ddp_trains_a_pad_model_under_bfloat16_autocast(tmp_path):
    _worker("ddp_autocast", tmp_path)
    ranks = [load_file(tmp_path / f"ddp-rank{r}.safetensors") for r in range(2)]
    assert all(bool(r["logits_dtype_bf16"]) and torch.isfinite(r["losses"]).all() for r in ranks)
    for key in (k for k in ranks[0] if k.startswith("model/")):
        assert torch.isfinite(ranks[0][key].float()).all(), key
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    masks = [k for k in ranks[0] if k.endswith("mask")]
    assert masks and float(sum(ranks[0][k].sum() for k in masks)) < sum(ranks[0][k].numel() for k in masks)


# -------------------------------------------------------------------------------------------- one process


def test_one_process_shard_returns_the_model_unchanged():
    pad = _tiny("resnet")
    before = {k: v.clone() for k, v in pad.state_dict().items()}
    assert sharding.shard(pad) is pad
    assert type(pad) is padnet.PadModel and type(pad.base_model).__name__ == "ResNet"
    assert type(pad.base_model.stem[1]) is nn.BatchNorm2d
    assert all(type(p) is nn.Parameter for p in pad.parameters())
    assert all(torch.equal(before[k], v) for k, v in pad.state_dict().items())
    assert sharding.unsharded(pad) is pad
    assert sharding.full_state_dict(pad).keys() == before.keys()


def test_units_are_the_blocks_holding_dynamic_layers():
    pad = _tiny("resnet")
    assert sharding.shard_units(pad) == [f"layer{i}.0" for i in range(1, 5)]
    assert sharding.shard_units(pad, blocks=(nn.Sequential,)) == [
        "stem",
        *[f"layer{i}" for i in range(1, 5)],
    ]
    assert sharding.shard_units(pad, blocks=lambda name, m: name == "fc") == ["fc"]
    transformers = pytest.importorskip("transformers")
    bert = _tiny("bert")
    assert sharding.shard_units(bert) == [
        "bert.embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
    ]
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    masked_lm = transformers.BertForMaskedLM(config)  # word embeddings tied to the decoder: left in the root
    assert sharding.shard_units(masked_lm) == ["bert.encoder.layer.0"]


def test_shard_refuses_what_it_cannot_shard(monkeypatch):
    pad = _tiny("resnet")
    with pytest.raises(ConfigError, match="^shard: 2 processes but no process group is initialised") as info:
        sharding.shard(pad, Context(0, 2))
    assert "\n" not in str(info.value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="call padnet.training.distributed.init"):
        sharding.shard(pad)
    with pytest.raises(ConfigError, match="shard needs a torch nn.Module|shard"):
        sharding.shard("resnet10")


def test_one_process_sharded_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    pad = _tiny("resnet")
    optimizer = torch.optim.SGD(pad.optimizer_parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(pad(x), y).backward()
    optimizer.step()
    pad.set_masks({name: torch.rand(mask.shape) > 0.5 for name, mask in pad.masks().items()})
    gen = torch.Generator().manual_seed(5)
    where = tmp_path / "ckpt"
    sharding.save_sharded(pad, optimizer, where, step=1, generators={"data": gen})
    sharding.save_sharded(pad, optimizer, where, step=7, generators={"data": gen}, extra={"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # replaced in place, nothing left over
    expected_draw, expected_data = torch.rand(3), torch.rand(3, generator=gen)
    fresh = _tiny("resnet")
    fresh_optimizer = torch.optim.SGD(fresh.optimizer_parameters(), lr=0.05, momentum=0.9)
    other = torch.Generator().manual_seed(99)
    loaded = sharding.load_sharded(fresh, fresh_optimizer, where, generators={"data": other})
    assert loaded == {"step": 7, "world_size": 1, "extra": {"epoch": 3}}
    for key, value in pad.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    momentum = [fresh_optimizer.state[p]["momentum_buffer"] for p in fresh.optimizer_parameters()]
    assert all(
        torch.equal(a, optimizer.state[p]["momentum_buffer"]) for a, p in zip(momentum, pad.parameters())
    )
    assert torch.equal(torch.rand(3), expected_draw) and torch.equal(
        torch.rand(3, generator=other), expected_data
    )


def test_bad_checkpoint_folders_get_one_line_errors(tmp_path):
    pad = _tiny("resnet")
    with pytest.raises(CheckpointError, match="no sharded checkpoint there"):
        sharding.load_sharded(pad, None, tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not a complete sharded checkpoint"):
        sharding.load_sharded(pad, None, tmp_path / "plain")
    with pytest.raises(ConfigError, match="holds something other than a sharded checkpoint"):
        sharding.save_sharded(pad, None, tmp_path / "plain")
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="optimizer must be"):
        sharding.save_sharded(pad, "sgd", tmp_path / "ckpt")
    sharding.save_sharded(pad, None, tmp_path / "ckpt")
    (tmp_path / "ckpt" / sharding.MARKER_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="is unreadable") as info:
        sharding.load_sharded(pad, None, tmp_path / "ckpt")
    assert "\n" not in str(info.value)
    sharding.save_sharded(pad, None, tmp_path / "ckpt")
    other = padnet.get_pad_model(
        padnet.models.create_model("resnet10", conv="pad", width=0.5, num_classes=10), method="pad"
    )
    with pytest.raises(CheckpointError, match="does not fit this model or optimiser") as info:
        sharding.load_sharded(other, None, tmp_path / "ckpt")
    assert "\n" not in str(info.value)
