"""PAD-Net's ablations and analyses on convolutions ("PAD-Net: An Efficient Framework for Dynamic Networks",
paper 001 §5.2–5.3 and appendix D), one function per study. Each writes `<out>/<study>/results.{md,json,png}`;
trained runs are shared through `<out>/runs` ([`Runs`][padnet.experiments.studies.common.Runs]):

* `partition`: random vs one-shot MP vs IMP at κ = 0.3, and the fully dynamic DY-Conv (appendix D, Fig. 6);
* `kappa`: κ ∈ {0.1, 0.3, 0.5, 0.7}, top-1 and normalised performance (Fig. 3);
* `scales`: no scale factors, λs only, λd only, both unconstrained, λs + λd = 2 (Table 3);
* `pruning`: the elements mode partition makes static are pruned instead (zero), against PAD-Net and
  DY-Conv (the convolution analogue of Table 4);
* `layers`: layer-wise dynamic ratio after IMP for ResNet-18 and MobileNetV2 at two overall ratios and two
  widths (Fig. 4); partitions fresh models on training batches, trains nothing;
* `property`: per-layer parameter variance and output variance across test images for static, DY-Conv and
  PAD-Net (Fig. 5);
* `noise`: top-1 of static, DY-Conv and PAD-Net under Gaussian input noise (as SD-Conv paper 002 Table 3);
* `transfer`: linear and full fine-tuning of those models on another data set (as paper 002 Fig. 4).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from padnet.experiments import compare
from padnet.experiments.plotting import label_axes
from padnet.experiments.studies.common import (
    METHODS,
    Runs,
    figure,
    mean_std,
    pm,
    sweep,
    table,
    variant,
    vision_recipe,
    write_study,
    write_variant_study,
)
from padnet.experiments.studies.robustness import SIGMAS, noise_study, transfer_study
from padnet.layers.dynamic_conv import DynamicConv2d
from padnet.metrics.dynamics import (
    layer_dynamic_ratios,
    normalised_performance,
    output_variances,
    parameter_variance,
)
from padnet.parallel import Context
from padnet.partitioning import DEFAULT_KAPPA as KAPPA_DEFAULTS
from padnet.training.config import TrainConfig
from padnet.training.data import make_loader
from padnet.training.engine.trainer import PARTITION_SEED, SideBatches, build_model, pad_model

STUDIES = ("partition", "kappa", "scales", "pruning", "layers", "property", "noise", "transfer")
# the compare recipe on 6,000 images with IMP on 4 batches: scales (5 variants × 3 seeds, the largest study) takes
# 13.2 min here; with 10 IMP batches it took 18.5 min on 7,000 images and 18.9 min on 6,000 (fixed costs dominate)
QUICK = {**compare.QUICK, "train_subset": 6000, "partition_batches": 4}
FULL, QUICK_SEEDS, FULL_SEEDS = compare.FULL, compare.QUICK_SEEDS, compare.FULL_SEEDS
KAPPAS = (0.1, 0.3, 0.5, 0.7)
DEFAULT_KAPPA = KAPPA_DEFAULTS["conv"]
SCALES = {"none": "–", "static": "λs", "dynamic": "λd", "both": "λs, λd", "constrained": "λs + λd = 2"}
STATIC, DY = ("static", {"conv": "static"}), ("dy", {"conv": "dy"})
# the compare run: IMP, κ = 0.3, λs + λd = 2, static masked elements (pinned, so a --config file cannot move them)
PAD = (
    "pad",
    {
        "conv": "pad",
        "kappa": DEFAULT_KAPPA,
        "partition": "imp",
        "scale_mode": "constrained",
        "mask_semantics": "static",
    },
)
THREE = dict([STATIC, DY, PAD])  # the property, noise and transfer studies compare these
THREE_LABELS = {"static": "Static", "dy": "DY-Conv", "pad": "PAD-Net (κ = 0.3)"}
LAYERS_ARCHS = ("resnet18", "mobilenetv2")
LAYERS_WIDTHS = {"quick": (0.25, 0.5), "full": (0.5, 1.0)}  # IMP on a full-width ResNet-18 takes ~5 min here
LAYERS_KAPPAS = (0.3, 0.5)


def _records(runs: Runs, variants: dict[str, dict], labels: dict[str, str]) -> list[dict]:
    """Top-1 per seed, its mean and spread, parameters and FLOPs of every variant."""
    return runs.records(variants, labels, "top1", "top1", extra=("flops",))


def _table(records: list[dict], extra: dict[str, list[str]] | None = None) -> str:
    return table(
        {
            "Model": [r["label"] for r in records],
            "Param": [f"{r['params'] / 1e3:.1f}K" for r in records],
            "FLOPs (MACs)": [f"{r['flops'] / 1e6:.2f}M" for r in records],
            "Top-1 (%)": [pm(r["top1"]) for r in records],
            **(extra or {}),
            "Train time / run (s)": [f"{r['train_seconds_mean']:.0f}" for r in records],
        }
    )


def _recipe(runs: Runs) -> str:
    c = runs.base
    return (
        f"{vision_recipe(c)}; "
        f"PAD-Net: k = {c.value('num_kernels', 'pad')}, {c.value('partition_iterations', 'pad')} IMP "
        f"iterations on {c.value('partition_batches', 'pad')} batches, {c.value('granularity', 'pad')} masks; seeds {', '.join(map(str, runs.seeds))}. Param: stored parameters with the "
        "classifier (PAD-Net: static parameters plus dynamic factors at dynamic positions). FLOPs: "
        "multiply-adds of one image."
    )


def _variant_study(
    runs: Runs, study: str, title: str, variants: dict[str, dict], labels: dict[str, str], note: str = ""
) -> dict:
    started = time.perf_counter()
    records = _records(runs, variants, labels)
    return write_variant_study(
        runs,
        study,
        title,
        records,
        f"{_table(records)}\n\n{note}{_recipe(runs)}\n",
        "top1",
        "top-1 (%)",
        started,
    )


def study_partition(runs: Runs) -> dict:
    """Random vs one-shot MP vs IMP at κ = 0.3, and the fully dynamic DY-Conv (PAD-Net appendix D, Fig. 6)."""
    variants = dict([DY] + [variant(PAD, f"pad-{m}", partition=m) if m != "imp" else PAD for m in METHODS])
    labels = {
        "dy": "Dynamic (DY-Conv)",
        **{("pad" if m == "imp" else f"pad-{m}"): label for m, label in METHODS.items()},
    }
    return _variant_study(
        runs,
        "partition",
        "Partition methods (PAD-Net appendix D, Fig. 6)",
        variants,
        labels,
        "PAD-Net at κ = 0.3 with λs + λd = 2; one-shot MP scores once, IMP over its iterations; "
        "Dynamic: DY-Conv, every parameter dynamic.\n\n",
    )


def study_kappa(runs: Runs, kappas=KAPPAS) -> dict:
    """Top-1 and normalised performance over κ (PAD-Net Fig. 3)."""
    started = time.perf_counter()
    variants = dict(
        PAD if k == DEFAULT_KAPPA else variant(PAD, f"pad-k{round(100 * k)}", kappa=k) for k in kappas
    )
    names = list(variants)
    records = _records(runs, variants, {n: f"κ = {k:g}" for n, k in zip(names, kappas)})
    normalised = normalised_performance([r["top1_mean"] for r in records])
    for r, value in zip(records, normalised):
        r["normalised"] = value
    fig = sweep(list(kappas), [r["top1"] for r in records], normalised, "top-1 (%)", "dynamic ratio κ")
    md = (
        _table(records, {"Normalised (%)": [f"{100 * v:+.2f}" for v in normalised]})
        + "\n\nNormalised performance: (x − x̄) / x̄ with x the mean top-1 of a κ and x̄ the mean over all κ "
        "(paper 001 Fig. 3, footnote 1).\n\n" + _recipe(runs) + "\n"
    )
    write_study(
        runs.out / "kappa",
        "Dynamic ratio κ (PAD-Net Fig. 3)",
        md,
        {"records": records, "kappas": list(kappas), "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


def study_scales(runs: Runs) -> dict:
    """The scale factors λs, λd: none, one, both unconstrained, λs + λd = 2 (PAD-Net Table 3)."""
    variants = dict(
        PAD if m == "constrained" else variant(PAD, f"pad-scales-{m}", scale_mode=m) for m in SCALES
    )
    labels = {("pad" if m == "constrained" else f"pad-scales-{m}"): label for m, label in SCALES.items()}
    return _variant_study(
        runs,
        "scales",
        "Scale factors (PAD-Net Table 3)",
        variants,
        labels,
        'κ = 0.3, IMP. "–": no scale factors (λs = λd = 1); λs or λd: only that one is '
        'trained (the other stays 1); "λs, λd": both trained freely; λs + λd = 2: the '
        "default, λd = 2 − λs.\n\n",
    )


def study_pruning(runs: Runs) -> dict:
    """Mode partition vs pruning the same elements (zero instead of static), and DY-Conv (Table 4, for convs)."""
    variants = dict([DY, PAD, variant(PAD, "pad-pruned", mask_semantics="zero")])
    labels = {"dy": "DY-Conv", "pad": "PAD-Net (κ = 0.3)", "pad-pruned": "Pruned DY-Conv (κ = 0.3)"}
    return _variant_study(
        runs,
        "pruning",
        "Pruning vs mode partition (PAD-Net Table 4, convolution analogue)",
        variants,
        labels,
        "The pruned model scores and keeps the same fraction of dynamic "
        "elements by the same IMP, but its other elements are zero instead of static "
        "(SNIP-style pruning, as MoE-P).\n\n",
    )


def study_layers(runs: Runs, archs=LAYERS_ARCHS, widths=None, kappas=LAYERS_KAPPAS) -> dict:
    """Layer-wise dynamic ratio after IMP (PAD-Net Fig. 4) for two architectures, widths and overall κ.
    `widths` default: ×0.25 and ×0.5 for the quick recipe, ×0.5 and ×1.0 for the full one."""
    started = time.perf_counter()
    train = runs.data[0]
    widths = widths or LAYERS_WIDTHS["quick" if runs.base.train_subset else "full"]
    settings = [(a, w) for a in archs for w in widths]
    records = []
    for model_name, width in settings:
        for kappa in kappas:
            cfg = runs.base.replace(model=model_name, width=width, conv="pad", kappa=kappa)
            torch.manual_seed(cfg.seed)
            model = build_model(cfg, train.num_classes, train.input_shape[0])
            report = pad_model(model, cfg).partition(
                SideBatches(cfg, train, Context(), PARTITION_SEED), seed=cfg.seed
            )
            ratios = layer_dynamic_ratios(model)
            records.append(
                {
                    "model": model_name,
                    "width": width,
                    "kappa": kappa,
                    "dynamic_ratio": report.dynamic_ratio,
                    "layers": ratios,
                }
            )
            runs.log(f"layers {model_name} ×{width:g} κ={kappa:g}: {report.summary()}")
    fig, axes = figure(len({s[0] for s in settings}))
    for ax, model_name in zip(axes, dict.fromkeys(s[0] for s in settings)):
        for r in (r for r in records if r["model"] == model_name):
            ax.plot(
                range(1, len(r["layers"]) + 1),
                list(r["layers"].values()),
                marker=".",
                label=f"×{r['width']:g}, κ = {r['kappa']:g}",
            )
        ax.set_title(model_name, fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        label_axes(ax, "layer (input → output)", "layer dynamic ratio", 7)
    lines = [
        "| Model | Width | κ | Reached | Layers | Layers below κ/3 | Lowest | Highest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        values = list(r["layers"].values())
        low = sum(v < r["kappa"] / 3 for v in values)
        lines.append(
            f"| {r['model']} | {r['width']:g} | {r['kappa']:g} | {r['dynamic_ratio']:.3f} | {len(values)} | "
            f"{low} | {min(values):.3f} | {max(values):.3f} |"
        )
    md = (
        "\n".join(lines) + f"\n\nIMP ({runs.base.value('partition_iterations', 'pad')} iterations on "
        f"{runs.base.value('partition_batches', 'pad')} "
        f"batches of {runs.base.dataset}, global scope) on freshly initialised models; per-layer ratios in "
        "results.json and the figure.\n"
    )
    write_study(
        runs.out / "layers",
        "Layer-wise dynamic ratio (PAD-Net Fig. 4)",
        md,
        {"records": records, "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


@torch.no_grad()
def _property(model, loader, names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per layer: parameter variance across the test images (0 for a static layer) and output variance."""
    coeffs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = dict(model.named_modules())
    hooks = [
        modules[n].attention.register_forward_hook(lambda mod, args, out, n=n: coeffs[n].append(out))
        for n in names
        if isinstance(modules[n], DynamicConv2d)
    ]
    try:
        outputs = output_variances(model, loader, names)
    finally:
        for h in hooks:
            h.remove()
    params = {}
    for n in names:
        layer = modules[n]
        if not isinstance(layer, DynamicConv2d):
            params[n] = 0.0
            continue
        _, lam_d = layer.scales()
        params[n] = parameter_variance(
            torch.cat(coeffs[n]), layer.weight_mode.dynamic_part(layer.weight, lam_d)
        )
    return params, outputs


def study_property(runs: Runs, images: int = 1000) -> dict:
    """Parameter and output variance across `images` test images, layer by layer, for static, DY-Conv and
    PAD-Net (PAD-Net Fig. 5)."""
    started = time.perf_counter()
    variants, labels = THREE, THREE_LABELS
    runs.results(variants)
    test = runs.data[1]
    loader = make_loader(test.subset(images, seed=0) if images < len(test) else test, 250, train=False)
    reference = runs.model("dy", runs.seeds[0])
    names = [n for n, m in reference.named_modules() if isinstance(m, DynamicConv2d)]
    records = []
    for name in variants:
        per_seed = [_property(runs.model(name, seed), loader, names) for seed in runs.seeds]
        records.append(
            {
                "model": name,
                "label": labels[name],
                "layers": names,
                "parameter_variance": [[p[n] for n in names] for p, _ in per_seed],
                "output_variance": [[o[n] for n in names] for _, o in per_seed],
            }
        )
    fig, axes = figure(2)
    layers = range(1, len(names) + 1)
    for i, r in enumerate(records):
        for ax, key in zip(axes, ("parameter_variance", "output_variance")):
            per_layer = list(zip(*r[key]))  # layer → the seeds' values
            ax.plot(layers, [mean_std(v)[0] for v in per_layer], marker=".", color=f"C{i}", label=r["label"])
            ax.fill_between(
                layers,
                [min(v) for v in per_layer],
                [max(v) for v in per_layer],
                color=f"C{i}",
                alpha=0.2,
                linewidth=0,
            )  # the spread over seeds
    for ax, title in zip(axes, ("parameter variance", "output variance")):
        ax.set_yscale("symlog", linthresh=1e-6)
        label_axes(ax, "layer (input → output)", title, 7)
    lines = [
        "| Model | Parameter variance (mean over layers) | Output variance (mean over layers) |",
        "| --- | ---: | ---: |",
    ]
    for r in records:
        param = [sum(v) / len(v) for v in r["parameter_variance"]]
        out = [sum(v) / len(v) for v in r["output_variance"]]
        (p_mean, p_std), (o_mean, o_std) = mean_std(param), mean_std(out)
        lines.append(f"| {r['label']} | {p_mean:.3g} ± {p_std:.2g} | {o_mean:.4f} ± {o_std:.4f} |")
    md = (
        "\n".join(lines) + f"\n\nVariances across {min(images, len(test))} test images of each convolution's "
        "computational kernel (parameter variance; 0 for static layers) and of its output, averaged over the "
        "elements, then over the layers (per-layer values in results.json and the figure: mean, shaded from "
        "the lowest to the highest seed); mean ± std over seeds.\n\n" + _recipe(runs) + "\n"
    )
    write_study(
        runs.out / "property",
        "Dynamic property (PAD-Net Fig. 5)",
        md,
        {"records": records, "images": min(images, len(test)), "config": runs.base.to_dict()},
        fig,
        started,
    )
    return {"records": records}


def study_noise(runs: Runs, sigmas=SIGMAS) -> dict:
    """Top-1 of static, DY-Conv and PAD-Net under Gaussian input noise (the SD-Conv paper's Table 3 analysis)."""
    return noise_study(
        runs,
        THREE,
        THREE_LABELS,
        "Robustness to Gaussian input noise (as paper 002 Table 3, for PAD-Net)",
        _recipe(runs),
        sigmas,
    )


def study_transfer(runs: Runs, target: str = "digits", epochs: int = 10, lr: float = 0.05) -> dict:
    """Linear and full fine-tuning of the trained static, DY-Conv and PAD-Net models on `target` (the SD-Conv
    paper's Fig. 4 analysis)."""
    return transfer_study(
        runs,
        THREE,
        THREE_LABELS,
        f"Transfer {runs.base.dataset} → {target} (as paper 002 Fig. 4, for PAD-Net)",
        _recipe(runs),
        target,
        epochs,
        lr,
    )


STUDY_FUNCTIONS = {
    "partition": study_partition,
    "kappa": study_kappa,
    "scales": study_scales,
    "pruning": study_pruning,
    "layers": study_layers,
    "property": study_property,
    "noise": study_noise,
    "transfer": study_transfer,
}


def run_studies(out: str | Path, base: TrainConfig, studies=STUDIES, seeds=(0, 1, 2), log=print) -> dict:
    """Run the named `studies` under `out` with one shared run cache; returns study → summary."""
    runs = Runs(out, base, seeds, log)
    return {name: STUDY_FUNCTIONS[name](runs) for name in studies}
