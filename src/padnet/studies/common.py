"""What every study shares: a cache of trained runs keyed by name and seed, mean ± std over seeds, and
writing a study's Markdown, JSON and figure."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

from ..compare import check_reusable, train_or_reuse
from ..config import TrainConfig
from ..data import load_dataset
from ..engine.trainer import load_run
from ..fileio import atomic_path, write_json, write_text


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values, digits: int = 2) -> str:
    """``mean ± std`` of ``values`` as text."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


class Runs:
    """Training runs of one study folder, ``out/runs/<name>-seed<s>``, reused across studies and re-runs.

    Args:
        out: the study folder's parent (several studies share its ``runs/``).
        base: the recipe every run starts from; a variant changes some keys.
        seeds: seeds of every variant.
        log: progress messages.
    """

    def __init__(self, out: str | Path, base: TrainConfig, seeds, log=print):
        self.out, self.base, self.seeds, self.log = Path(out), base.validate(), tuple(seeds), log
        self._data = None

    @property
    def data(self):
        """(train, test) of the recipe's data set, read once."""
        if self._data is None:
            self._data = load_dataset(self.base.dataset, self.base.data_root, self.base.download)
        return self._data

    def plan(self, variants: dict[str, dict]) -> list[tuple[str, int, TrainConfig, Path]]:
        """Every (name, seed, config, run folder); configurations and reuse are checked before training."""
        plan = [(name, seed, dataclasses.replace(self.base, seed=seed, **changes).validate(),
                 self.out / "runs" / f"{name}-seed{seed}")
                for name, changes in variants.items() for seed in self.seeds]
        for _, _, cfg, run_dir in plan:
            check_reusable(run_dir, cfg)
        return plan

    def results(self, variants: dict[str, dict]) -> dict[str, list[dict]]:
        """Train (or read) every variant with every seed: name → per-seed ``results.json`` records."""
        out: dict[str, list[dict]] = {name: [] for name in variants}
        for name, seed, cfg, run_dir in self.plan(variants):
            out[name].append(train_or_reuse(cfg, run_dir, self.data, self.log, f"{name} seed {seed}"))
        return out

    def model(self, name: str, seed: int):
        """The trained model of run ``name`` with ``seed`` (eval mode)."""
        model, _, _ = load_run(self.out / "runs" / f"{name}-seed{seed}" / "model.safetensors", data=self.data)
        return model.eval()


def write_study(folder: Path, title: str, markdown: str, summary: dict, fig, started: float) -> None:
    """Write ``results.md`` (with the wall time), ``results.json`` and ``results.png`` (closing ``fig``)."""
    import matplotlib.pyplot as plt

    wall = time.perf_counter() - started
    summary = {**summary, "wall_seconds": round(wall, 1)}
    write_json(folder / "results.json", summary)
    write_text(folder / "results.md", f"# {title}\n\n{markdown.rstrip()}\n\nWall time of this study: {wall:.0f} s "
                                      f"(runs already trained by another study are reused, not timed).\n")
    fig.tight_layout()
    with atomic_path(folder / "results.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def figure(ncols: int = 1, width: float = 5.0):
    """A matplotlib figure (Agg backend) with ``ncols`` axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.6), dpi=120, squeeze=False)
    return fig, list(axes[0])
