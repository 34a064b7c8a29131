"""Bad input to the data readers and to training runs found by a probe: one padnet error of one line each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from padnet.cli import main
from padnet.errors import CheckpointError, ConfigError, DataError
from padnet.training.config import TrainConfig
from padnet.training.data.arrays import from_arrays
from padnet.training.data.images import channel_stats
from padnet.training.engine.trainer import Trainer


@pytest.mark.parametrize("shape", [(4, 1, 0, 0), (0, 1, 8, 8), (4, 0, 8, 8)])
def test_channel_statistics_of_images_without_pixels_are_refused(shape):
    with pytest.raises(DataError, match=r"channel statistics need a non-empty uint8 \(N, C, H, W\) tensor"):
        channel_stats(torch.zeros(shape, dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(4, 0, 8, 8), (4, 1, 0, 8), (4, 0, 0)])
def test_arrays_without_channels_or_pixels_are_refused(shape):
    with pytest.raises(DataError, match=r"images \(.*\) are empty"):
        from_arrays(np.zeros(shape, np.uint8), np.arange(4) % 2)


def test_flat_arrays_suggest_the_flag_and_the_argument():
    with pytest.raises(DataError) as info:
        from_arrays(np.zeros((4, 50), np.uint8), np.arange(4) % 2)
    assert str(info.value) == (
        "flat images (4, 50) need an image size: --image-size SIDE on the command line, "
        "image_size=SIDE in Python"
    )


def test_a_kappa_that_keeps_no_dynamic_element_is_refused_before_the_run_directory_is_written(tmp_path):
    cfg = TrainConfig(
        dataset="digits", conv="pad", width=0.125, epochs=1, batch_size=32, train_subset=64, progress=False
    ).replace(kappa=1e-300)
    with pytest.raises(
        ConfigError, match=r"^kappa 1e-300 leaves no dynamic element of the [\d,]+ mask elements"
    ):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


TINY = [
    "train",
    "--dataset",
    "digits",
    "--model",
    "resnet10",
    "--width",
    "0.125",
    "--train-subset",
    "64",
    "--batch-size",
    "32",
    "--progress",
    "false",
    "--augment",
    "false",
]


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "2", "--out", str(out)]) == 0
    want = json.loads((out / "results.json").read_text())["top1"]
    newest = out / "checkpoint-epoch0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])
    capsys.readouterr()
    assert main([*TINY, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"padnet: warning: checkpoint-epoch0002.safetensors cannot be resumed ({newest} is not a readable padnet "
        "checkpoint ("
    )
    assert err[0].endswith("; resuming from checkpoint-epoch0001.safetensors instead")
    assert json.loads((out / "results.json").read_text())["top1"] == pytest.approx(
        want, abs=1e-9
    )  # epoch 2 again
    assert (
        main([*TINY, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    )  # the new epoch-2 checkpoint loads
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"warmup_epochs": 1e308}, "warmup_epochs must be in [0, 100000] epochs, got 1e+308"),
        (
            {"temperature_anneal": float("inf")},
            "temperature_anneal must be a number >= 0 and <= 100000, got inf",
        ),
        ({"temperature_start": 1e308}, "temperature_start must be a number > 0 and <= 10000.0, got 1e+308"),
        ({"temperature_end": 1e39}, "temperature_end must be a number > 0 and <= 10000.0, got 1e+39"),
        (
            {"pruning_iterations": 10**9},
            "pruning_iterations must be an integer >= 0 and <= 1000, got 1000000000",
        ),
    ],
)
def test_schedule_lengths_and_temperatures_are_bounded(change, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(conv="dy").replace(**change).validate()
    assert str(info.value) == message


def test_a_fine_tuning_run_resumes_from_the_newest_checkpoint_that_loads(tiny_model, tmp_path, capsys):
    from padnet.training.config import FinetuneConfig
    from padnet.training.nlp.finetune import finetune

    cfg = FinetuneConfig(
        model=tiny_model, method="dense", train_subset=32, epochs=2, batch_size=16, progress=False
    )
    finetune(cfg, log=lambda *a: None, run_dir=tmp_path)
    newest = tmp_path / "checkpoint-epoch0002.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])
    capsys.readouterr()
    finetune(cfg, log=lambda *a: None, run_dir=tmp_path, resume=True)
    assert "padnet: warning: checkpoint-epoch0002.safetensors cannot be resumed" in capsys.readouterr().err
    for path in tmp_path.glob("checkpoint-*"):
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as info:
        finetune(cfg, log=lambda *a: None, run_dir=tmp_path, resume=True)
    assert str(info.value).endswith(
        f"; no other checkpoint in {tmp_path} loads: delete checkpoint-epoch0002"
        ".safetensors, checkpoint-epoch0001.safetensors to train the run from the "
        "start, or choose another --out"
    )
