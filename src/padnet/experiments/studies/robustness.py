"""Robustness and transfer of trained vision models, shared by the SD-Conv and PAD-Net studies ("SD-Conv" paper
002 Table 3 and Fig. 4; the same analyses for PAD-Net): top-1 under Gaussian input noise, and linear / full
fine-tuning on another data set. Each function takes the variants to compare (name → configuration changes)
and their labels, trains or reuses them through [`Runs`][padnet.experiments.studies.common.Runs], and writes
`<out>/<study>/results.{md,json,png}`."""

from __future__ import annotations

import time

from padnet.errors import ConfigError
from padnet.experiments.analysis import fine_tune, noise_accuracy
from padnet.experiments.analysis.transfer import resized
from padnet.experiments.plotting import label_axes
from padnet.experiments.studies.common import Runs, figure, mean_std, pm, write_study
from padnet.training.data import load_dataset, make_loader

SIGMAS = (0.0, 0.05, 0.1, 0.15, 0.2)


def noise_study(
    runs: Runs,
    variants: dict[str, dict],
    labels: dict[str, str],
    title: str,
    recipe: str,
    sigmas=SIGMAS,
    study: str = "noise",
) -> dict:
    """Top-1 of every variant and seed under Gaussian input noise z ~ N(0, σ²) for every σ in `sigmas` (pixel
    units, images in [0, 1]; the same noise for every model).

    Args:
        runs: the study folder's run cache; `variants` are trained there or reused.
        variants: name → configuration changes.
        labels: name → table label.
        title: the page's title.
        recipe: the recipe paragraph under its table.
        sigmas: noise standard deviations (pixel units).
        study: the sub-folder written (`<out>/<study>/results.{md,json,png}`).

    Returns:
        `{"records": [...]}` with, per variant, `top1`: σ (text) → per-seed top-1 (%).
    """
    started = time.perf_counter()
    runs.results(variants)
    test = runs.data[1]
    loader = make_loader(test, 512, train=False)
    records = []
    for name in variants:
        per_seed = [
            noise_accuracy(runs.model(name, seed), loader, sigmas, test.std, seed=1234) for seed in runs.seeds
        ]
        records.append(
            {
                "model": name,
                "label": labels[name],
                "top1": {str(s): [acc[float(s)] for acc in per_seed] for s in sigmas},
            }
        )
    fig, (ax,) = figure()
    for r in records:
        means = [mean_std(r["top1"][str(s)]) for s in sigmas]
        ax.errorbar(
            sigmas, [m for m, _ in means], yerr=[d for _, d in means], fmt="o-", capsize=3, label=r["label"]
        )
    label_axes(ax, "noise σ (pixel units, images in [0, 1])", "top-1 (%)", 8)
    lines = [
        "| Model | " + " | ".join(f"σ = {s:g}" for s in sigmas) + " |",
        "| --- |" + " ---: |" * len(sigmas),
    ]
    best = {s: max(mean_std(r["top1"][str(s)])[0] for r in records) for s in sigmas}
    for r in records:
        cells = []
        for s in sigmas:
            text = pm(r["top1"][str(s)])
            cells.append(f"**{text}**" if mean_std(r["top1"][str(s)])[0] == best[s] else text)
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    md = (
        "\n".join(lines)
        + "\n\nNoise z ~ N(0, σ²) is added to the test images in [0, 1] pixel units (the same "
        "noise for every model: one seeded generator); best mean in bold.\n\n" + recipe + "\n"
    )
    write_study(
        runs.out / study,
        title,
        md,
        {"records": records, "sigmas": list(sigmas), "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


def transfer_study(
    runs: Runs,
    variants: dict[str, dict],
    labels: dict[str, str],
    title: str,
    recipe: str,
    target: str = "digits",
    epochs: int = 10,
    lr: float = 0.05,
    study: str = "transfer",
) -> dict:
    """Linear and full fine-tuning of every variant's trained models on `target` (images resized to the source
    size; a new classifier).

    Args:
        runs: as for [`noise_study`][padnet.experiments.studies.robustness.noise_study].
        variants: as for [`noise_study`][padnet.experiments.studies.robustness.noise_study].
        labels: as for [`noise_study`][padnet.experiments.studies.robustness.noise_study].
        title: as for [`noise_study`][padnet.experiments.studies.robustness.noise_study].
        recipe: as for [`noise_study`][padnet.experiments.studies.robustness.noise_study].
        target: the data set fine-tuned on (offline: `digits`).
        epochs: fine-tuning epochs (the recipe: SGD, warm-up + cosine, batch 64).
        lr: the fine-tuning learning rate (same recipe).
        study: as for [`noise_study`][padnet.experiments.studies.robustness.noise_study].

    Returns:
        `{"records": [...]}` with per-seed `linear` and `full` top-1 (%).

    Raises:
        ConfigError: before anything trains, when the target's channel count differs from the source's.
    """
    started = time.perf_counter()
    size = runs.data[0].input_shape[1:]
    train, test = (resized(d, size) for d in load_dataset(target, None, False))
    if train.input_shape[0] != runs.data[0].input_shape[0]:
        raise ConfigError(
            f"{target} has {train.input_shape[0]} channels, the source models take "
            f"{runs.data[0].input_shape[0]}"
        )
    runs.results(variants)
    records = []
    for name in variants:
        rec = {"model": name, "label": labels[name], "linear": [], "full": []}
        for seed in runs.seeds:
            model = runs.model(name, seed)  # read once; fine_tune works on copies
            for mode in ("linear", "full"):
                rec[mode].append(fine_tune(model, train, test, mode, epochs, lr, seed=seed)[1])
        runs.log(f"[{study} {name}] top-1 linear {pm(rec['linear'])} %, full {pm(rec['full'])} %")
        records.append(rec)
    fig, (ax,) = figure()
    width = 0.8 / len(records)
    for i, r in enumerate(records):
        xs = [j + i * width for j in range(2)]
        ax.bar(
            xs,
            [mean_std(r[m])[0] for m in ("linear", "full")],
            width,
            yerr=[mean_std(r[m])[1] for m in ("linear", "full")],
            capsize=3,
            label=r["label"],
        )
        for j, mode in enumerate(("linear", "full")):
            ax.plot([xs[j]] * len(r[mode]), r[mode], "k.", markersize=3)
    ax.set_xticks(
        [j + width * (len(records) - 1) / 2 for j in range(2)], ["linear fine-tuning", "full fine-tuning"]
    )
    ax.set_ylabel(f"top-1 on {target} (%)")
    low = min(min(r[m]) for r in records for m in ("linear", "full"))
    ax.set_ylim(max(0.0, low - 10), 100)
    ax.legend(fontsize=8)
    lines = ["| Model | Linear fine-tuning (%) | Full fine-tuning (%) |", "| --- | ---: | ---: |"]
    lines += [f"| {r['label']} | {pm(r['linear'])} | {pm(r['full'])} |" for r in records]
    md = (
        "\n".join(lines)
        + f"\n\nSource: the models of this folder's runs ({runs.base.dataset}); target: {target} "
        f"({len(train)} train / {len(test)} test images, resized to {size[0]}×{size[1]}). The classifier is "
        f"replaced by a new one (Kaiming-uniform); linear: only it trains, on the frozen network (BatchNorm in "
        f"eval mode); full: every parameter. {epochs} epochs, SGD lr {lr:g} (warm-up + cosine), batch 64.\n\n"
        + recipe
        + "\n"
    )
    write_study(
        runs.out / study,
        title,
        md,
        {"records": records, "target": target, "epochs": epochs, "lr": lr, "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}
