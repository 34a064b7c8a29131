"""`padnet moe-compress`: PAD compression of a pretrained MoE causal LM folder, measured on calibration text.

The pipeline (one run of [`compress_folder`][padnet.training.nlp.compress.compress_folder]):

1. Load a transformers causal LM with banks of gated experts (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) and its
   tokenizer from a local folder, and a calibration text file, cut into blocks of `block_size` tokens; the last
   `heldout` fraction of the blocks measures perplexity, the others calibrate.
2. Compress the experts ([`padnet.adapter.moe_convert.compress_experts`][padnet.adapter.moe_convert.compress_experts]): `"pad"` keeps a fraction κ of
   the expert parameters dynamic by IMP on the calibration blocks (PAD-Net eq. 5–9) and shares a static part Θ̄
   (the experts' mean, weighted by the router's load, or Fisher-weighted element by element); `"prune"` keeps the same fraction and zeroes the rest
   (MoE-P); `"merge"` replaces every expert by the mean of all (no mask search, κ = 0).
3. Optionally fine-tune only Θ̄ and the scale factors on the calibration blocks.
4. Measure perplexity before and after and the bytes the experts take in the saved folder, and write the
   compressed model (`model/`, loads with [`padnet.load_pretrained`][padnet.adapter.model.load_pretrained]), `results.json` and
   `results.png`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from padnet.adapter.config import LIMITS, MAX_STEPS, METHOD_ALIASES, PadConfig
from padnet.adapter.model import PadModel, get_pad_model
from padnet.adapter.moe_convert import set_static_by_fisher, set_static_by_load
from padnet.adapter.moe_local import record_banks, set_static_by_least_squares
from padnet.errors import (
    MAX_LOSS,
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    check_choice,
    check_seed,
    deprecated,
    first_line,
    one_line,
)
from padnet.layers.experts import ExpertBank, find_expert_banks
from padnet.saving.fileio import atomic_path, write_json
from padnet.saving.moe_codec import encode_moe
from padnet.training.config import MAX_BATCH, MAX_TOKENS
from padnet.training.engine.checkpoint import claim_run_dir
from padnet.training.nlp.finetune import check_weight_files, quiet_transformers
from padnet.training.nlp.layerwise import (
    CheckpointShards,
    PadnetShards,
    Qwen2MoeShards,
    check_parameter_count,
    compress_layers,
    model_fails,
)
from padnet.training.nlp.lm_metrics import NextTokenScores
from padnet.training.nlp.transformers_export import (
    check_exportable,
    export_transformers,
    qwen2_moe_config,
)

# --method -> the PadConfig method that compresses: PAD-MoE, MoE-P, or PAD-MoE with every element static (merge)
METHODS = {"pad-moe": "pad-moe", "moe-p": "moe-p", "merge": "pad-moe"}
OLD_METHODS = {
    "pad": "pad-moe",
    "prune": "moe-p",
}  # the --method values of 0.1, read with a warning until 0.3.0
# Θ̄ of PAD-MoE: the experts' mean, weighted by the router's load or by the experts' Fisher information of the
# objective (the LM loss whole-model, the layer's output layer by layer), or least squares on the layer's output
STATIC_ESTIMATES = ("mean", "load", "fisher", "lsq")
# one decoder layer at a time from disk (layer-local IMP), or the whole model in memory (global IMP on the LM loss)
PIPELINES = ("layers", "model")
EXPORTS = ("padnet", "transformers")  # OUT/model: padnet's folder, or a standard transformers architecture
# a tokenizers file, or the vocabulary of a slow tokenizer (sentencepiece, BPE, WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


@dataclass
class CompressConfig:
    """One compression run (see the module docstring); every field is a `padnet moe-compress` flag."""

    method: str = "pad-moe"
    kappa: float | None = None  # None: PadConfig's (padnet.partitioning.DEFAULT_KAPPA["moe"])
    granularity: str | None = None  # None: PadConfig's ("element")
    static: str = "mean"
    partition_iterations: int | None = None  # None: PadConfig's
    calibration_batches: int = 8
    finetune_steps: int = 0
    lr: float = 1e-3
    block_size: int = 128
    batch_size: int = 8
    heldout: float = 0.2
    seed: int = 0
    export: str = "padnet"  # or "transformers": a Qwen2-MoE folder that loads without padnet (Mixtral only)
    pipeline: str = "layers"
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def pad_config(self) -> PadConfig:
        """The [`PadConfig`][padnet.adapter.config.PadConfig] that compresses the experts (partitioned by hand on
        the calibration batches), which defines the defaults and ranges of `kappa`, `granularity` and
        `partition_iterations`."""
        options = {
            "kappa": self.kappa,
            "granularity": self.granularity,
            "partition_iterations": self.partition_iterations,
        }
        given = {k: v for k, v in options.items() if v is not None}  # None: PadConfig's default
        return PadConfig(
            method=METHODS[self.method],
            partition_at="manual",
            partition_batches=self.calibration_batches,
            **given,
        )

    def validate(self) -> CompressConfig:
        """Raises ConfigError for a value out of range."""
        if self.method in OLD_METHODS:
            deprecated(f"--method {self.method}", f"--method {OLD_METHODS[self.method]}")
            self.method = OLD_METHODS[self.method]
        if isinstance(self.method, str) and self.method.lower() != "merge":
            self.method = METHOD_ALIASES.get(self.method.lower(), self.method.lower())
        check_choice("method", self.method, tuple(METHODS))
        check_choice("static", self.static, STATIC_ESTIMATES)
        check_choice("export", self.export, EXPORTS)
        check_choice("pipeline", self.pipeline, PIPELINES)
        if self.method == "merge" and self.kappa is not None:
            raise ConfigError(
                "--kappa does not apply to --method merge (every expert becomes the mean of all)"
            )
        for name, low, high in (
            ("calibration_batches", 1, LIMITS["partition_batches"]),
            ("finetune_steps", 0, MAX_STEPS),
            ("block_size", 2, MAX_TOKENS),
            ("batch_size", 1, MAX_BATCH),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        check_seed(self.seed)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not 0 < self.heldout < 1:
            raise ConfigError(f"heldout must be in (0, 1), got {self.heldout!r}")
        self.pad_config()
        if self.method == "moe-p" and (self.finetune_steps or self.static != "mean"):
            raise ConfigError("MoE-P (method moe-p) has no static part to estimate (--static) or fine-tune")
        if self.pipeline == "layers" and self.finetune_steps:
            raise ConfigError(
                "--finetune-steps trains on the language-model loss of the whole model: use --pipeline model"
            )
        return self


def load_tokenizer(folder: Path):
    """The tokenizer of a local model folder. Raises CheckpointError naming the files expected there when it has
    none, or with transformers' whole reason when it does not load."""
    import transformers

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{folder} has no tokenizer: expected tokenizer.json (or a slow tokenizer's "
            "tokenizer.model, vocab.json and merges.txt, or vocab.txt) in the model folder"
        )
    try:
        with quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for damaged tokenizer files
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {one_line(str(exc))}") from None


def _transformers(folder: Path, load):
    """`load()` (a transformers call reading `folder`) without its warnings; CheckpointError for any error."""
    try:
        with quiet_transformers():
            return load()
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a malformed config or weights
        raise CheckpointError(f"cannot load a causal LM from {folder}: {first_line(exc)}") from None


def meta_skeleton(folder: Path):
    """The causal LM of `folder`'s config built on the meta device (no memory). ConfigError for a model without
    banks of experts; CheckpointError for a config transformers cannot build."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _transformers(folder, lambda: AutoConfig.from_pretrained(folder, local_files_only=True))
    with torch.device("meta"):
        skeleton = _transformers(folder, lambda: AutoModelForCausalLM.from_config(config))
    if not find_expert_banks(skeleton):
        raise ConfigError(
            f"{type(skeleton).__name__} in {folder} has no bank of experts to compress (Mixtral, "
            "Qwen2-MoE, Qwen3-MoE and OLMoE have them)"
        )
    return skeleton


def _load_model(folder: Path, stored: int):
    """The causal LM of `folder`, whose weight files hold `stored` values. Its architecture is first built
    without memory ([`meta_skeleton`][padnet.training.nlp.compress.meta_skeleton]): a model without banks of
    experts (ConfigError), or a config asking for more parameters than the files hold (CheckpointError), is refused
    before anything is allocated; a tensor the files lack is refused, not initialised at random."""
    from transformers import AutoModelForCausalLM

    skeleton = meta_skeleton(folder)
    check_parameter_count(folder, sum(p.numel() for p in skeleton.parameters()), stored)
    # safetensors only: a pickled pytorch_model.bin is refused, never unpickled
    model, info = _transformers(
        folder,
        lambda: AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, output_loading_info=True
        ),
    )
    missing = sorted(info["missing_keys"])
    if missing:
        raise CheckpointError(f"{folder} does not hold tensor {missing[0]} ({len(missing)} missing)")
    return model


def load_causal_lm(folder: str | Path):
    """(model, tokenizer) of a local transformers causal-LM folder, in eval mode; never downloads.

    Raises CheckpointError for a folder that is not one (naming a damaged weight file, a tensor holding NaN or
    infinity, a missing tokenizer), ConfigError for a model without banks of experts.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a model folder (no config.json)")
    stored = check_weight_files(folder)
    tokenizer = load_tokenizer(folder)
    return _load_model(folder, stored).eval(), tokenizer


def token_blocks(tokenizer, texts: list[str], block_size: int) -> torch.Tensor:
    """`texts` as one token stream, an end-of-text token after each, cut into blocks of `block_size` token ids,
    (n, block_size); the remainder is dropped."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids: list[int] = []
    for seq in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        ids += seq + ([eos] if eos is not None else [])
    return torch.tensor(ids[: len(ids) // block_size * block_size], dtype=torch.long).reshape(-1, block_size)


def text_blocks(path: str | Path, tokenizer, block_size: int) -> torch.Tensor:
    """The text of `path` (UTF-8, one document per line) as [`token_blocks`][padnet.training.nlp.compress.token_blocks]. Raises DataError for an
    unreadable file or one too short for two blocks."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read calibration text {path}: {first_line(exc)}") from None
    blocks = token_blocks(tokenizer, lines, block_size)
    if len(blocks) < 2:
        raise DataError(f"{path} gives {len(blocks)} block(s) of {block_size} tokens: fewer than two blocks")
    return blocks


def lm_batches(blocks: torch.Tensor, batch_size: int) -> list[dict]:
    """Keyword batches of a causal LM (`input_ids` and `labels`, each (b, block_size))."""
    return [{"input_ids": chunk, "labels": chunk} for chunk in blocks.split(batch_size)]


@torch.no_grad()
def heldout_scores(model, blocks: torch.Tensor, batch_size: int, progress: bool = False) -> NextTokenScores:
    """Perplexity and next-token accuracy of `model` over `blocks` (n, T), in eval mode
    ([`NextTokenScores`][padnet.training.nlp.lm_metrics.NextTokenScores])."""
    was_training = model.training
    model.eval()
    scores = NextTokenScores()
    with tqdm(lm_batches(blocks, batch_size), desc="perplexity", disable=not progress, leave=False) as bar:
        for batch in bar:
            output = model(**batch)
            scores.add(output.loss, output.logits, batch["input_ids"])
    model.train(was_training)
    return scores


def perplexity(model, blocks: torch.Tensor, batch_size: int, progress: bool = False) -> float:
    """exp of the mean next-token negative log-likelihood over `blocks` (n, T), in eval mode."""
    return heldout_scores(model, blocks, batch_size, progress).perplexity


def bank_bytes(model) -> int:
    """Bytes the banks of experts take: each transformers bank's two tensors, or what the saved folder stores of
    each [`ExpertBank`][padnet.layers.experts.ExpertBank] (Θ̄ once, the dynamic values, the mask bits)."""
    total = sum(
        t.numel() * t.element_size()
        for name in find_expert_banks(model)
        for t in (model.get_submodule(name).gate_up_proj, model.get_submodule(name).down_proj)
    )
    for bank in (m for m in model.modules() if isinstance(m, ExpertBank)):
        total += sum(t.numel() * t.element_size() for t in encode_moe(bank).values())
    return total


def _partition(pad: PadModel, batches: list[dict], cfg: CompressConfig) -> float:
    """IMP on `batches` with a progress bar over its forward passes (iterations × batches); the dynamic
    ratio reached."""
    iterations = pad.pad_config.partition_iterations
    bar = tqdm(total=iterations * len(batches), desc="IMP scores", disable=not cfg.progress)

    def tick(module, args) -> None:  # a pre-hook that returns something would replace the forward's arguments
        bar.update(1)

    hook = pad.base_model.register_forward_pre_hook(tick)
    try:
        return pad.partition(batches).dynamic_ratio
    finally:
        hook.remove()
        bar.close()


def _finetune_static(
    pad: PadModel, batches: list[dict], steps: int, lr: float, progress: bool
) -> list[float]:
    """Train only the static parameters and scale factors of the expert banks; the losses of the steps."""
    trainable = [
        p
        for name, p in pad.base_model.named_parameters()
        if ".moe." in name and name.endswith((".static", ".phi"))
    ]
    if not trainable:
        raise ConfigError("the model has no static part or scale factors to fine-tune")
    frozen = [p for p in pad.base_model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    losses = []
    pad.base_model.train()
    try:
        with tqdm(
            range(steps), desc="calibration fine-tune", disable=not progress
        ) as bar:  # closed on errors too
            for step in bar:
                loss = pad.base_model(**batches[step % len(batches)]).loss
                if not loss.item() <= MAX_LOSS:  # NaN, infinite or diverged: nothing is written
                    raise NonFiniteLossError(loss.item(), step)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        for p in frozen:
            p.requires_grad_(True)
        pad.base_model.eval()
    return losses


def _original_scores(model, heldout: torch.Tensor, cfg: CompressConfig) -> dict:
    """[`perplexity`][padnet.training.nlp.compress.perplexity] of the model as loaded, before padnet changes it: an error there comes from the folder
    (a config.json that does not fit its weights) or the settings, and is one line (CheckpointError)."""
    try:
        return heldout_scores(model, heldout, cfg.batch_size, cfg.progress).to_dict()
    except (RuntimeError, IndexError, ValueError) as exc:
        raise model_fails(exc) from None


def _check_outcome(pad: PadModel, before: float, after: float) -> None:
    """ConfigError when a perplexity is not finite or the compressed model holds NaN or infinity: such a result
    is never reported or written as a success (nor a model that `padnet.load_pretrained` refuses)."""
    for name, value in (("the original model", before), ("the compressed model", after)):
        if not math.isfinite(value):
            raise ConfigError(
                f"{name}'s held-out perplexity is {value}, not a finite number; nothing was written"
            )
    for key, tensor in pad.base_model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(
                f"the compressed model holds NaN or infinite values in {key}; nothing was written "
                "(lower the learning rate)"
            )


def split_blocks(blocks: torch.Tensor, cfg: CompressConfig) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(the calibration batches of token ids, each (b, T): at most `calibration_batches` of the first
    1 − `heldout` of the blocks; the held-out blocks (n, T), the rest)."""
    split = max(1, min(len(blocks) - 1, round(len(blocks) * (1 - cfg.heldout))))
    return list(blocks[:split].split(cfg.batch_size))[: cfg.calibration_batches], blocks[split:]


def _results(cfg: CompressConfig, experts: int, kappa: float, before: dict, after: dict, **measured) -> dict:
    """The measurements of a compression, with the byte ratio it reached and the one PAD's encoding predicts."""
    if cfg.method == "pad-moe":
        expected = ((1 - kappa) + kappa * experts) / experts
    else:
        expected = kappa if cfg.method == "moe-p" else 1 / experts
    return {
        "config": cfg.to_dict(),
        "num_experts": experts,
        "kappa": kappa,
        "original": before,
        "compressed": after,
        "bytes_ratio": after["bytes"] / before["bytes"],
        "expected_bytes_ratio": expected,
        **measured,
    }


def compress(model, blocks: torch.Tensor, cfg: CompressConfig) -> tuple[PadModel, dict]:
    """Compress `model` (a transformers MoE causal LM) in memory with calibration `blocks` (n, T) as `cfg` says,
    with global IMP on the language-model loss (`pipeline="model"`); returns the
    [`PadModel`][padnet.adapter.model.PadModel] and the measurements (perplexities, bytes, seconds)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    calibration, heldout = split_blocks(blocks, cfg)
    batches = [{"input_ids": ids, "labels": ids} for ids in calibration]
    started = time.perf_counter()
    before = {**_original_scores(model, heldout, cfg), "bytes": bank_bytes(model)}
    names = find_expert_banks(model)
    experts = model.get_submodule(names[0]).gate_up_proj.shape[0]  # E of the first bank
    recorded = {}
    if cfg.static == "lsq":  # the original banks' inputs and outputs, the least-squares targets
        with record_banks(model, names) as recorded, torch.no_grad():
            for batch in batches:
                model(**batch)
    pad = get_pad_model(model, cfg.pad_config(), partition_batches=len(batches))
    if cfg.static == "load":
        set_static_by_load(pad.base_model, batches)
    elif cfg.static == "fisher":
        set_static_by_fisher(pad.base_model, batches)
    if cfg.method == "merge":  # every expert becomes the mean of all: every mask element static
        pad.set_masks({name: torch.zeros_like(mask) for name, mask in pad.masks().items()})
        reached = 0.0
    else:
        reached = _partition(pad, batches, cfg)
    for name, data in recorded.items():
        set_static_by_least_squares(pad.base_model.get_submodule(name), data)
    losses = (
        _finetune_static(pad, batches, cfg.finetune_steps, cfg.lr, cfg.progress) if cfg.finetune_steps else []
    )
    after = {
        **heldout_scores(pad.base_model, heldout, cfg.batch_size, cfg.progress).to_dict(),
        "bytes": bank_bytes(pad.base_model),
    }
    _check_outcome(pad, before["perplexity"], after["perplexity"])
    kappa = 0.0 if cfg.method == "merge" else pad.pad_config.value("kappa")
    return pad, _results(
        cfg,
        experts,
        kappa,
        before,
        after,
        dynamic_ratio=reached,
        calibration_blocks=sum(len(b) for b in calibration),
        heldout_blocks=len(heldout),
        finetune_losses=losses,
        seconds=time.perf_counter() - started,
    )


def _export_widths(cfg: CompressConfig, inter: int) -> tuple[int, int]:
    """(routed, shared) neurons of the Qwen2-MoE form of every layer compressed layer by layer: with neuron
    masks each bank keeps round(κ·(F + 1)) of its F neuron and 1 bias mask elements dynamic, so at most that
    many neurons are routed and at least one fewer static (layers with fewer are padded with zero neurons)."""
    from padnet.training.nlp.transformers_export import ROUTED_MULTIPLE

    pad_config = cfg.pad_config()
    if pad_config.value("granularity") != "neuron":  # element masks: full-width experts, nothing shared
        kept, shared = inter, 0
    elif cfg.method == "merge":
        kept, shared = 0, inter
    else:
        kept = round(pad_config.value("kappa") * (inter + 1))
        shared = 0 if cfg.method == "moe-p" else inter - max(0, kept - 1)
    return max(1, -(-kept // ROUTED_MULTIPLE)) * ROUTED_MULTIPLE, shared


def _tied_keys(model) -> set[str]:
    """State keys of `model` whose tensor is another key's (a head tied to the embeddings): stored once."""
    seen, tied = set(), set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(key)
        seen.add(id(tensor))
    return tied


def compress_folder_layers(
    model_dir: str | Path, calibration: str | Path, out: str | Path, cfg: CompressConfig
) -> dict:
    """The layer-by-layer pipeline of [`compress_folder`][padnet.training.nlp.compress.compress_folder]
    (`pipeline="layers"`, [`padnet.training.nlp.layerwise`][padnet.training.nlp.layerwise]): `out/model` is
    written shard by shard and renamed into place when whole. Returns the results (not yet written)."""
    folder, out = Path(model_dir), Path(out)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a model folder (no config.json)")
    shards = CheckpointShards(folder)
    tokenizer = load_tokenizer(folder)
    skeleton = meta_skeleton(folder)
    shards.check(skeleton, _tied_keys(skeleton))
    if cfg.export == "transformers":
        check_exportable(skeleton)
    calibration_ids, heldout = split_blocks(text_blocks(calibration, tokenizer, cfg.block_size), cfg)
    banks = find_expert_banks(skeleton)
    experts, _, inter = skeleton.get_submodule(banks[0]).down_proj.shape  # (E, H, F)
    dtype = shards.dtype(banks[0])
    before_bytes = sum(
        math.prod(shards.source(f"{name}.{part}")[1]) * dtype.itemsize
        for name in banks
        for part in ("gate_up_proj", "down_proj")
    )
    if cfg.export == "transformers":
        writer = Qwen2MoeShards(
            out / "model", dtype, qwen2_moe_config(skeleton.config, *_export_widths(cfg, inter))
        )
    else:
        writer = PadnetShards(out / "model", dtype)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    try:
        measured = compress_layers(
            shards, skeleton, calibration_ids, list(heldout.split(cfg.batch_size)), cfg, writer.write
        )
        for name in ("original", "compressed"):
            if not math.isfinite(measured[name]["perplexity"]):
                raise ConfigError(
                    f"the {name} model's held-out perplexity is {measured[name]['perplexity']}, not a finite "
                    "number; nothing was written"
                )
        if cfg.export == "transformers":
            writer.close(tokenizer)
        else:
            record = {
                "form": "training",
                "config": cfg.pad_config().to_dict(),
                "converted": banks,
                "base": {},
                "deploy": {},
                "architecture": {"transformers": type(skeleton).__name__},
            }
            writer.close(record, skeleton, tokenizer)
    except BaseException:
        writer.abort()
        raise
    ratios = measured["dynamic_ratio"]
    kappa = 0.0 if cfg.method == "merge" else cfg.pad_config().value("kappa")
    return _results(
        cfg,
        experts,
        kappa,
        {**measured["original"], "bytes": before_bytes},
        {**measured["compressed"], "bytes": measured["bytes"]},
        dynamic_ratio=sum(ratios.values()) / len(ratios),
        dynamic_ratios=ratios,
        calibration_blocks=sum(len(b) for b in calibration_ids),
        heldout_blocks=len(heldout),
        finetune_losses=[],
        seconds=time.perf_counter() - started,
        seconds_per_layer=measured["seconds_per_layer"],
    )


def compress_folder(
    model_dir: str | Path, calibration: str | Path, out: str | Path, cfg: CompressConfig | None = None
) -> dict:
    """Compress a model folder with a calibration text file — one decoder layer at a time from disk
    (`cfg.pipeline="layers"`, the default: [`compress_folder_layers`][padnet.training.nlp.compress.compress_folder_layers])
    or the whole model in memory (`"model"`: [`compress`][padnet.training.nlp.compress.compress]) —; writes
    `out/model` (the compressed model with its tokenizer: padnet's folder, or with `cfg.export="transformers"` the
    standard Qwen2-MoE form of a Mixtral,
    [`export_transformers`][padnet.training.nlp.transformers_export.export_transformers]), `out/results.json` and
    `out/results.png`. Returns the results.

    Raises CheckpointError / ConfigError / DataError (one line each) for a bad folder, text or setting, an `out`
    that holds a finished run (its `results.json`), and NonFiniteLossError or ConfigError for a fine-tune or a
    compression that ends in NaN or infinity; then nothing is written.
    """
    cfg = (cfg or CompressConfig()).validate()
    out = Path(out)
    claim_run_dir(out, resume=False, resumable=False)
    if not Path(calibration).is_file():
        raise DataError(f"cannot read calibration text {calibration}: no such file")
    if cfg.pipeline == "layers":
        results = compress_folder_layers(model_dir, calibration, out, cfg)
    else:
        model, tokenizer = load_causal_lm(model_dir)
        if cfg.export == "transformers":
            check_exportable(model)  # before any work
        blocks = text_blocks(calibration, tokenizer, cfg.block_size)
        pad, results = compress(model, blocks, cfg)
        if cfg.export == "transformers":
            export_transformers(pad, out / "model", tokenizer)
        else:
            pad.save_pretrained(out / "model", full=True, tokenizer=tokenizer)
    results["model_dir"], results["calibration"] = str(model_dir), str(calibration)
    _plot(results, out / "results.png")
    write_json(out / "results.json", results)  # last: a folder with results.json holds a finished run
    return results


def _plot(results: dict, path: Path) -> None:
    """Perplexity against expert bytes, original and compressed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label, marker in (
        ("original", "original MoE", "o"),
        ("compressed", results["config"]["method"], "s"),
    ):
        ax.scatter(results[key]["bytes"] / 2**20, results[key]["perplexity"], marker=marker, label=label)
    ax.set_xlabel("expert weights (MiB)")
    ax.set_ylabel("held-out perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
