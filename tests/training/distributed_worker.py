"""Run by tests/test_distributed.py under ``torchrun --nproc-per-node 2`` (gloo, CPU): one check per name.

``python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_worker.py CHECK OUT``; each
process writes OUT/rank<r>.safetensors for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from padnet.models import create_model
from padnet.partitioning import partition
from padnet.training.distributed import global_batchnorm, init


def batchnorm(ctx) -> dict[str, torch.Tensor]:
    """GlobalBatchNorm2d on this process's half of a batch: output, input gradient, parameter gradients
    (summed over processes, as DDP would average them) and running statistics."""
    torch.manual_seed(0)
    model = global_batchnorm(nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU()), ctx)
    x = torch.randn(10, 3, 7, 7, generator=torch.Generator().manual_seed(1)) * 3 + 2
    mine = ctx.shard(x).requires_grad_(True)
    out = model(mine)
    (out.square().sum() / 10).backward()  # this half's share of the full batch's mean-square loss
    grads = [p.grad for p in model.parameters()]
    ctx.all_reduce_(grads)
    return {
        "out": out.detach(),
        "x_grad": mine.grad,
        "running_mean": model[1].running_mean,
        "running_var": model[1].running_var,
        **{f"grad{i}": g for i, g in enumerate(grads)},
    }


def masks(ctx) -> dict[str, torch.Tensor]:
    """IMP on batches that differ between processes: the masks each process ends with."""
    torch.manual_seed(0)
    model = create_model("resnet10", conv="pad", num_classes=3, width=0.125, stem="small")
    gen = torch.Generator().manual_seed(10 + ctx.rank)
    batches = [
        (torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)) for _ in range(2)
    ]
    partition(model, 0.3, "imp", batches, num_batches=2, iterations=2)
    return {n: b for n, b in model.named_buffers() if n.endswith("mask")}


if __name__ == "__main__":
    check, out = sys.argv[1], Path(sys.argv[2])
    context = init("cpu")
    tensors = {"batchnorm": batchnorm, "masks": masks}[check](context)
    save_file(
        {k: v.detach().contiguous() for k, v in tensors.items()}, str(out / f"rank{context.rank}.safetensors")
    )
