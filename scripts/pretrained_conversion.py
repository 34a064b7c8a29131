"""Pretrained conversion, measured: does a converted pretrained network keep its predictions, do its partition
scores carry signal (and when), and does starting from pretrained weights help a PAD-Net fine-tune?

    .venv/bin/python scripts/pretrained_conversion.py --out runs/pretrained     # about 5 minutes on 2 cores

1. Pretrain a static ResNet-10 ×0.25 on Fashion-MNIST training images 0–9,999 (2 epochs, seed 0).
2. Convert it to PAD-Net (``get_pad_model``) and compare top-1 predictions on the 10,000 test images.
3. Separation of the dynamic factors from Θ̄, IMP score mass (Σ|∂L/∂M| over Σ loss) and the Spearman rank
   correlation of one-shot scores from two disjoint sets of 4 batches: right after conversion, after 1, 10 and
   50 warm-up steps, and for a PAD-Net trained from scratch (its own kernels) before any step.
4. Fine-tune on 1,000 other training images (images 10,000–59,999, seeded draw), 8 epochs, partition after
   epoch 1: converted pretrained model vs the same architecture from scratch, seeds 0–2, top-1 on the test set.

Writes OUT/results.json and prints the tables that docs/results.md reports.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import padnet
from padnet.partitioning.imp import check_separation
from padnet.partitioning.scores import masked_tensors, snip_scores
from padnet.training.data import load_dataset, make_loader


def build(seed: int):
    torch.manual_seed(seed)
    return padnet.create_model("resnet10", num_classes=10, in_chans=1, stem="small", width=0.25)


@torch.no_grad()
def predictions(model, data) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x).argmax(1) for x, _ in make_loader(data, 500, train=False)])


def top1(model, data) -> float:
    return 100.0 * float((predictions(model, data) == data.labels).float().mean())


def train(model, data, epochs: int, seed: int, lr: float = 0.05, pad=None, progress=None):
    params = pad.optimizer_parameters() if pad is not None else model.parameters()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for epoch in range(epochs):
        for x, y in make_loader(data, 64, train=True, seed=seed, epoch=epoch, augment=False):
            if pad is not None:
                pad.before_step()
            loss = F.cross_entropy(model(x), y) + (pad.extra_loss() if pad is not None else 0.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if pad is not None:
                pad.after_step()
        if progress:
            progress(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")


def signal(pad, batches) -> dict:
    """Separation, score mass and the rank correlation of scores from two disjoint halves of ``batches``."""
    tensors = masked_tensors(pad.base_model)
    try:
        separation = check_separation(tensors, floor=0.0)
    except padnet.errors.ConfigError:
        separation = 0.0
    half = len(batches) // 2
    scores = []
    for part in (batches[:half], batches[half:]):
        s = snip_scores(pad.base_model, tensors, part, F.cross_entropy, half)
        scores.append(torch.cat([t.reshape(-1) for t in s]))
    with torch.no_grad():
        losses = sum(float(F.cross_entropy(pad.base_model.train()(x), y)) for x, y in batches[:half])
    rho = spearmanr(scores[0].numpy(), scores[1].numpy()).statistic
    return {
        "separation": separation,
        "score_mass": float(scores[0].sum()) / losses,
        "largest_score": float(scores[0].max()),
        "spearman": float(rho),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pretrained")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    train_all, test = load_dataset("fashion-mnist")
    pretrain_set, rest = (
        dataclasses.replace(train_all, images=train_all.images[part], labels=train_all.labels[part])
        for part in (slice(0, 10000), slice(10000, None))
    )
    results: dict = {"pretrain": {}, "signal": {}, "finetune": {"pretrained": [], "scratch": []}}

    print("1. pretraining a static ResNet-10 x0.25 on 10,000 Fashion-MNIST images")
    pretrained = build(0)
    train(pretrained, pretrain_set, 2, seed=0, progress=print)
    results["pretrain"]["top1"] = top1(pretrained, test)

    print("2. conversion keeps the predictions")
    pad = padnet.get_pad_model(copy.deepcopy(pretrained), padnet.PadConfig(method="pad"))
    before, after = predictions(pretrained, test), predictions(pad, test)
    results["pretrain"]["agreement"] = 100.0 * float((before == after).float().mean())
    results["pretrain"]["converted_top1"] = top1(pad, test)

    print("3. partition signal after conversion and after warm-up steps")
    batches = list(make_loader(rest, 64, train=True, seed=99, epoch=0, augment=False))[:8]
    results["signal"]["converted, 0 steps"] = signal(pad, batches)
    warm = list(make_loader(rest, 64, train=True, seed=5, epoch=0, augment=False))
    optimizer = torch.optim.SGD(pad.optimizer_parameters(), lr=0.05, momentum=0.9)
    done = 0
    for steps in (1, 10, 50):
        pad.train()
        for x, y in warm[done:steps]:
            loss = F.cross_entropy(pad(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        done = steps
        results["signal"][f"converted, {steps} steps"] = signal(pad, batches)
    scratch = padnet.get_pad_model(build(0), padnet.PadConfig(method="pad", init_from_pretrained=False))
    results["signal"]["from scratch, 0 steps"] = signal(scratch, batches)

    print("4. fine-tuning: pretrained + converted vs from scratch")
    for seed in args.seeds:
        subset = rest.subset(args.finetune_size, seed=seed)
        for kind in ("pretrained", "scratch"):
            config = padnet.PadConfig(
                method="pad",
                kappa=0.3,
                partition_at="epochs",
                partition_after=1,
                partition_batches=4,
                init_from_pretrained=kind == "pretrained",
            )
            model = copy.deepcopy(pretrained) if kind == "pretrained" else build(seed)
            torch.manual_seed(seed)
            pad = padnet.get_pad_model(model, config)
            per_epoch = len(make_loader(subset, 64, train=True, seed=seed, epoch=0))
            pad.start_training(
                steps_per_epoch=per_epoch,
                epochs=args.epochs,
                partition_data=make_loader(subset, 64, train=True, seed=seed + 1, epoch=0, augment=False),
            )
            train(pad, subset, args.epochs, seed=seed, lr=0.02, pad=pad)
            accuracy = top1(pad, test)
            results["finetune"][kind].append(accuracy)
            print(f"  seed {seed} {kind}: {accuracy:.2f}%")
    results["seconds"] = round(time.perf_counter() - start, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    padnet.saving.fileio.write_json(out / "results.json", results)
    print(json.dumps(results["pretrain"]))
    print("| state | separation | score mass | largest score | Spearman ρ (two batch sets) |")
    for name, row in results["signal"].items():
        print(
            f"| {name} | {row['separation']:.1e} | {row['score_mass']:.1e} | {row['largest_score']:.1e} | "
            f"{row['spearman']:.3f} |"
        )
    for kind, values in results["finetune"].items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"| {kind} | {statistics.mean(values):.2f} ± {spread:.2f} | {', '.join(f'{v:.2f}' for v in values)} |"
        )
    print(f"{results['seconds']} s")


if __name__ == "__main__":
    main()
