"""Runs killed with SIGKILL resume from their last checkpoint to bit-identical final weights (CPU)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cpu_processes import ENV
from safetensors.torch import load_file

from padnet.training.engine import read_checkpoint

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)


def padnet(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "padnet", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def kill_after_first_checkpoint(args: list[str], run_dir: Path, checkpoint: str, delay: float) -> None:
    """Start ``padnet ARGS``, wait for ``checkpoint`` in ``run_dir``, then SIGKILL it ``delay`` s later."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "padnet", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / checkpoint).exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        print(f"killed {delay:.3f} s after the first checkpoint")  # shown when the test fails
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_vision_run_killed_at_a_random_step_resumes_to_identical_weights(tmp_path):
    flags = [
        "train",
        "--dataset",
        "digits",
        "--model",
        "resnet10",
        "--width",
        "0.25",
        "--conv",
        "pad",
        "--epochs",
        "4",
        "--batch-size",
        "32",
        "--train-subset",
        "512",
        "--lr",
        "0.05",
        "--partition-batches",
        "2",
        "--partition-iterations",
        "2",
        "--progress",
        "false",
        "--threads",
        "1",
    ]
    padnet(*flags, "--out", str(tmp_path / "whole"))
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    epoch_seconds = records[-1]["elapsed_s"] / len(records)
    # a random point within the 1.5 epochs after the first checkpoint, whatever this machine's speed
    delay = random.Random().uniform(0.0, 1.5) * epoch_seconds
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(
        [*flags, "--out", str(killed)], killed, "checkpoint-epoch0001.safetensors", delay
    )
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    for checkpoint in killed.glob("checkpoint-*.safetensors"):  # atomic writes: none is half-written
        read_checkpoint(checkpoint)
    padnet(*flags, "--out", str(killed), "--resume")
    assert_same_weights(tmp_path / "whole" / "model.safetensors", killed / "model.safetensors")
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == [
        "checkpoint-epoch0003.safetensors",
        "checkpoint-epoch0004.safetensors",
    ]
