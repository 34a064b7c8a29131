"""SD-Conv experiments ("SD-Conv: Towards the Parameter-Efficiency of Dynamic Convolution", paper 002).

One function per study; each writes `<out>/<study>/results.{md,json,png}` and shares trained runs through
`<out>/runs` ([`Runs`][padnet.experiments.studies.common.Runs]):

* `table`: static vs DY-Conv vs SD-Conv at s = 50 % (Table 2: Param, FLOPs, Top-1);
* `sweep`: SD-Conv at sparsity 20–80 % against DY-Conv and static (Fig. 5);
* `strategy`: different vs same masks at s = 50 % (Table 4);
* `noise`: top-1 under Gaussian input noise σ ∈ {0.05, 0.1, 0.15, 0.2} (Table 3: SD-Conv at 20 % and 80 %);
* `transfer`: linear and full fine-tuning of the trained models on another data set (Fig. 4);
* `preliminary`: 50 % magnitude pruning of trained DY-Conv models — Param, FLOPs and Top-1 before and after,
  and the layer-wise mean and variance of the aggregated kernels (Table 1, Fig. 2).
"""

from __future__ import annotations

import time
from pathlib import Path

from padnet.experiments.analysis import aggregated_kernel_stats, magnitude_prune
from padnet.experiments.plotting import label_axes
from padnet.experiments.studies.common import Runs, figure, mean_std, pm, vision_recipe, write_study
from padnet.experiments.studies.robustness import SIGMAS, noise_study, transfer_study
from padnet.metrics.counting import count_flops, count_parameters
from padnet.training.config import TrainConfig
from padnet.training.data import make_loader
from padnet.training.engine.trainer import evaluate

STUDIES = ("table", "sweep", "strategy", "noise", "transfer", "preliminary")
SWEEP = (0.2, 0.4, 0.6, 0.8)
NOISE_SPARSITIES = (0.2, 0.8)
TARGET = 0.5  # the sparsity of Table 2 and Table 4


def _sd(sparsity: float, strategy: str = "different") -> tuple[str, dict]:
    name = f"sdconv-{'same-' if strategy == 'same' else ''}s{round(100 * sparsity)}"
    return name, {"conv": "sdconv", "sparsity": sparsity, "mask_strategy": strategy}


STATIC, DY = ("static", {"conv": "static"}), ("dy", {"conv": "dy"})
LABELS = {"static": "Static", "dy": "DY-Conv"}


def _label(name: str) -> str:
    if name in LABELS:
        return LABELS[name]
    same = "-same" in name
    return f"SD-Conv ({'same mask, ' if same else ''}s = {name.rsplit('s', 1)[1]} %)"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _record(name: str, runs: list[dict]) -> dict:
    """Per-variant summary: accounting of the seed-0 run, accuracy and sparsity over seeds."""
    top1 = [r["top1"] for r in runs]
    rec = {
        "model": name,
        "label": _label(name),
        "params": runs[0]["params"],
        "flops": runs[0]["flops"],
        "top1": top1,
        "top1_mean": mean_std(top1)[0],
        "top1_std": mean_std(top1)[1],
        "seeds": [r["seed"] for r in runs],
        "train_seconds_mean": mean_std(r["train_seconds"] for r in runs)[0],
    }
    if runs[0].get("sparsity"):
        rec["sparsity"] = [r["sparsity"]["sparsity"] for r in runs]
        rec["kernel_sparsity"] = [r["sparsity"]["kernel_sparsity"] for r in runs]
        rec["params_mean"] = mean_std(r["params"] for r in runs)[0]
        rec["flops_mean"] = mean_std(r["flops"] for r in runs)[0]
    return rec


def _table(records: list[dict]) -> str:
    lines = [
        "| Model | Param | FLOPs (MACs) | Sparsity (%) | Kernel sparsity (%) | Top-1 (%) | Train time / run (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        sparse = "sparsity" in r
        params = r.get("params_mean", r["params"])
        flops = r.get("flops_mean", r["flops"])
        lines.append(
            f"| {r['label']} | {_count(params)} | {_count(flops)} | "
            f"{pm([100 * s for s in r['sparsity']], 1) if sparse else '–'} | "
            f"{pm([100 * s for s in r['kernel_sparsity']], 1) if sparse else '–'} | "
            f"{pm(r['top1'])} | {r['train_seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def _recipe(runs: Runs) -> str:
    c = runs.base
    return (
        f"{vision_recipe(c)}; "
        f"SD-Conv: k = {c.value('num_kernels', 'sdconv')}, attention reduction "
        f"{c.value('reduction', 'sdconv')}, budget weight λ_s = {c.value('budget_weight', 'sdconv'):g}, "
        f"{c.value('pruning_iterations', 'sdconv')} pruning iterations, threshold steps "
        f"{c.value('threshold_lr', 'sdconv'):g} × layer weight RMS; seeds "
        f"{', '.join(map(str, runs.seeds))}. Param: stored parameters with the classifier (SD-Conv: kept "
        "weights; mean over seeds). FLOPs: multiply-adds of one image (SD-Conv: on the sparse aggregated "
        "kernel). Sparsity: pruned fraction of the k kernels' weights; kernel sparsity: positions pruned "
        "in all k kernels."
    )


def study_table(runs: Runs) -> dict:
    """Static vs DY-Conv vs SD-Conv (s = 50 %), paper Table 2."""
    started = time.perf_counter()
    variants = dict([STATIC, DY, _sd(TARGET)])
    records = [_record(n, r) for n, r in runs.results(variants).items()]
    fig, (ax,) = figure()
    for r in records:
        ax.errorbar(
            r.get("params_mean", r["params"]) / 1e6,
            r["top1_mean"],
            yerr=r["top1_std"],
            fmt="o",
            capsize=4,
            label=r["label"],
        )
    label_axes(ax, "parameters (M)", "top-1 (%)", 8)
    md = f"{_table(records)}\n\n{_recipe(runs)}\n"
    write_study(
        runs.out / "table",
        "Static vs DY-Conv vs SD-Conv (paper 002 Table 2)",
        md,
        {"records": records, "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


def study_sweep(runs: Runs, sparsities=SWEEP) -> dict:
    """SD-Conv top-1 at sparsity 20–80 % against DY-Conv and static, paper Fig. 5."""
    started = time.perf_counter()
    variants = dict([STATIC, DY] + [_sd(s) for s in sparsities])
    records = [_record(n, r) for n, r in runs.results(variants).items()]
    by = {r["model"]: r for r in records}
    fig, (ax,) = figure()
    sd = [by[_sd(s)[0]] for s in sparsities]
    ax.errorbar(
        [100 * s for s in sparsities],
        [r["top1_mean"] for r in sd],
        yerr=[r["top1_std"] for r in sd],
        fmt="o-",
        capsize=4,
        label="SD-Conv",
    )
    for name, style in (("dy", "--"), ("static", ":")):
        ax.axhline(by[name]["top1_mean"], linestyle=style, color="grey", label=by[name]["label"])
    label_axes(ax, "target sparsity (%)", "top-1 (%)", 8)
    lines = [
        "| Target sparsity (%) | Reached (%) | Param | Top-1 (%) | vs DY-Conv (pp) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, r in zip(sparsities, sd):
        lines.append(
            f"| {100 * s:.0f} | {pm([100 * v for v in r['sparsity']], 1)} | {_count(r['params_mean'])} | "
            f"{pm(r['top1'])} | {r['top1_mean'] - by['dy']['top1_mean']:+.2f} |"
        )
    md = f"{_table(records)}\n\n" + "\n".join(lines) + f"\n\n{_recipe(runs)}\n"
    write_study(
        runs.out / "sweep",
        "SD-Conv sparsity sweep (paper 002 Fig. 5)",
        md,
        {"records": records, "sparsities": list(sparsities), "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


def study_strategy(runs: Runs) -> dict:
    """Different masks (default) vs the same mask for the k kernels at s = 50 %, paper Table 4."""
    started = time.perf_counter()
    variants = dict([_sd(TARGET), _sd(TARGET, "same")])
    records = [_record(n, r) for n, r in runs.results(variants).items()]
    fig, (ax,) = figure()
    ax.bar(
        [r["label"].replace("SD-Conv ", "") for r in records],
        [r["top1_mean"] for r in records],
        yerr=[r["top1_std"] for r in records],
        capsize=4,
    )
    low = min(r["top1_mean"] - 3 * max(r["top1_std"], 0.3) for r in records)
    ax.set_ylim(low, None)
    ax.set_ylabel("top-1 (%)")
    md = f"{_table(records)}\n\n{_recipe(runs)}\n"
    write_study(
        runs.out / "strategy",
        "Different vs same masks (paper 002 Table 4)",
        md,
        {"records": records, "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


def study_noise(runs: Runs, sigmas=SIGMAS, sparsities=NOISE_SPARSITIES) -> dict:
    """Top-1 under Gaussian input noise for static, DY-Conv and SD-Conv (s = 20 %, 80 %), paper Table 3."""
    variants = dict([STATIC, DY] + [_sd(s) for s in sparsities])
    return noise_study(
        runs,
        variants,
        {n: _label(n) for n in variants},
        "Robustness to Gaussian input noise (paper 002 Table 3)",
        _recipe(runs),
        sigmas,
    )


def study_transfer(runs: Runs, target: str = "digits", epochs: int = 10, lr: float = 0.05) -> dict:
    """Linear and full fine-tuning of the trained static, DY-Conv and SD-Conv (s = 50 %) models on `target`
    (images resized to the source size), paper Fig. 4."""
    variants = dict([STATIC, DY, _sd(TARGET)])
    return transfer_study(
        runs,
        variants,
        {n: _label(n) for n in variants},
        f"Transfer {runs.base.dataset} → {target} (paper 002 Fig. 4)",
        _recipe(runs),
        target,
        epochs,
        lr,
    )


def study_preliminary(runs: Runs, sparsity: float = 0.5) -> dict:
    """Magnitude-prune `sparsity` of trained DY-Conv models (no retraining): Param, FLOPs, Top-1 against
    static and DY-Conv, and the layer-wise mean and variance of the aggregated kernels before and after
    (paper Table 1, Fig. 2)."""
    started = time.perf_counter()
    results = runs.results(dict([STATIC, DY]))
    test = runs.data[1]
    loader = make_loader(test, 512, train=False)
    shape = runs.data[0].input_shape
    pruned_top1, stats = [], None
    for seed in runs.seeds:
        dense = runs.model("dy", seed)
        pruned = magnitude_prune(dense, sparsity).eval()
        pruned_top1.append(evaluate(pruned, loader))
        if stats is None:  # Fig. 2: one model
            stats = {
                "vanilla": aggregated_kernel_stats(dense, loader),
                "pruned": aggregated_kernel_stats(pruned, loader),
            }
            counts = (count_parameters(pruned), count_flops(pruned, shape))
    records = [
        _record("static", results["static"]),
        _record("dy", results["dy"]),
        {
            "model": "dy-pruned",
            "label": f"DY-Conv w/ pruned {100 * sparsity:.0f} %",
            "params": counts[0],
            "flops": counts[1],
            "top1": pruned_top1,
            "seeds": list(runs.seeds),
        },
    ]
    dy_mean = records[1]["top1_mean"]
    lines = ["| Method | Param | FLOPs (MACs) | Top-1 (%) |", "| --- | ---: | ---: | ---: |"]
    for r in records:
        extra = f" ({mean_std(r['top1'])[0] - dy_mean:+.2f})" if r["model"] == "dy-pruned" else ""
        lines.append(
            f"| {r['label']} | {_count(r['params'])} | {_count(r['flops'])} | {pm(r['top1'])}{extra} |"
        )
    fig, axes = figure(2, 4.5)
    for ax, key in zip(axes, ("mean", "variance")):
        for which, style in (("vanilla", "o-"), ("pruned", "x--")):
            ax.plot(range(len(stats[which])), [layer[key] for layer in stats[which]], style, label=which)
        ax.set_xlabel("layer")
        ax.set_title(f"{key} of the aggregated kernel")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    layer_lines = [
        "| Layer | Mean (vanilla) | Mean (pruned) | Variance (vanilla) | Variance (pruned) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for v, p in zip(stats["vanilla"], stats["pruned"]):
        layer_lines.append(
            f"| {v['name']} | {v['mean']:.2e} | {p['mean']:.2e} | {v['variance']:.2e} | {p['variance']:.2e} |"
        )
    md = (
        "\n".join(lines)
        + f"\n\nThe {100 * sparsity:.0f} % of DY-Conv kernel weights with the lowest magnitude are "
        "pruned over all layers at once, without retraining; FLOPs on the sparse aggregated kernel.\n\n"
        f"Layer-wise statistics of the aggregated kernels over the {len(test)} test images (seed "
        f"{runs.seeds[0]}):\n\n" + "\n".join(layer_lines) + "\n\n" + _recipe(runs) + "\n"
    )
    write_study(
        runs.out / "preliminary",
        "Pruning a trained DY-Conv (paper 002 Table 1, Fig. 2)",
        md,
        {"records": records, "kernel_stats": stats, "sparsity": sparsity, "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records, "kernel_stats": stats}


STUDY_FUNCTIONS = {
    "table": study_table,
    "sweep": study_sweep,
    "strategy": study_strategy,
    "noise": study_noise,
    "transfer": study_transfer,
    "preliminary": study_preliminary,
}


def run_studies(
    out: str | Path, base: TrainConfig, studies=STUDIES, seeds=(0, 1, 2), log=print, transfer_epochs: int = 10
) -> dict:
    """Run the named `studies` under `out` with one shared run cache; returns study → summary."""
    runs = Runs(out, base, seeds, log)
    options = {"transfer": {"epochs": transfer_epochs}}
    return {name: STUDY_FUNCTIONS[name](runs, **options.get(name, {})) for name in studies}
