"""What every study shares: a cache of trained runs keyed by name and seed, mean ± std over seeds, and
writing a study's Markdown, JSON and figure."""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from pathlib import Path

from padnet.experiments.compare import check_reusable, train_or_reuse
from padnet.saving.fileio import atomic_path, write_json, write_text
from padnet.training.config import TrainConfig
from padnet.training.data import load_dataset
from padnet.training.engine.trainer import load_run

METHODS = {"random": "Random", "mp": "One-shot MP", "imp": "IMP"}  # partition methods compared (Fig. 6)


def variant(base: tuple[str, dict], name: str, **changes) -> tuple[str, dict]:
    """A study variant `(name, changes)`: `base`'s changes with `changes` on top."""
    return name, {**base[1], **changes}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values, digits: int = 2) -> str:
    """`mean ± std` of `values` as text."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


class RunCache(ABC):
    """Runs of one study folder, `out/runs/<name>-seed<s>`, shared across studies and re-runs: every variant
    (name → configuration changes) with every seed, checked against finished runs before a study trains.
    Subclasses say how a run is checked and trained ([`Runs`][padnet.experiments.studies.common.Runs] for images, `padnet.experiments.studies.finetune.TextRuns`
    for fine-tuning).

    Args:
        out: the study folder's parent (several studies share its `runs/`).
        base: the recipe every run starts from (a configuration dataclass); a variant changes some keys.
        seeds: seeds of every variant (a repeated seed is one run).
        log: progress messages.
    """

    def __init__(self, out: str | Path, base, seeds, log=print):
        self.out, self.base, self.seeds, self.log = (
            Path(out),
            base.validate(),
            tuple(dict.fromkeys(seeds)),
            log,
        )

    def plan(self, variants: dict[str, dict]) -> list[tuple[str, int, object, Path]]:
        """Every (name, seed, config, run folder); configurations and reuse are checked before training."""
        plan = [
            (
                name,
                seed,
                self.base.replace(seed=seed, **changes),
                self.out / "runs" / f"{name}-seed{seed}",
            )
            for name, changes in variants.items()
            for seed in self.seeds
        ]
        for _, _, cfg, run_dir in plan:
            self.check(run_dir, cfg)
        return plan

    def records(
        self,
        variants: dict[str, dict],
        labels: dict[str, str],
        value: str,
        values_key: str,
        extra: tuple[str, ...] = (),
    ) -> list[dict]:
        """Train (or reuse) every variant with every seed; one record per variant with its `labels` entry,
        parameters, the per-seed `value` of each run (`values_key`), their mean and standard deviation
        (`{value}_mean`, `{value}_std`), the `extra` keys of the first run, the seeds and the mean training
        time (s)."""
        out = []
        for name, results in self.results(variants).items():
            values = [r[value] for r in results]
            mean, std = mean_std(values)
            out.append(
                {
                    "model": name,
                    "label": labels[name],
                    "params": results[0]["params"],
                    **{key: results[0][key] for key in extra},
                    values_key: values,
                    f"{value}_mean": mean,
                    f"{value}_std": std,
                    "seeds": list(self.seeds),
                    "train_seconds_mean": mean_std(r["train_seconds"] for r in results)[0],
                }
            )
        return out

    @abstractmethod
    def check(self, run_dir: Path, cfg) -> None:
        """ConfigError if `run_dir` holds a run of another configuration."""

    @abstractmethod
    def train(self, cfg, run_dir: Path, label: str) -> dict:
        """The `results.json` record of the run `cfg` in `run_dir`: read when finished, else trained."""

    def results(self, variants: dict[str, dict]) -> dict[str, list[dict]]:
        """Train (or read) every variant with every seed: name → per-seed `results.json` records."""
        out: dict[str, list[dict]] = {name: [] for name in variants}
        for name, seed, cfg, run_dir in self.plan(variants):
            out[name].append(self.train(cfg, run_dir, f"{name} seed {seed}"))
        return out


class Runs(RunCache):
    """[`RunCache`][padnet.experiments.studies.common.RunCache] of image-classification runs (`base`: a [`TrainConfig`][padnet.training.config.TrainConfig]), with the recipe's data
    set read once and the trained models at hand."""

    def __init__(self, out: str | Path, base: TrainConfig, seeds, log=print):
        super().__init__(out, base, seeds, log)
        self._data = None

    @property
    def data(self):
        """(train, test) of the recipe's data set, read once."""
        if self._data is None:
            self._data = load_dataset(
                self.base.dataset, self.base.data_root, self.base.download, **self.base.data_options()
            )
        return self._data

    def check(self, run_dir: Path, cfg: TrainConfig) -> None:
        check_reusable(run_dir, cfg)

    def train(self, cfg: TrainConfig, run_dir: Path, label: str) -> dict:
        return train_or_reuse(cfg, run_dir, self.data, self.log, label)

    def model(self, name: str, seed: int):
        """The trained model of run `name` with `seed` (eval mode)."""
        model, _, _ = load_run(self.out / "runs" / f"{name}-seed{seed}" / "model.safetensors", data=self.data)
        return model.eval()


def vision_recipe(cfg: TrainConfig) -> str:
    """The training recipe of an image-classification study as one clause (model, data, schedule)."""
    return (
        f"{cfg.model} ×{cfg.width:g} on {cfg.dataset}: {cfg.epochs} epochs, batch {cfg.batch_size}, train subset "
        f"{cfg.train_subset or 'all'}, SGD lr {cfg.lr:g} (warm-up + cosine), weight decay {cfg.weight_decay:g}"
    )


def write_study(folder: Path, title: str, markdown: str, summary: dict, fig, started: float) -> None:
    """Write `results.md` (with the wall time), `results.json` and `results.png` (closing `fig`)."""
    import matplotlib.pyplot as plt

    wall = time.perf_counter() - started
    summary = {**summary, "wall_seconds": round(wall, 1)}
    write_json(folder / "results.json", summary)
    write_text(
        folder / "results.md",
        f"# {title}\n\n{markdown.rstrip()}\n\nWall time of this study: {wall:.0f} s "
        f"(runs already trained by another study are reused, not timed).\n",
    )
    fig.tight_layout()
    with atomic_path(folder / "results.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_variant_study(
    runs: RunCache,
    study: str,
    title: str,
    records: list[dict],
    markdown: str,
    values_key: str,
    ylabel: str,
    started: float,
) -> dict:
    """Write a study that compares variants into `runs.out / study`: `markdown`, a bar chart of each record's
    per-seed `values_key` and the records with the recipe; returns `{"records": records}`."""
    fig = bars([r["label"] for r in records], [r[values_key] for r in records], ylabel)
    write_study(
        runs.out / study, title, markdown, {"records": records, "config": runs.base.to_dict()}, fig, started
    )
    return {"records": records}


def figure(ncols: int = 1, width: float = 5.0):
    """A matplotlib figure (Agg backend) with `ncols` axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.6), dpi=120, squeeze=False)
    return fig, list(axes[0])


def bars(labels: list[str], values: list[list[float]], ylabel: str):
    """A bar chart of mean ± std per label with every seed's value as a dot (so the spread shows)."""
    fig, (ax,) = figure()
    x = range(len(labels))
    stats = [mean_std(v) for v in values]
    ax.bar(x, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="#7aa6c2")
    for i, v in enumerate(values):
        ax.plot([i] * len(v), v, "k.", markersize=4)
    ax.set_xticks(list(x), labels, rotation=20, fontsize=8)
    ax.set_ylim(min(map(min, values)) - 2, max(map(max, values)) + 1)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    return fig


def sweep(xs: list[float], values: list[list[float]], normalised: list[float], ylabel: str, xlabel: str):
    """Two panels over `xs`: mean ± std of `values` (per x, the seeds' values) with every seed as a dot, and
    `normalised` (fractions, plotted in %)."""
    fig, axes = figure(2)
    stats = [mean_std(v) for v in values]
    axes[0].errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o-", capsize=4)
    for x, v in zip(xs, values):
        axes[0].plot([x] * len(v), v, "k.", markersize=4)
    axes[0].set_ylabel(ylabel)
    axes[1].plot(xs, [100 * v for v in normalised], "o-")
    axes[1].axhline(0, color="grey", linewidth=0.8)
    axes[1].set_ylabel("normalised performance (%)")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    return fig


def table(columns: dict[str, list[str]]) -> str:
    """A Markdown table from header → cells (one per row); the first column left-aligned, the others right."""
    headers = list(columns)
    lines = ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in zip(*columns.values())]
    return "\n".join(lines)
