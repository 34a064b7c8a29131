"""The main job's pipeline on a tiny setting (scikit-learn digits, one epoch)."""

from __future__ import annotations

import json

import pytest

from padnet.experiments.compare import run_compare
from padnet.training.config import TrainConfig

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = TrainConfig(
        dataset="digits", width=0.125, epochs=1, batch_size=32, train_subset=256, progress=False
    ).replace(partition_batches=2, partition_iterations=2)
    records = run_compare(out, cfg, seeds=(0, 1), log=lambda _: None)
    return out, cfg, records


def test_records_have_the_table_columns(compare_run):
    out, _, records = compare_run
    assert [r["model"] for r in records] == ["static", "dy", "pad"]
    for r in records:
        assert {"model", "params", "flops", "top1_mean", "top1_std", "seeds"} <= set(r)
        assert r["seeds"] == [0, 1] and len(r["top1"]) == 2
        assert 0.0 <= r["top1_mean"] <= 100.0 and r["top1_std"] >= 0.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == json.loads(json.dumps(records))


def test_parameter_ordering_and_ratio(compare_run):
    _, _, records = compare_run
    static, dy, pad = records
    assert static["params"] < pad["params"] < dy["params"]
    assert static["flops"] < pad["flops"] < dy["flops"]
    assert pad["dynamic_ratio"] == pytest.approx(0.3, abs=1e-3)
    assert static["dynamic_ratio"] is None


def test_outputs_written(compare_run):
    out, _, _ = compare_run
    table = (out / "results.md").read_text()
    assert "| Static |" in table and "| DY-Conv |" in table and "PAD-Net (κ=0.3)" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for conv in ("static", "dy", "pad"):
        assert (out / f"{conv}-seed0" / "results.json").is_file()


def test_rerun_reuses_finished_runs(compare_run):
    out, cfg, records = compare_run
    stamp = (out / "dy-seed1" / "results.json").stat().st_mtime_ns
    again = run_compare(out, cfg, seeds=(0, 1), log=lambda _: None)
    assert [r["top1"] for r in again] == [r["top1"] for r in records]
    assert (out / "dy-seed1" / "results.json").stat().st_mtime_ns == stamp


def test_runs_made_with_another_recipe_are_refused(compare_run):
    import dataclasses

    from padnet.errors import ConfigError

    out, cfg, _ = compare_run
    with pytest.raises(ConfigError, match="differs in epochs"):
        run_compare(out, dataclasses.replace(cfg, epochs=2), seeds=(0, 1), log=lambda _: None)
