"""PAD-Net's ablations and analyses on Mixture-of-Experts ("PAD-Net: An Efficient Framework for Dynamic
Networks", paper 001 §5.2–5.3 and appendices B, D, E), one function per study, on a fine-tuned text encoder
(default: MiniLM on Rotten Tomatoes). Each writes `<out>/<study>/results.{md,json,png}`; fine-tuning runs are
shared through `<out>/runs` ([`TextRuns`][padnet.experiments.studies.finetune.TextRuns]), with the same folder names as
`padnet moe`:

* `partition`: random vs one-shot MP vs IMP for PAD-MoE at κ = 0.5, and the fully dynamic MoE (Fig. 6);
* `kappa`: PAD-MoE at κ ∈ {0.1, 0.3, 0.5, 0.7} with normalised performance (Table 5; its MoE row is in
  `partition`);
* `pruning`: dense vs MoE vs MoE-P (the masked elements zeroed) vs PAD-MoE at κ = 0.5 (Table 4);
* `masks`: the PAD-MoE masks of every layer as images, their layer dynamic ratios and how far they are made
  of whole rows and columns (appendix E, Fig. 7).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from padnet.errors import ConfigError
from padnet.experiments.studies import finetune as moe_study
from padnet.experiments.studies.common import (
    METHODS,
    figure,
    mean_std,
    pm,
    sweep,
    table,
    variant,
    write_study,
    write_variant_study,
)
from padnet.experiments.studies.finetune import TextRuns
from padnet.metrics.dynamics import mask_structure, normalised_performance
from padnet.partitioning import DEFAULT_KAPPA as KAPPA_DEFAULTS
from padnet.training.config import FinetuneConfig

STUDIES = ("partition", "kappa", "pruning", "masks")
# the padnet moe quick recipe (896 sentences, 2 epochs) on 352 sentences with lr 2e-4 (the top of PAD-Net's grid,
# for the fewer steps), so that the largest studies (partition, kappa: 12 runs each) stay within 20 minutes here: a
# PAD-MoE run takes about 85 s (125 s on 640 sentences), an MoE run 65 s
QUICK = {**moe_study.QUICK, "train_subset": 352, "lr": 2e-4}
FULL, QUICK_SEEDS, FULL_SEEDS = moe_study.FULL, moe_study.QUICK_SEEDS, moe_study.FULL_SEEDS
CONFIG = FinetuneConfig
KAPPAS = (0.1, 0.3, 0.5, 0.7)
DEFAULT_KAPPA = KAPPA_DEFAULTS["moe"]  # PAD-Net's default for MoE (appendix B)
PARTITION = {"kappa": DEFAULT_KAPPA, "partition": "imp"}  # pinned for every variant, so runs stay reusable
DENSE, MOE = ("dense", {"method": "dense", **PARTITION}), ("moe", {"method": "moe", **PARTITION})
PAD = ("pad", {"method": "pad-moe", **PARTITION})


def _records(runs: TextRuns, variants: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    """Score per seed, its mean and spread, the metric and the parameters of every variant."""
    return runs.records(variants, labels, "score", "scores", extra=("metric",))


def _table(records: list[dict], extra: dict[str, list[str]] | None = None) -> str:
    return table(
        {
            "Model": [r["label"] for r in records],
            "#Param.": [f"{r['params'] / 1e6:.2f}M" for r in records],
            f"{records[0]['metric']} (%)": [pm(r["scores"]) for r in records],
            **(extra or {}),
            "Train time / run (s)": [f"{r['train_seconds_mean']:.0f}" for r in records],
        }
    )


def _recipe(runs: TextRuns) -> str:
    c = runs.base
    return (
        f"{c.model} on {c.task}: {c.epochs} epochs, batch {c.batch_size}, AdamW lr {c.lr:g}, weight decay "
        f"{c.weight_decay:g}, train subset {c.train_subset or 'all'}; MoE {c.value('num_experts', 'moe')} experts "
        f"top-{c.value('top_k', 'moe')}, load-balancing weight {c.value('aux_loss_weight', 'moe'):g}; PAD-MoE / "
        f"MoE-P {c.value('granularity', 'pad-moe')} masks, {c.value('partition_iterations', 'pad-moe')} IMP "
        f"iterations on {c.value('partition_batches', 'pad-moe')} batches at the start of epoch 2; "
        f"seeds {', '.join(map(str, runs.seeds))}. #Param.: every stored parameter (embeddings and classifier "
        "included), PAD-MoE and MoE-P in their compact form."
    )


def _variant_study(
    runs: TextRuns, study: str, title: str, variants: dict[str, dict], labels: dict[str, str], note: str
) -> dict:
    started = time.perf_counter()
    records = _records(runs, variants, labels)
    return write_variant_study(
        runs,
        study,
        title,
        records,
        f"{_table(records)}\n\n{note}\n\n{_recipe(runs)}\n",
        "scores",
        f"{records[0]['metric']} (%)",
        started,
    )


def study_partition(runs: TextRuns) -> dict:
    """Random vs one-shot MP vs IMP for PAD-MoE at κ = 0.5, and the fully dynamic MoE (PAD-Net Fig. 6)."""
    variants = dict([MOE] + [variant(PAD, f"pad-{m}", partition=m) if m != "imp" else PAD for m in METHODS])
    labels = {
        "moe": "Dynamic (MoE)",
        **{("pad" if m == "imp" else f"pad-{m}"): label for m, label in METHODS.items()},
    }
    return _variant_study(
        runs,
        "partition",
        "Partition methods for PAD-MoE (PAD-Net appendix D, Fig. 6)",
        variants,
        labels,
        "PAD-MoE at κ = 0.5 with λs + λd = 2; one-shot MP scores once, IMP over its "
        "iterations; Dynamic: the MoE, every expert parameter dynamic.",
    )


def study_kappa(runs: TextRuns, kappas=KAPPAS) -> dict:
    """PAD-MoE over κ with normalised performance (PAD-Net Table 5). The table's MoE reference row is the
    `partition` study's MoE run (in the same folder); left out of this study to keep it within 20 minutes."""
    started = time.perf_counter()
    pads = dict(
        PAD if k == DEFAULT_KAPPA else variant(PAD, f"pad-k{round(100 * k)}", kappa=k) for k in kappas
    )
    records = _records(runs, pads, {n: f"PAD-MoE κ = {k:g}" for n, k in zip(pads, kappas)})
    normalised = normalised_performance([r["score_mean"] for r in records])
    for r, value in zip(records, normalised):
        r["normalised"] = value
    fig = sweep(
        list(kappas),
        [r["scores"] for r in records],
        normalised,
        f"{records[0]['metric']} (%)",
        "dynamic ratio κ",
    )
    md = (
        _table(records, {"Normalised (%)": [f"{100 * v:+.2f}" for v in normalised]})
        + "\n\nNormalised performance: (x − x̄) / x̄ with x the mean score of a κ and x̄ the mean over all κ "
        "(paper 001 Fig. 3, footnote 1). The MoE that Table 5 compares with: `padnet pad-moe partition` "
        "(or `pruning`) in this folder.\n\n" + _recipe(runs) + "\n"
    )
    write_study(
        runs.out / "kappa",
        "Dynamic ratio κ for PAD-MoE (PAD-Net Table 5)",
        md,
        {"records": records, "kappas": list(kappas), "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


def study_pruning(runs: TextRuns) -> dict:
    """Dense vs MoE vs MoE-P vs PAD-MoE at κ = 0.5 (PAD-Net Table 4)."""
    variants = dict([DENSE, MOE, ("prune", {**PAD[1], "method": "moe-p"}), PAD])
    labels = {"dense": "Dense (static)", "moe": "MoE", "prune": "MoE-P (κ = 0.5)", "pad": "PAD-MoE (κ = 0.5)"}
    return _variant_study(
        runs,
        "pruning",
        "Pruning vs mode partition for MoE (PAD-Net Table 4)",
        variants,
        labels,
        "MoE-P keeps the same fraction of expert parameters, chosen by the same IMP criterion, but zeroes "
        "the others (SNIP-style pruning) where PAD-MoE makes them static.",
    )


def _layer_masks(masks: dict) -> list[tuple[str, object]]:
    """(layer, (2H, F) element mask without the bias row) of every MoE layer, bottom to top."""
    out = []
    for name, mask in masks.items():
        if name.endswith("neuron_mode"):
            mask = mask.reshape(mask.shape[-2:])  # (1, 2H + 1, F): one mask shared by the experts
            hidden = (
                mask.shape[0] - 1
            ) // 2  # rows: H up-projection inputs, the up bias, H down-projection outputs
            out.append((name.rsplit(".", 1)[0], torch.cat([mask[:hidden], mask[hidden + 1 :]])))
    return out


def study_masks(runs: TextRuns) -> dict:
    """The PAD-MoE (κ = 0.5) mask of every MoE layer as an image, with each layer's dynamic ratio and its row
    and column agreement against a random mask of the same ratio (PAD-Net appendix E, Fig. 7)."""
    _check_granularity(runs.base)
    started = time.perf_counter()
    runs.results(dict([PAD]))
    per_seed = [_layer_masks(runs.masks("pad", seed)) for seed in runs.seeds]
    layers = [name for name, _ in per_seed[0]]
    stats = [[mask_structure(mask) for _, mask in seed_masks] for seed_masks in per_seed]
    keys = (
        "dynamic_ratio",
        "column_agreement",
        "random_column_agreement",
        "row_agreement",
        "random_row_agreement",
    )
    records = [
        {"layer": name, **{k: [s[i][k] for s in stats] for k in keys}} for i, name in enumerate(layers)
    ]
    fig, axes = figure(len(layers), 2.0)
    hidden = per_seed[0][0][1].shape[0] // 2
    for i, (ax, (_, mask)) in enumerate(zip(axes, per_seed[0])):
        ax.imshow(
            mask[:hidden].float().numpy(),
            cmap="gray_r",
            vmin=0,
            vmax=1,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_title(f"layer {i + 1}: κ = {stats[0][i]['dynamic_ratio']:.2f}", fontsize=8)
        ax.set_xlabel("FFN neuron", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel("input dimension (up projection)", fontsize=7)
    lines = [
        "| Layer | Dynamic ratio | Column agreement | random | Row agreement | random |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(records):
        lines.append(
            f"| {i + 1} | {pm(r['dynamic_ratio'], 3)} | {pm(r['column_agreement'], 3)} | "
            f"{mean_std(r['random_column_agreement'])[0]:.3f} | {pm(r['row_agreement'], 3)} | "
            f"{mean_std(r['random_row_agreement'])[0]:.3f} |"
        )
    md = (
        "\n".join(lines)
        + "\n\nLayers bottom (1) to top. Image: the up-projection part (hidden × FFN width) of "
        f"each layer's mask, seed {runs.seeds[0]}; black = dynamic, white = static. Column (row) agreement: the "
        "mean over the FFN neurons (the hidden dimensions, up and down projections together) of the share of "
        "their elements in their majority mode; 'random': its expectation for a random mask of the same "
        "dynamic ratio. Mean ± std over seeds. The dynamic ratio here is that of the weight elements; the "
        "layer ratios in the runs' results.json also count the up-projection and output biases.\n\n"
        + _recipe(runs)
        + "\n"
    )
    write_study(
        runs.out / "masks",
        "PAD-MoE masks per layer (PAD-Net appendix E, Fig. 7)",
        md,
        {"records": records, "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


STUDY_FUNCTIONS = {
    "partition": study_partition,
    "kappa": study_kappa,
    "pruning": study_pruning,
    "masks": study_masks,
}


def _check_granularity(base: FinetuneConfig) -> None:
    if base.value("granularity", "pad-moe") != "element":
        raise ConfigError(
            "the masks study needs element masks (granularity 'element'); neuron masks are whole "
            "columns by construction"
        )


def run_studies(out: str | Path, base: FinetuneConfig, studies=STUDIES, seeds=QUICK_SEEDS, log=print) -> dict:
    """Run the named `studies` under `out` with one shared run cache; returns study → summary.

    Raises:
        ConfigError: before anything trains, when `masks` is asked for with neuron masks.
    """
    if "masks" in studies:
        _check_granularity(base)
    runs = TextRuns(out, base, seeds, log)
    return {name: STUDY_FUNCTIONS[name](runs) for name in studies}
