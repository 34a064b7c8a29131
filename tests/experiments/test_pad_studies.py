"""``padnet pad``: every PAD-Net study end to end on a tiny recipe (digits, 1 epoch, 1 seed)."""

from __future__ import annotations

import pytest
from study_files import assert_normalised, read_studies

from padnet.cli import main
from padnet.experiments.studies import pad

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)

TINY = [
    "--dataset",
    "digits",
    "--model",
    "resnet10",
    "--width",
    "0.125",
    "--epochs",
    "1",
    "--train-subset",
    "128",
    "--batch-size",
    "32",
    "--partition-batches",
    "2",
    "--partition-iterations",
    "2",
    "--progress",
    "false",
    "--seeds",
    "0",
]


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("pad")
    assert main(["pad", "all", *TINY, "--out", str(out)]) == 0
    return out, read_studies(out, pad.STUDIES)  # checks each study's page and figure too


def test_variant_studies_train_each_variant_once_and_share_runs(studies):
    out, results = studies
    assert [r["label"] for r in results["partition"]["records"]] == [
        "Dynamic (DY-Conv)",
        "Random",
        "One-shot MP",
        "IMP",
    ]
    assert [r["label"] for r in results["scales"]["records"]] == list(pad.SCALES.values())
    assert [r["model"] for r in results["pruning"]["records"]] == ["dy", "pad", "pad-pruned"]
    # the κ = 0.3 IMP run is one run, shared by partition, kappa, scales, pruning and property
    runs = sorted(p.name for p in (out / "runs").iterdir())
    # partition 4 runs (dy, random, mp, imp), kappa 3 more, scales 4 more, pruning 1 more, property 1 more (static)
    assert runs == sorted(
        f"{name}-seed0"
        for name in (
            "dy",
            "pad-random",
            "pad-mp",
            "pad",
            "pad-k10",
            "pad-k50",
            "pad-k70",
            "pad-scales-none",
            "pad-scales-static",
            "pad-scales-dynamic",
            "pad-scales-both",
            "pad-pruned",
            "static",
        )
    )
    params = {r["model"]: r["params"] for r in results["pruning"]["records"]}
    assert params["pad-pruned"] < params["pad"] < params["dy"]  # pruned elements are not stored at all


def test_kappa_study_reports_normalised_performance(studies):
    _, results = studies
    assert_normalised(results["kappa"]["records"], [f"κ = {k:g}" for k in pad.KAPPAS], "top1")


def test_layers_study_reaches_each_kappa_with_per_layer_ratios(studies):
    _, results = studies
    records = results["layers"]["records"]
    assert {(r["model"], r["width"], r["kappa"]) for r in records} == {
        (a, w, k) for a in pad.LAYERS_ARCHS for w in pad.LAYERS_WIDTHS["quick"] for k in pad.LAYERS_KAPPAS
    }
    for r in records:
        assert r["dynamic_ratio"] == pytest.approx(r["kappa"], abs=0.01)
        assert all(0.0 <= v <= 1.0 for v in r["layers"].values()) and len(r["layers"]) > 5


def test_property_study_static_layers_have_no_parameter_variance(studies):
    _, results = studies
    by = {r["model"]: r for r in results["property"]["records"]}
    assert all(v == 0.0 for v in by["static"]["parameter_variance"][0])
    assert all(v > 0.0 for v in by["dy"]["parameter_variance"][0])
    assert all(v >= 0.0 for v in by["pad"]["output_variance"][0])
    assert len(by["pad"]["layers"]) == len(by["pad"]["parameter_variance"][0])


def test_unknown_study_is_refused(capsys):
    assert main(["pad", "ablations", *TINY]) == 2
    assert capsys.readouterr().err.strip() == (
        "padnet: error: unknown study 'ablations'; choose from partition, "
        "kappa, scales, pruning, layers, property, noise, transfer, all"
    )


def test_shipped_config_is_the_quick_recipe():
    from pathlib import Path

    from padnet.training.config import TrainConfig, config_from_dict, load_yaml

    shipped = load_yaml(Path(__file__).resolve().parents[2] / "configs" / "fashion-mnist-pad-studies.yaml")
    assert config_from_dict(shipped, TrainConfig()).effective() == config_from_dict(pad.QUICK).effective()


def test_noise_and_transfer_compare_static_dy_and_pad(studies):
    _, results = studies
    for study in ("noise", "transfer"):
        assert [r["model"] for r in results[study]["records"]] == ["static", "dy", "pad"]
    for r in results["noise"]["records"]:
        assert list(r["top1"]) == [str(s) for s in pad.SIGMAS] and all(
            len(v) == 1 for v in r["top1"].values()
        )
    for r in results["transfer"][
        "records"
    ]:  # digits: 10 classes; full fine-tuning learns them well above chance
        assert len(r["linear"]) == len(r["full"]) == 1 and r["full"][0] > 30.0
    trained = {r["model"]: r["top1"] for r in results["pruning"]["records"]}  # dy and pad, as trained
    for r in results["noise"]["records"]:  # σ = 0 is the trained model's own test accuracy
        if r["model"] in trained:
            assert r["top1"]["0.0"] == pytest.approx(trained[r["model"]])
