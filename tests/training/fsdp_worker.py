"""Run by tests/training/test_fsdp.py under ``torchrun --nproc-per-node 2`` (gloo, CPU): one check per name.

``python -m torch.distributed.run --standalone --nproc-per-node 2 fsdp_worker.py CHECK OUT``. Each process
writes OUT/<model>-<check>-rank<r>.safetensors (its shards of the parameters and optimiser state, its masks and
buffers) for the test to compare.

* ``run``: a PAD ResNet and a PAD-MoE BERT encoder, sharded with FSDP2, train ``STEPS`` steps with mode
  partition at ``PARTITION[model]`` through the PadModel hooks, writing a sharded checkpoint after
  ``SAVE_AT[model]`` steps; then process 0 writes each model's outputs on one batch and its gathered folder.
* ``resume``: the same models load those checkpoints and train on to ``STEPS``.
* ``ddp_autocast``: a PAD ResNet in DistributedDataParallel trains under bfloat16 autocast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import padnet
from padnet.training import distributed, sharding
from padnet.training.distributed import init

STEPS = 4
BATCH = 8  # global batch; each process trains on half
PARTITION = {"resnet": 2, "bert": 1}  # steps before mode partition
SAVE_AT = {
    "resnet": 1,
    "bert": 2,
}  # before the partition (it runs again after resuming), after it (masks saved)


def build(kind: str) -> padnet.PadModel:
    """The same model on every process (seed 0), converted by get_pad_model."""
    torch.manual_seed(0)
    options = {
        "partition_at": "steps",
        "partition_after": PARTITION[kind],
        "partition_batches": 2,
        "partition_iterations": 2,
    }
    if kind == "resnet":
        model = padnet.models.create_model("resnet10", conv="pad", width=0.25, num_classes=10)
        return padnet.get_pad_model(model, padnet.PadConfig(method="pad", kappa=0.3, **options))
    import transformers

    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    bert = transformers.BertForSequenceClassification(config)
    return padnet.get_pad_model(bert, padnet.PadConfig(method="pad-moe", **options))


def batches(kind: str) -> list:
    """STEPS global batches (the same on every process)."""
    gen = torch.Generator().manual_seed(1)
    if kind == "resnet":
        return [
            (torch.randn(BATCH, 3, 32, 32, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen))
            for _ in range(STEPS)
        ]
    return [
        {
            "input_ids": torch.randint(0, 100, (BATCH, 12), generator=gen),
            "labels": torch.randint(0, 2, (BATCH,), generator=gen),
        }
        for _ in range(STEPS)
    ]


def chunk(ctx, batch):
    """This process's half of a global batch."""
    if isinstance(batch, dict):
        return {k: ctx.shard(v) for k, v in batch.items()}
    return tuple(ctx.shard(t) for t in batch)


def loss_of(pad, batch) -> torch.Tensor:
    if isinstance(batch, dict):
        return pad(**batch).loss + pad.extra_loss()
    x, y = batch
    return F.cross_entropy(pad(x), y) + pad.extra_loss()


def optimizer_for(kind: str, pad) -> torch.optim.Optimizer:
    if kind == "resnet":
        return torch.optim.SGD(pad.optimizer_parameters(), lr=0.05, momentum=0.9)
    return torch.optim.AdamW(pad.optimizer_parameters(), lr=1e-3)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor, a plain tensor itself; a contiguous copy."""
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.detach().clone().contiguous()


def local_state(pad, optimizer) -> dict[str, torch.Tensor]:
    """This process's shards of every parameter and optimiser state, its buffers (masks) and its RNG state."""
    out = {f"model/{k}": local(v) for k, v in pad.state_dict().items()}
    names = {id(p): n for n, p in pad.named_parameters()}
    for p, state in optimizer.state.items():
        out.update({f"optim/{names[id(p)]}/{k}": local(v) for k, v in state.items() if torch.is_tensor(v)})
    out["rng"] = torch.get_rng_state()
    return out


def train(ctx, kind: str, out: Path, resume: bool) -> None:
    pad = sharding.shard(build(kind), ctx)
    optimizer = optimizer_for(kind, pad)
    data = [chunk(ctx, b) for b in batches(kind)]
    checkpoint = out / f"{kind}-checkpoint"
    start = sharding.load_sharded(pad, optimizer, checkpoint)["step"] if resume else 0
    pad.start_training(steps_per_epoch=STEPS, total_steps=STEPS, partition_data=data[:2], step=start)
    losses = []
    for step in range(start, STEPS):
        pad.before_step()
        loss = loss_of(pad, data[step])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pad.after_step()
        losses.append(loss.detach())
        if not resume and step + 1 == SAVE_AT[kind]:
            sharding.save_sharded(pad, optimizer, checkpoint)
    state = {**local_state(pad, optimizer), "losses": torch.stack(losses)}
    save_file(state, str(out / f"{kind}-{'resume' if resume else 'run'}-rank{ctx.rank}.safetensors"))
    if resume:
        return
    pad.eval()
    batch = batches(kind)[0]
    with torch.no_grad():
        logits = pad(batch[0]) if kind == "resnet" else pad(input_ids=batch["input_ids"]).logits
    if ctx.main:
        save_file({"logits": logits.contiguous()}, str(out / f"{kind}-outputs.safetensors"))
    sharding.save_pretrained(pad, out / f"{kind}-folder", full=True)


def ddp_autocast(ctx, out: Path) -> None:
    """A PAD ResNet in DDP, forward and loss under bfloat16 autocast, mode partition at step 2."""
    pad = build("resnet")
    model = distributed.data_parallel(distributed.global_batchnorm(pad, ctx), ctx)
    optimizer = optimizer_for("resnet", pad)
    data = [chunk(ctx, b) for b in batches("resnet")]
    pad.start_training(steps_per_epoch=STEPS, total_steps=STEPS, partition_data=data[:2])
    losses = []
    for x, y in data:
        pad.before_step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y) + pad.extra_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pad.after_step()
        losses.append(loss.detach().float())
    state = {f"model/{k}": v.detach().clone().contiguous() for k, v in pad.state_dict().items()}
    state["logits_dtype_bf16"] = torch.tensor(logits.dtype == torch.bfloat16)
    save_file({**state, "losses": torch.stack(losses)}, str(out / f"ddp-rank{ctx.rank}.safetensors"))


if __name__ == "__main__":
    check, where = sys.argv[1], Path(sys.argv[2])
    context = init("cpu")
    if check == "ddp_autocast":
        ddp_autocast(context, where)
    else:
        for model_kind in ("resnet", "bert"):
            train(context, model_kind, where, resume=check == "resume")
