"""The main job: static vs DY-Conv vs PAD-Net with one recipe and the same seeds (paper Table 1 columns)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from padnet.errors import ConfigError, DataError
from padnet.experiments.plotting import label_axes
from padnet.layers.registry import LAYER_LABELS, canonical_conv, is_partial
from padnet.saving.fileio import atomic_path, parse_json, write_json, write_text
from padnet.training.config import TrainConfig, load_yaml
from padnet.training.data import load_dataset
from padnet.training.engine.trainer import Trainer, config_differences

# The quick default finishes within 15 minutes on 2 CPU cores (measured: 8 min). Augmentation is off in it:
# in 3 epochs of 10k images random crop + flip cost 7 points of top-1 (static: 80.5 % vs 87.0 %, seed 0).
# --full is the longer recipe, with augmentation.
QUICK = {
    "train_subset": 10000,
    "epochs": 3,
    "temperature_anneal": 1.0,
    "warmup_epochs": 0.5,
    "augment": False,
}
FULL = {
    "train_subset": None,
    "epochs": 30,
    "temperature_anneal": 10.0,
    "warmup_epochs": 2.0,
    "width": 0.5,
    "augment": True,
}
FULL_SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = (0, 1, 2)


def _label(conv: str, cfg: TrainConfig) -> str:
    label = LAYER_LABELS.get(conv, conv)
    return f"{label} (κ={cfg.value('kappa', conv):g})" if is_partial(conv) else label


def _per_method(cfg: TrainConfig, convs, key: str, unit: str = "") -> str:
    """The option `key` as each dynamic conv type of `convs` runs it: `4 (DY-Conv, PAD-Net)`, grouped by value."""
    groups: dict = {}
    for conv in convs:
        value = cfg.value(key, conv)
        if value is not None:
            groups.setdefault(value, []).append(LAYER_LABELS.get(conv, conv))
    return "; ".join(f"{v:g}{unit} ({', '.join(labels)})" for v, labels in groups.items()) or "–"


def check_reusable(run_dir: Path, cfg: TrainConfig) -> None:
    """ConfigError if `run_dir` holds a run made with another configuration (checked before training)."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        changed = config_differences(load_yaml(saved), cfg)
        if changed:
            raise ConfigError(
                f"{run_dir} holds a run with another configuration (differs in "
                f"{', '.join(changed)}); choose another --out"
            )


def train_or_reuse(cfg: TrainConfig, run_dir: Path, data, log=print, label: str = "") -> dict:
    """The results of the run `cfg` in `run_dir`: read when finished, resumed when interrupted, else
    trained. `data` is the (train, test) pair, loaded once by the caller."""
    done = run_dir / "results.json"
    if done.is_file():
        try:
            results = parse_json(done.read_text(encoding="utf-8", errors="replace"))
        except ValueError as exc:
            raise DataError(
                f"{done} is not a readable results file ({exc}); delete it to train that run again"
            ) from None
        if not (
            isinstance(results, dict)
            and isinstance(results.get("top1"), (int, float))
            and isinstance(results.get("train_seconds"), (int, float))
        ):
            raise DataError(f"{done} is not a padnet results file; delete it to train that run again")
    else:
        log(f"[{label or run_dir.name}] training in {run_dir}")
        results = Trainer(cfg, run_dir, resume=run_dir.exists(), data=data).fit()
    log(f"[{label or run_dir.name}] top-1 {results['top1']:.2f} % ({results['train_seconds']:.0f} s)")
    return results


def run_compare(
    out_dir: str | Path, base: TrainConfig, convs=("static", "dy", "pad"), seeds=QUICK_SEEDS, log=print
) -> list[dict]:
    """Train every conv type with every seed under `out_dir`; write results.md/.json and a plot.

    Each (conv, seed) run lives in `out_dir/<conv>-seed<s>`; a finished run (`results.json`
    present) is reused and an interrupted one resumes, so re-running the command loses nothing.
    Returns one record per conv type with `model`, `params`, `flops`, `top1_mean`, `top1_std`,
    `seeds` (and the per-seed accuracies and wall times).
    """
    out_dir = Path(out_dir)
    base.validate()
    convs = tuple(canonical_conv(c) for c in convs)
    plan = [
        (
            conv,
            seed,
            base.replace(conv=conv, seed=seed),
            out_dir / f"{conv}-seed{seed}",
        )
        for conv in convs
        for seed in seeds
    ]  # every conv's options checked before anything trains
    for (
        _,
        _,
        cfg,
        run_dir,
    ) in plan:  # refuse to mix in runs made with another recipe, before training anything
        check_reusable(run_dir, cfg)
    data = load_dataset(base.dataset, base.data_root, base.download, **base.data_options())
    start = time.perf_counter()
    records = []
    for conv in convs:
        runs = []
        for _, seed, cfg, run_dir in (p for p in plan if p[0] == conv):
            runs.append(train_or_reuse(cfg, run_dir, data, log, f"{conv} seed {seed}"))
        top1 = [r["top1"] for r in runs]
        records.append(
            {
                "model": conv,
                "label": _label(conv, base),
                "arch": base.model,
                "width": base.width,
                "params": runs[0]["params"],
                "flops": runs[0]["flops"],
                "top1_mean": statistics.fmean(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "seeds": list(seeds),
                "top1": top1,
                "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
                "dynamic_ratio": (runs[0]["partition"] or {}).get("dynamic_ratio"),
            }
        )
    wall = time.perf_counter() - start
    summary = {
        "dataset": base.dataset,
        "config": base.to_dict(),
        "wall_seconds": round(wall, 1),
        "records": records,
    }
    write_json(out_dir / "results.json", summary)
    write_text(out_dir / "results.md", results_markdown(records, base, wall))
    plot_results(records, out_dir / "results.png", base)
    return records


def _fmt_count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def results_markdown(records: list[dict], cfg: TrainConfig, wall: float) -> str:
    """The paper's Table 1 columns (Params, FLOPs, Top-1 mean ± std) as a Markdown table."""
    convs = [r["model"] for r in records]
    lines = [
        f"# {cfg.model} (width ×{cfg.width:g}) on {cfg.dataset}",
        "",
        "| Model | Params | FLOPs (MACs) | Top-1 (%) | Seeds | Train time / run (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        lines.append(
            f"| {r['label']} | {_fmt_count(r['params'])} | {_fmt_count(r['flops'])} | "
            f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} | {len(r['seeds'])} | "
            f"{r['train_seconds_mean']:.0f} |"
        )
    lines += [
        "",
        (
            f"Recipe: {cfg.epochs} epochs, batch {cfg.batch_size}, SGD lr {cfg.lr:g} (warm-up + cosine), "
            f"weight decay {cfg.weight_decay:g}, train subset {cfg.train_subset or 'all'}, "
            f"augmentation {'on' if cfg.augment else 'off'}; "
            f"kernels k = {_per_method(cfg, convs, 'num_kernels')}, temperature "
            f"{_per_method(cfg, convs, 'temperature_start')} → {cfg.value('temperature_end', 'dy'):g} over "
            f"{cfg.value('temperature_anneal', 'dy'):g} {cfg.value('temperature_unit', 'dy')[:-1]}(s); PAD-Net partition "
            f"{cfg.value('partition', 'pad')} ({cfg.value('partition_scope', 'pad')}, "
            f"{cfg.value('partition_iterations', 'pad')} iterations × {cfg.value('partition_batches', 'pad')} "
            "batches)."
        ),
        (
            "Params: stored parameters with the classifier; PAD-Net counts its compact form. FLOPs: multiply-adds "
            "of one image."
        ),
        f"Wall time of the whole comparison: {wall:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def plot_results(records: list[dict], path: Path, cfg: TrainConfig) -> None:
    """Top-1 (mean ± std) against parameters, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for r in records:
        ax.errorbar(
            r["params"] / 1e6, r["top1_mean"], yerr=r["top1_std"], fmt="o", capsize=4, label=r["label"]
        )
        for acc in r["top1"]:
            ax.scatter(r["params"] / 1e6, acc, s=8, color="grey", alpha=0.5, zorder=0)
    ax.set_title(f"{cfg.model} ×{cfg.width:g} on {cfg.dataset}")
    label_axes(ax, "parameters (M)", "top-1 accuracy (%)", 8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
