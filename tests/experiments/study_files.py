"""What every study writes, read the same way for `padnet pad` and `padnet pad-moe`."""

import json
from pathlib import Path

from padnet.experiments.studies.compression import Recipe


def read_studies(out: Path, studies) -> dict[str, dict]:
    """Each study's results.json by name, after checking that its folder also holds a Markdown page with a title
    and a PNG figure."""
    results = {}
    for name in studies:
        assert (out / name / "results.md").read_text().startswith("# "), name
        assert (out / name / "results.png").read_bytes()[:4] == b"\x89PNG", name
        results[name] = json.loads((out / name / "results.json").read_text())
    return results


def assert_normalised(records: list[dict], labels: list[str], value: str) -> None:
    """A κ study's records carry ``labels`` in order and the normalised performance of ``{value}_mean``:
    (x − mean) / mean, which sums to zero (PAD-Net Table 5)."""
    assert [r["label"] for r in records] == labels
    assert abs(sum(r["normalised"] for r in records)) < 1e-12
    mean = sum(r[f"{value}_mean"] for r in records) / len(records)
    for r in records:
        assert abs(r["normalised"] - (r[f"{value}_mean"] - mean) / mean) < 1e-12


# A recipe small enough for an end-to-end run of the compression studies in seconds.
TINY = Recipe(
    hidden=16,
    intermediate=16,
    layers=1,
    experts=4,
    heads=2,
    vocab=300,
    steps=5,
    block=32,
    batch=4,
    calibration_reviews=40,
    calibration_batches=2,
    finetune_steps=3,
    train_reviews=200,
)
