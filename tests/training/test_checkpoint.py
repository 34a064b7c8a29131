"""Tests of padnet.training.engine.checkpoint (safetensors, atomic, never unpickled) and Trainer resume."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import padnet.training.engine.checkpoint as ckpt_mod
from padnet.errors import CheckpointError, ConfigError
from padnet.models import create_model
from padnet.partitioning import partition
from padnet.training.config import TrainConfig
from padnet.training.data import ImageData
from padnet.training.data.images import channel_stats
from padnet.training.engine import Trainer, load_model_state, read_checkpoint, save_checkpoint
from padnet.training.engine.checkpoint import restore_training


def _pad_model(width=0.125, seed=0):
    torch.manual_seed(seed)
    return create_model("resnet10", conv="pad", num_classes=4, width=width, stem="small", temperature=2.0)


def _x(batch=4, size=8, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _masks(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith("mask")}


@pytest.fixture
def trained(tmp_path):
    """A partitioned PAD model after two SGD steps with momentum, saved to a checkpoint."""
    model = _pad_model()
    partition(model, 0.4, "random", seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()
    for seed in (1, 2):
        loss = nn.functional.cross_entropy(model(_x(seed=seed)), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = save_checkpoint(tmp_path / "run" / "ckpt.safetensors", model, {"epoch": 3, "note": "x"}, opt)
    return model, opt, path


# ------------------------------------------------------------------------------------ round trip


def test_round_trip_model_and_masks(trained):
    model, _, path = trained
    assert path.is_file()
    tensors, meta = read_checkpoint(path)
    assert meta["state"] == {"epoch": 3, "note": "x"}
    fresh = _pad_model(seed=123)
    assert any(not torch.equal(a, b) for a, b in zip(_masks(fresh).values(), _masks(model).values()))
    load_model_state(fresh, tensors, path)
    for name, mask in _masks(model).items():
        assert torch.equal(_masks(fresh)[name], mask), name
    assert (
        0 < sum(int(m.sum()) for m in _masks(fresh).values()) < sum(m.numel() for m in _masks(fresh).values())
    )
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), n
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(_x(seed=7)), model(_x(seed=7)))


def test_round_trip_optimizer_state(trained):
    model, opt, path = trained
    tensors, meta = read_checkpoint(path)
    fresh = _pad_model(seed=5)
    load_model_state(fresh, tensors, path)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=1.0, momentum=0.0)
    restore_training(tensors, meta, fresh_opt)
    saved, restored = opt.state_dict(), fresh_opt.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    assert restored["state"].keys() == saved["state"].keys() and len(saved["state"]) > 0
    for pid, state in saved["state"].items():
        assert torch.equal(restored["state"][pid]["momentum_buffer"], state["momentum_buffer"])
    # one more identical step on both keeps them identical
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m.train()
        loss = nn.functional.cross_entropy(m(_x(seed=9)), torch.tensor([3, 2, 1, 0]))
        o.zero_grad()
        loss.backward()
        o.step()
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=n)


def test_rng_state_round_trip(tmp_path):
    model = nn.Linear(2, 2)
    torch.manual_seed(11)
    path = save_checkpoint(tmp_path / "c.safetensors", model, {})
    expected = torch.rand(5)
    torch.manual_seed(99)
    tensors, meta = read_checkpoint(path)
    restore_training(tensors, meta)
    assert torch.equal(torch.rand(5), expected)


# ------------------------------------------------------------------------------------- bad files


def _assert_one_line(exc_info):
    message = str(exc_info.value)
    assert message and "\n" not in message


@pytest.mark.parametrize("keep", [0, 4, 8, 20, 0.5, -1])
def test_truncated_checkpoint(trained, keep):
    _, _, path = trained
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    _assert_one_line(info)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "random.safetensors"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    _assert_one_line(info)


def test_random_bytes_with_small_header_length(tmp_path):
    path = tmp_path / "garbage.safetensors"
    body = random.Random(3).randbytes(64)
    path.write_bytes((64).to_bytes(8, "little") + body)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    _assert_one_line(info)


def test_torch_pickle_is_not_loaded(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_pad_model().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    _assert_one_line(info)


def test_checkpoint_whose_header_length_starts_like_a_pickle_is_read(tmp_path):
    # a safetensors file starts with its header length (8 bytes, little-endian): 0x80 there is not a pickle
    path = tmp_path / "model.safetensors"
    model = nn.Linear(2, 2)
    for pad in range(0, 256, 8):
        save_checkpoint(path, model, {"note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    tensors, meta = read_checkpoint(path)
    assert torch.equal(tensors["model/weight"], model.weight.detach()) and meta["state"]["note"].startswith(
        "x"
    )


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "nope.safetensors")
    _assert_one_line(info)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path)


def test_foreign_safetensors(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(plain)
    _assert_one_line(info)
    bad_json = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_json), metadata={"padnet": "{not json"})
    with pytest.raises(CheckpointError):
        read_checkpoint(bad_json)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"padnet": json.dumps({"format": "other-9"})})
    with pytest.raises(CheckpointError):
        read_checkpoint(other)


def test_wrong_architecture(trained):
    _, _, path = trained
    tensors, _ = read_checkpoint(path)
    with pytest.raises(CheckpointError) as info:
        load_model_state(_pad_model(width=0.25), tensors, path)
    _assert_one_line(info)
    assert "does not match" in str(info.value)
    torch.manual_seed(0)
    dy = create_model("resnet10", conv="dy", num_classes=4, width=0.125, stem="small")
    with pytest.raises(CheckpointError) as info:
        load_model_state(dy, tensors, path)
    assert "does not match" in str(info.value)


# ---------------------------------------------------------------------------------- atomic write


def test_failed_save_leaves_previous_file_intact(trained, monkeypatch):
    model, opt, path = trained
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, model, {"epoch": 4}, opt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    monkeypatch.undo()
    _, meta = read_checkpoint(path)
    assert meta["state"]["epoch"] == 3


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(tensors, filename, metadata=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.safetensors", nn.Linear(2, 2), {})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- Trainer resume


def _image_data():
    gen = torch.Generator().manual_seed(0)
    train_images = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8, generator=gen)
    test_images = torch.randint(0, 256, (32, 1, 12, 12), dtype=torch.uint8, generator=gen)
    mean, std = channel_stats(train_images)
    train = ImageData(train_images, torch.randint(0, 4, (64,), generator=gen), 4, mean, std)
    test = ImageData(test_images, torch.randint(0, 4, (32,), generator=gen), 4, mean, std)
    return train, test


def _config(**kw):
    base = {
        "model": "resnet10",
        "width": 0.125,
        "conv": "pad",
        "epochs": 2,
        "batch_size": 16,
        "partition_batches": 2,
        "partition_iterations": 2,
        "progress": False,
        "temperature_anneal": 1.0,
        "warmup_epochs": 0.5,
    }
    return TrainConfig().replace(**{**base, **kw})


class _Crash(Exception):
    pass


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(run_dir / "model.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model/")}


def _run_crash_resume(root: Path, cfg: TrainConfig, data):
    """Run A uninterrupted in root/a; run B crashes right after its epoch-1 checkpoint and resumes in root/b."""
    rng = torch.get_rng_state()
    results_a = Trainer(cfg, root / "a", data=data).fit()
    original_save = Trainer.save

    def save_then_crash(self):
        path = original_save(self)
        if self.epoch == 1:
            raise _Crash
        return path

    Trainer.save = save_then_crash
    try:
        with pytest.raises(_Crash):
            Trainer(cfg, root / "b", data=data).fit()
    finally:
        Trainer.save = original_save
    assert not (root / "b" / "model.safetensors").exists()
    assert [p.name for p in sorted((root / "b").glob("checkpoint-epoch*"))] == [
        "checkpoint-epoch0001.safetensors"
    ]
    torch.manual_seed(12345)  # the resumed run must not depend on the process RNG state
    resumed = Trainer(cfg, root / "b", resume=True, data=data)
    results_b = resumed.fit()
    torch.set_rng_state(rng)
    return results_a, results_b, resumed


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = _image_data()
    results_a, results_b, resumed = _run_crash_resume(root, _config(), data)
    return root, data, results_a, results_b, resumed


def test_sd_conv_resume_restores_thresholds_and_their_optimiser(tmp_path):
    cfg = _config(conv="sdconv", sparsity=0.4, threshold_lr=5e-3)
    results_a, results_b, resumed = _run_crash_resume(tmp_path, cfg, _image_data())
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert any(k.endswith("weight_mode.threshold") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert results_a["sparsity"] == results_b["sparsity"] and results_a["sparsity"]["sparsity"] > 0
    tensors, meta = read_checkpoint(tmp_path / "b" / "checkpoint-epoch0002.safetensors")
    state = resumed.hooks.method.optimizers()[
        "thresholds"
    ].state_dict()  # Adam's state is saved under its own name
    assert [g["lr"] for g in meta["optimizer-thresholds"]["param_groups"]] == [
        g["lr"] for g in state["param_groups"]
    ]
    for pid, pstate in state["state"].items():
        assert torch.equal(tensors[f"optim-thresholds/{pid}/exp_avg_sq"], pstate["exp_avg_sq"])


def test_resume_gives_identical_weights(resume_runs):
    root, _, results_a, results_b, resumed = resume_runs
    a, b = _final_weights(root / "a"), _final_weights(root / "b")
    assert a.keys() == b.keys()
    assert any(k.endswith("weight_mode.mask") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.epoch == 2 and resumed.step == 2 * (64 // 16)
    assert results_a["top1"] == results_b["top1"]
    assert results_a["partition"] == results_b["partition"]
    # the partition reached κ and both runs kept the same masks
    assert results_a["partition"]["dynamic"] == round(0.3 * results_a["partition"]["total"])


def test_resume_metrics_log(resume_runs):
    root, *_ = resume_runs
    logs = {}
    for run in ("a", "b"):
        lines = (root / run / "metrics.jsonl").read_text().splitlines()
        logs[run] = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in logs["a"]] == [1, 2]
    assert [r["epoch"] for r in logs["b"]] == [1, 2]
    for ra, rb in zip(logs["a"], logs["b"]):
        for key in ("step", "train_loss", "train_top1", "test_top1", "lr", "temperature"):
            assert ra[key] == rb[key], key


def test_second_trainer_without_resume_in_existing_run_dir(resume_runs):
    root, data, *_ = resume_runs
    with pytest.raises(ConfigError):
        Trainer(_config(), root / "a", data=data)
    with pytest.raises(ConfigError):
        Trainer(_config(), root / "b", data=data)


def test_checkpoint_of_trainer_is_readable_and_matches_config(resume_runs):
    root, *_ = resume_runs
    tensors, meta = read_checkpoint(root / "a" / "checkpoint-epoch0002.safetensors")
    assert meta["state"]["epoch"] == 2
    assert meta["state"]["config"]["conv"] == "pad"
    assert any(k.startswith("optim/") for k in tensors)
    assert "rng/torch" in tensors
    # keep_checkpoints = 2
    assert sorted(p.name for p in (root / "a").glob("checkpoint-epoch*")) == [
        "checkpoint-epoch0001.safetensors",
        "checkpoint-epoch0002.safetensors",
    ]
    assert not any(p.name.endswith(".tmp") for p in (root / "a").iterdir())
    assert os.path.isfile(root / "a" / "results.json")


def test_resume_with_a_different_configuration_is_refused(resume_runs, tmp_path):
    root, data, _, _, _ = resume_runs
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = min((root / "b").glob("checkpoint-epoch*"))
    (run / checkpoint.name).write_bytes(checkpoint.read_bytes())
    with pytest.raises(ConfigError, match="differs in kappa, lr"):
        Trainer(_config(kappa=0.5, lr=0.05), run, resume=True, data=data).fit()
    assert sorted(p.name for p in run.iterdir()) == [checkpoint.name]  # nothing written or overwritten


def test_a_resumed_run_sweeps_the_temporary_file_a_killed_write_left(tmp_path):
    import tempfile

    from padnet.saving.fileio import TEMPORARY, atomic_path
    from padnet.training.engine.checkpoint import claim_run_dir

    run = tmp_path / "run"
    run.mkdir()
    fd, orphan = tempfile.mkstemp(prefix=".checkpoint-epoch0002.safetensors.", suffix=".tmp", dir=run)
    os.write(fd, b"x" * 1000)  # what SIGKILL in the middle of atomic_path leaves
    os.close(fd)
    (run / "notes.tmp").write_text("the user's file")  # not padnet's: kept
    (run / ".hidden.tmp").write_text("no random part: kept")
    claim_run_dir(run, resume=True)
    assert not Path(orphan).exists()
    assert (run / "notes.tmp").exists() and (run / ".hidden.tmp").exists()
    with atomic_path(run / "model.safetensors") as tmp:  # the pattern matches what atomic writes create
        assert TEMPORARY.match(tmp.name)
        tmp.write_bytes(b"")


def test_a_state_with_nan_or_inf_is_never_written_and_the_last_good_checkpoint_is_named(tmp_path):
    from padnet.errors import NonFiniteStateError

    model = _pad_model()
    good = save_checkpoint(tmp_path / "checkpoint-epoch0001.safetensors", model, {"epoch": 1})
    with torch.no_grad():
        model.layer1[0].bn1.running_var[0] = float("inf")
    with pytest.raises(
        NonFiniteStateError,
        match=r"non-finite values in layer1.0.bn1.running_var; this checkpoint "
        r"was not written and the last good checkpoint is .*epoch0001",
    ):
        save_checkpoint(tmp_path / "checkpoint-epoch0002.safetensors", model, {"epoch": 2})
    assert not (tmp_path / "checkpoint-epoch0002.safetensors").exists() and good.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_full_disk_while_safetensors_writes_is_an_oserror_and_leaves_no_temporary_file(tmp_path):
    from safetensors import SafetensorError

    from padnet.saving.fileio import atomic_path

    with (
        pytest.raises(OSError, match=r"cannot write .*model.safetensors \(Error while serializing: No space"),
        atomic_path(tmp_path / "model.safetensors"),
    ):
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_metrics_log_keeps_the_records_before_the_damage(tmp_path):
    from padnet.training.engine.trainer import _read_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1, "test_top1": 50.0}\n[1, 2]\n{"epoch": 3}\n')
    assert _read_jsonl(log) == [{"epoch": 1, "test_top1": 50.0}]
    log.write_bytes(b'{"epoch": 1}\n{"epo\xff')
    assert _read_jsonl(log) == [{"epoch": 1}]


@pytest.mark.parametrize(
    "value,message",
    [
        (3e20, r"diverged loss \(3e\+20, above 10000\) at step 0"),
        (float("nan"), r"non-finite loss \(nan\) at step 0"),
    ],
)
def test_a_diverged_or_non_finite_loss_stops_training_before_any_checkpoint(tmp_path, value, message):
    from padnet.errors import NonFiniteLossError
    from padnet.training.config import TrainConfig
    from padnet.training.data.images import ImageData, channel_stats
    from padnet.training.engine.trainer import Trainer

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=gen)
    data = ImageData(images, torch.arange(32) % 4, 4, *channel_stats(images))
    cfg = TrainConfig(
        model="resnet10", width=0.125, conv="static", epochs=1, batch_size=16, progress=False
    ).validate()
    trainer = Trainer(cfg, tmp_path / "run", data=(data, data))
    trainer.criterion = lambda logits, y: logits.sum() * 0 + value  # a finite but absurd loss, or NaN
    with pytest.raises(NonFiniteLossError, match=message):
        trainer.fit()
    assert not list((tmp_path / "run").glob("*.safetensors"))
