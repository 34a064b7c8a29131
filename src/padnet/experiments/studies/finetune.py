"""The MoE comparison (PAD-Net Tables 2 and 4): dense vs MoE vs PAD-MoE vs MoE-P on one text task, with the
same recipe and seeds; writes `results.md`, `results.json` and `results.png`.

Each (method, seed) run keeps its `results.json` in `out/runs/<method>-seed<s>` (PAD-MoE and MoE-P runs
also their binary masks, `masks.safetensors`); a finished run with the same configuration is reused, one with
another configuration is refused before anything trains. [`TextRuns`][padnet.experiments.studies.finetune.TextRuns] is this run cache, shared with the
`padnet pad-moe` studies.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from padnet.errors import ConfigError, DataError
from padnet.experiments.plotting import label_axes
from padnet.experiments.studies.common import RunCache, figure, mean_std, pm, write_study
from padnet.layers.modes import partial_modes
from padnet.saving.fileio import atomic_path, parse_json
from padnet.training.config import FinetuneConfig
from padnet.training.nlp.finetune import METHOD_LABELS, METHODS, config_differences, finetune, save_results

# Quick default: 896 training sentences, 2 epochs, 3 seeds (README gives the time measured here).
QUICK = {"train_subset": 896, "epochs": 2, "lr": 1e-4, "partition_iterations": 2, "partition_batches": 4}
# Full recipe: every training sentence, 5 epochs (PAD-Net appendix A grid), IMP as for the vision models.
FULL = {"train_subset": None, "epochs": 5, "lr": 5e-5, "partition_iterations": 5, "partition_batches": 10}
QUICK_SEEDS = (0, 1, 2)
FULL_SEEDS = (0, 1, 2, 3, 4)


def _read_results(path: Path) -> dict:
    """A finished run's `results.json`; DataError (one line) when it is not readable JSON."""
    try:
        results = parse_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} is not a readable results file ({exc}); delete it to train that run again"
        ) from None
    if not isinstance(results, dict) or "score" not in results:
        raise DataError(f"{path} is not a padnet results file; delete it to train that run again")
    return results


MASKS_FILE = "masks.safetensors"  # a PAD-MoE / MoE-P run's binary masks, one tensor per partial mode


def run_variant(cfg: FinetuneConfig, run_dir: Path, log=print, label: str = "") -> dict:
    """The results of one run: read from `run_dir/results.json` when it holds this configuration, else
    fine-tuned and written there, with the binary masks of PAD-MoE / MoE-P in `masks.safetensors`."""
    label = label or f"{cfg.method} seed {cfg.seed}"
    done = run_dir / "results.json"
    if done.is_file():
        results = _read_results(done)
    else:
        log(f"[{label}] fine-tuning")
        results = finetune(cfg, log)
        model = results.pop("model")
        del results["tokenizer"], results["main"], results["pad"]
        if cfg.pad_config() is not None and cfg.pad_config().partial:
            save_masks(model, run_dir / MASKS_FILE)
        save_results(results, run_dir)
    log(f"[{label}] {results['metric']} {results['score']:.2f} ({results['train_seconds']:.0f} s)")
    return results


def save_masks(model, path: Path) -> None:
    """Write every partial mode's mask of `model` (uint8, named by module) to `path`, atomically.

    Raises:
        ValueError: a mask that is not binary (a partition still relaxed).
    """
    from safetensors.torch import save_file

    masks = {name: mode.mask.detach().cpu() for name, mode in partial_modes(model)}
    for name, mask in masks.items():
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"the mask of {name} is not binary")
    with atomic_path(path) as tmp:
        save_file({name: mask.to(torch.uint8).contiguous() for name, mask in masks.items()}, str(tmp))


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    """The masks written by [`save_masks`][padnet.experiments.studies.finetune.save_masks], module name → uint8 0/1 tensor, in module order (layer 2 before
    layer 10). An element-granular MoE layer has `<layer>.neuron_mode` (1, 2H + 1, F): rows the H up-projection
    inputs, the up bias, the H down-projection outputs; and `<layer>.bias_mode` (1, H), the output bias.
    DataError (one line) when the file is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DataError(
            f"{path} is missing (a run made before padnet saved masks); delete {path.parent} to train "
            "it again"
        )
    try:
        masks = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise DataError(
            f"{path} is not a readable masks file ({exc}); delete {path.parent} to train it again"
        ) from None
    return {name: masks[name] for name in sorted(masks, key=_module_order)}


def _module_order(name: str) -> list[tuple[int, int, str]]:
    """Sort key of a dotted module name with numbered parts compared as numbers (`layer.2` < `layer.10`)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(".")]


class TextRuns(RunCache):
    """[`RunCache`][padnet.experiments.studies.common.RunCache] of fine-tuning runs: `base` is a [`FinetuneConfig`][padnet.training.config.FinetuneConfig], a
    finished run is read from its `results.json`, a run of another configuration is refused."""

    def check(self, run_dir: Path, cfg: FinetuneConfig) -> None:
        saved = run_dir / "results.json"
        if saved.is_file():
            changed = config_differences(_read_results(saved).get("config", {}), cfg)
            if changed:
                raise ConfigError(
                    f"{run_dir} holds a run with another configuration (differs in "
                    f"{', '.join(changed)}); choose another --out"
                )

    def train(self, cfg: FinetuneConfig, run_dir: Path, label: str) -> dict:
        return run_variant(cfg, run_dir, self.log, label)

    def masks(self, name: str, seed: int) -> dict[str, torch.Tensor]:
        """The binary masks of the PAD-MoE / MoE-P run `name` with `seed`."""
        return load_masks(self.out / "runs" / f"{name}-seed{seed}" / MASKS_FILE)


def run_moe_compare(
    out: str | Path, base: FinetuneConfig, methods=METHODS, seeds=QUICK_SEEDS, log=print
) -> list[dict]:
    """Fine-tune every method (dense, moe, pad-moe, moe-p) with every seed; write `results.md`,
    `results.json`, `results.png`.

    Returns one record per method: `model` (label), `method`, `params`, `metric`, `score_mean`,
    `score_std`, `seeds`, `scores`, `train_seconds_mean` and, for PAD-MoE / MoE-P, the per-layer
    dynamic ratios of the first seed.
    """
    out = Path(out)
    methods = tuple(dict.fromkeys(base.replace(method=m).method for m in methods))  # each run once
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    started = time.perf_counter()
    cache = TextRuns(out, base, seeds, log)
    seeds, runs = cache.seeds, cache.results({m: {"method": m} for m in methods})
    records = []
    for method, results in runs.items():
        scores = [r["score"] for r in results]
        mean, std = mean_std(scores)
        kappa = base.value("kappa", method)
        records.append(
            {
                "model": METHOD_LABELS[method] + (f" (κ={kappa:g})" if kappa is not None else ""),
                "method": method,
                "params": results[0]["params"],
                "metric": results[0]["metric"],
                "score_mean": mean,
                "score_std": std,
                "seeds": list(seeds),
                "scores": scores,
                "train_seconds_mean": mean_std(r["train_seconds"] for r in results)[0],
                "layer_dynamic_ratio": results[0]["dynamic_ratio"] if kappa is not None else None,
            }
        )
    summary = {"task": base.task, "model": base.model, "config": base.to_dict(), "records": records}
    fig, (ax_score, ax_layers) = figure(2)
    _plot(records, runs, ax_score, ax_layers)
    write_study(
        out,
        f"{base.model} on {base.task}: dense vs MoE vs PAD-MoE vs MoE-P",
        _markdown(records, base),
        summary,
        fig,
        started,
    )
    return records


def _markdown(records: list[dict], cfg: FinetuneConfig) -> str:
    metric = records[0]["metric"]
    lines = [
        f"| Model | #Param. | {metric} (%) | Seeds | Train time / run (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {pm(r['scores'])} | {len(r['seeds'])} | "
            f"{r['train_seconds_mean']:.0f} |"
        )
    lines += [
        "",
        (
            f"Recipe: {cfg.epochs} epochs, batch {cfg.batch_size}, AdamW lr {cfg.lr:g} β (0.9, 0.98), "
            f"weight decay {cfg.weight_decay:g}, warm-up {100 * cfg.warmup_ratio:g} % then linear decay, "
            f"max length {cfg.max_length}, train subset {cfg.train_subset or 'all'}; MoE "
            f"{cfg.value('num_experts', 'moe')} experts top-{cfg.value('top_k', 'moe')}, load-balancing weight "
            f"{cfg.value('aux_loss_weight', 'moe'):g}; PAD-MoE / MoE-P {cfg.value('granularity', 'pad-moe')} "
            f"masks, partition {cfg.value('partition', 'pad-moe')} ({cfg.value('partition_iterations', 'pad-moe')} "
            f"iterations × {cfg.value('partition_batches', 'pad-moe')} batches) at the start of epoch 2."
        ),
        (
            "#Param.: every stored parameter (embeddings and classifier included), PAD-MoE and MoE-P in their "
            "compact form."
        ),
    ]
    for r in records:
        if r["layer_dynamic_ratio"]:
            ratios = ", ".join(f"{v:.3f}" for v in r["layer_dynamic_ratio"].values())
            lines.append(
                f"\n{r['model']} dynamic ratio per MoE layer (bottom to top, seed {r['seeds'][0]}): {ratios}."
            )
    return "\n".join(lines)


def _plot(records, runs, ax_score, ax_layers) -> None:
    for i, r in enumerate(records):
        ax_score.errorbar(
            r["params"] / 1e6,
            r["score_mean"],
            yerr=r["score_std"],
            fmt="o",
            capsize=4,
            label=r["model"],
            color=f"C{i}",
        )
        ax_score.scatter(
            [r["params"] / 1e6] * len(r["scores"]), r["scores"], s=8, color="grey", alpha=0.5, zorder=0
        )
    label_axes(ax_score, "parameters (M)", f"{records[0]['metric']} (%)", 8)
    for i, r in enumerate(records):
        if r["layer_dynamic_ratio"]:
            per_seed = [list(x["dynamic_ratio"].values()) for x in runs[r["method"]]]
            layers = range(1, len(per_seed[0]) + 1)
            for j, ratios in enumerate(per_seed):
                ax_layers.plot(
                    layers, ratios, marker="o", alpha=0.6, color=f"C{i}", label=None if j else r["model"]
                )
    ax_layers.set_title("layer-wise dynamic ratio (one line per seed)")
    label_axes(ax_layers, "MoE layer (bottom to top)", "dynamic ratio")
