"""Image-classification training: SGD + warm-up/cosine, the method's training-time work through
[`padnet.adapter.methods.PadTraining`][padnet.adapter.methods.PadTraining] (temperature annealing, mode partition, SD-Conv's thresholds), top-1
evaluation, a JSONL metrics log, safetensors checkpoints and resume."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from padnet.adapter.methods import PadTraining
from padnet.adapter.model import PadModel, get_pad_model
from padnet.errors import MAX_LOSS, CheckpointError, ConfigError, DataError, NonFiniteLossError
from padnet.metrics.counting import count_flops, count_parameters
from padnet.models import create_model
from padnet.parallel import Context
from padnet.partitioning import check_dynamic_elements, masked_tensors
from padnet.saving.fileio import parse_json, write_json, write_text
from padnet.training.config import TrainConfig, config_from_dict, dump_yaml
from padnet.training.data import ImageData, load_dataset, make_loader
from padnet.training.data.images import data_fingerprint
from padnet.training.distributed import data_parallel, global_batchnorm, init
from padnet.training.engine.checkpoint import (
    claim_run_dir,
    epoch_checkpoints,
    load_model_state,
    read_checkpoint,
    restore_training,
    resume_newest,
    save_checkpoint,
    save_epoch_checkpoint,
    saved_differences,
)
from padnet.training.engine.schedule import build_scheduler
from padnet.training.precision import Precision
from padnet.training.speed import MEMORY_FORMATS, check_compiler, compile_model

# keys that may change when a run resumes: how it runs, not what it computes
RESUMABLE_CHANGES = {
    "progress",
    "threads",
    "keep_checkpoints",
    "data_root",
    "download",
    "device",
    "compile",
    "channels_last",
}


def config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """`saved_differences` with this command's `RESUMABLE_CHANGES`: what differs between a saved run and `cfg`."""
    return saved_differences(saved, cfg, RESUMABLE_CHANGES)


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The model a configuration describes, built from scratch by `padnet.create_model` with the layer
    options of its [`PadConfig`][padnet.adapter.config.PadConfig]."""
    pad = cfg.pad_config()
    return create_model(
        cfg.model,
        conv=cfg.conv,
        num_classes=num_classes,
        in_chans=in_chans,
        width=cfg.width,
        stem=cfg.stem,
        **(pad.layer_kwargs() if pad is not None else {}),
    )


def pad_model(model: nn.Module, cfg: TrainConfig) -> PadModel | None:
    """`padnet.get_pad_model(model, cfg.pad_config())` for a model of [`build_model`][padnet.training.engine.trainer.build_model]
    (None for a static run): the model a user's loop would train."""
    config = cfg.pad_config()
    return get_pad_model(model, config) if config is not None else None


def load_run(checkpoint: str | Path, data=None, data_root: str | None = None, dataset: str | None = None):
    """The trained model saved in a run checkpoint (`model.safetensors` or `checkpoint-*`), with the run's
    configuration and test split: `(model, cfg, test)`.

    `data` (train, test) skips reading the data set again; `data_root` overrides the saved one. A run records
    a fingerprint of its test split: when the data set named in its configuration gives another test split (the
    run was trained on data given through the Python API), evaluating it needs `dataset` named explicitly.

    Raises:
        CheckpointError: unreadable file, one without a run configuration, or another architecture.
        DataError: the recorded test split differs from the configured data set's, and no `dataset` was named.
    """

    tensors, meta = read_checkpoint(checkpoint)
    saved = meta["state"].get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{checkpoint} holds no run configuration; this command needs a padnet run's model"
        )
    try:  # read from disk: validated as command-line input is
        cfg = config_from_dict(saved, TrainConfig(), str(checkpoint)).validate()
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint} holds an invalid run configuration ({exc})") from None
    if data_root:
        cfg = dataclasses.replace(cfg, data_root=data_root)
    if dataset is not None:
        cfg = dataclasses.replace(cfg, dataset=dataset).validate()
    _, test = (
        data if data is not None else load_dataset(cfg.dataset, cfg.data_root, False, **cfg.data_options())
    )
    recorded = meta["state"].get("data")
    if data is None and dataset is None and recorded is not None:
        if not (isinstance(recorded, dict) and isinstance(recorded.get("test"), (str, type(None)))):
            raise CheckpointError(f"{checkpoint} has a malformed data record")
        if recorded["test"] is not None and recorded["test"] != data_fingerprint(test):
            raise DataError(
                f"{checkpoint} was tested on other data than the {cfg.dataset} test split (data given "
                "through the Python API?); name the data to evaluate on with --dataset (and --data-root)"
            )
    model = build_model(cfg, test.num_classes, test.input_shape[0])
    load_model_state(model, tensors, checkpoint)
    return model, cfg, test


PARTITION_SEED, STATISTICS_SEED = (
    7919,
    104729,
)  # seed offsets of the side batches (training batches unaffected)


class SideBatches:
    """Training batches drawn with a seed of their own (`cfg.seed + seed_offset`), as this process's chunks:
    what mode partition scores and the BatchNorm statistics are re-estimated on. Each iteration draws the same
    batches, and drawing them leaves the training batches unchanged."""

    def __init__(self, cfg: TrainConfig, train, ctx: Context, seed_offset: int):
        self.cfg, self.train, self.ctx, self.seed = cfg, train, ctx, cfg.seed + seed_offset

    def __iter__(self):
        cfg = self.cfg
        loader = make_loader(
            self.train,
            cfg.batch_size,
            train=True,
            seed=self.seed,
            epoch=0,
            augment=cfg.augment,
            flip=cfg.flip,
        )
        return ((self.ctx.shard(x), self.ctx.shard(y)) for x, y in loader)


def chunk_loss(loss_fn, cfg: TrainConfig, ctx: Context):
    """`loss_fn` for a data-parallel run's chunks: each chunk's share of the global batch's mean loss (batches of
    `cfg.batch_size`, drop_last), so the scores summed over processes are the global batch's; `loss_fn` itself
    for one process."""
    if ctx.world_size == 1:
        return loss_fn

    def loss(logits, y):
        return loss_fn(logits, y) * (y.numel() * ctx.world_size / cfg.batch_size)

    return loss


def param_groups(model: nn.Module, weight_decay: float, exclude=()) -> list[dict]:
    """Weight decay on kernels and linear weights only; none on BatchNorm, biases and scale factors.
    Parameters in `exclude` (SD-Conv thresholds, which have an optimiser of their own) are left out."""
    skip = {id(p) for p in exclude}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in skip:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: Context | None = None) -> float:
    """Top-1 accuracy in percent over `loader`; with a data-parallel `ctx` process r evaluates batches
    r, r + W, ... and the counts are summed over processes."""
    ctx = ctx or Context(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)  # (correct, total)
    for i, (x, y) in enumerate(loader):
        if i % ctx.world_size == ctx.rank:
            y = y.to(ctx.device)
            counts += torch.tensor([int((model(x.to(ctx.device)).argmax(1) == y).sum()), y.numel()])
    ctx.all_reduce_([counts])
    model.train(was_training)
    return 100.0 * counts[0].item() / max(1.0, counts[1].item())


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # off when not a TTY


class _TensorBoard:
    """Scalars to TensorBoard when `tensorboard` is installed; otherwise nothing."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict, step: int) -> None:
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """Train one model as `cfg` describes, in `run_dir`.

    The run directory holds `config.yaml` (the resolved configuration), `metrics.jsonl` (one record
    per epoch), `checkpoint-epochNNNN.safetensors` (the last `keep_checkpoints`), `model.safetensors`
    (final weights) and `results.json`. `resume=True` continues from the newest checkpoint and ends
    with the same weights as an uninterrupted run (batches and augmentation depend only on seed and
    epoch; RNG, optimiser and scheduler states are restored).

    Launched by `torchrun` with W processes it trains data-parallel ([`padnet.training.distributed`][padnet.training.distributed]): process r
    takes chunk r of each global batch of `batch_size` and only process 0 writes the run directory.

    Raises:
        ConfigError: invalid configuration, or `run_dir` already holds another run and `resume` is off.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        resume: bool = False,
        data: tuple[ImageData, ImageData] | None = None,
    ):
        self.cfg = cfg = cfg.validate().applicable()  # what this run uses, and saves
        self.run_dir = Path(run_dir)
        self.resume = resume
        claim_run_dir(self.run_dir, resume)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.ctx = init(cfg.device)
        if cfg.batch_size < 2 * self.ctx.world_size:
            raise ConfigError(
                f"batch_size {cfg.batch_size} leaves fewer than 2 samples for each of the "
                f"{self.ctx.world_size} processes (BatchNorm needs 2)"
            )
        if data is None:  # process 0 reads (and downloads) first, so processes never write one file together
            if not self.ctx.main:
                self.ctx.barrier()
            data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, **cfg.data_options())
            if self.ctx.main:
                self.ctx.barrier()
        train, test = data
        if cfg.train_subset and not hasattr(train, "subset"):
            raise ConfigError(f"train_subset does not apply to the {type(train).__name__} data given")
        if cfg.train_subset and cfg.train_subset < len(train):
            train = train.subset(cfg.train_subset, seed=cfg.seed)
        self.train_data, self.test_data = train, test
        self.test_fingerprint = data_fingerprint(test)  # what `padnet evaluate` checks it is given again
        self.precision = Precision(cfg.precision, self.ctx.device)
        if cfg.compile:
            check_compiler(self.ctx.device)
        torch.manual_seed(cfg.seed)
        self.model = global_batchnorm(build_model(cfg, train.num_classes, train.input_shape[0]), self.ctx)
        self.model.to(self.ctx.device, memory_format=MEMORY_FORMATS[cfg.channels_last])
        self.pad = pad_model(self.model, cfg)  # the PadModel a user's loop would train (None: static)
        masked = masked_tensors(self.model)
        if masked:  # a kappa that keeps no dynamic element is refused before the run directory is written
            check_dynamic_elements(
                masked, cfg.value("kappa"), cfg.value("partition_scope"), cfg.value("partition_align")
            )
        self.train_model = self.model  # DistributedDataParallel once training starts (after the partition)
        self.steps_per_epoch = len(make_loader(train, cfg.batch_size, train=True, seed=cfg.seed, epoch=0))
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is larger than the training set ({len(train)} images)"
            )
        total = cfg.epochs * self.steps_per_epoch
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        # the method's training-time work (temperature, partition, SD-Conv's thresholds and budget loss)
        if self.pad is None:
            self.hooks = PadTraining(self.model, None, self.steps_per_epoch, total)
        else:
            self.hooks = self.pad.start_training(
                self.steps_per_epoch,
                total_steps=total,
                partition_data=SideBatches(cfg, train, self.ctx, PARTITION_SEED),
                loss_fn=chunk_loss(self.criterion, cfg, self.ctx),
                statistics_data=SideBatches(cfg, train, self.ctx, STATISTICS_SEED),
                partition_seed=cfg.seed,
            )
        self.optimizer = torch.optim.SGD(
            param_groups(self.model, cfg.weight_decay, exclude=self.hooks.method.own_parameters(self.model)),
            lr=cfg.lr,
            momentum=cfg.momentum,
        )
        self.scheduler = build_scheduler(
            self.optimizer, total, round(cfg.warmup_epochs * self.steps_per_epoch)
        )
        self.epoch = self.step = 0
        self.partition_report: dict | None = None
        self.elapsed = 0.0

    # ---------------------------------------------------------------- state
    def _state(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "partition": self._partition_record(),
            "elapsed": self.elapsed,
            "data": {"dataset": self.cfg.dataset, "test": self.test_fingerprint},
            "grad_scaler": self.precision.state_dict(),
        }

    def save(self) -> Path:
        if not self.ctx.main:
            return self.run_dir / f"checkpoint-epoch{self.epoch:04d}.safetensors"
        return save_epoch_checkpoint(
            self.run_dir,
            self.epoch,
            self.cfg.keep_checkpoints,
            self.model,
            self._state(),
            self.optimizer,
            self.scheduler,
            self._extra_optimizers(),
        )

    def _extra_optimizers(self) -> dict:
        return self.hooks.method.optimizers()

    def load(self, path: str | Path) -> None:
        tensors, meta = read_checkpoint(path)
        changed = config_differences(meta["state"].get("config", {}), self.cfg)
        if changed:
            raise ConfigError(f"cannot resume {path}: the configuration differs in {', '.join(changed)}")
        load_model_state(self.model, tensors, path)
        restore_training(tensors, meta, self.optimizer, self.scheduler, self._extra_optimizers(), path=path)
        state = meta["state"]
        epoch, step = state.get("epoch"), state.get("step")
        if not (
            isinstance(epoch, int) and 0 <= epoch <= self.cfg.epochs and step == epoch * self.steps_per_epoch
        ):
            raise CheckpointError(
                f"cannot resume {path}: its epoch {epoch!r} and step {step!r} do not fit a run of "
                f"{self.cfg.epochs} epochs of {self.steps_per_epoch} steps"
            )
        self.epoch, self.step = epoch, step
        self.partition_report, self.elapsed = state.get("partition"), state.get("elapsed", 0.0)
        try:
            self.precision.load_state_dict(state.get("grad_scaler") or {})
        except ConfigError as exc:
            raise CheckpointError(f"cannot resume {path}: {exc}") from None
        self.hooks.step, self.hooks.partitioned = self.step, self.partition_report is not None

    # ---------------------------------------------------------------- steps
    def _partition_record(self) -> dict | None:
        """The report of the mode partition (this run's, or the resumed run's), as saved."""
        report = self.pad.partition_report if self.pad is not None else None
        return report.to_dict() if report is not None else self.partition_report

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.model.train()
        loader = make_loader(
            self.train_data,
            cfg.batch_size,
            train=True,
            seed=cfg.seed,
            epoch=self.epoch,
            augment=cfg.augment,
            flip=cfg.flip,
        )
        loss_sum = correct = seen = 0.0
        ctx = self.ctx
        bar = _progress(loader, cfg.progress and ctx.main, f"epoch {self.epoch + 1}/{cfg.epochs}")
        for x_all, y_all in bar:
            self.hooks.before_step()
            x, y = (
                ctx.shard(x_all).contiguous(memory_format=MEMORY_FORMATS[cfg.channels_last]),
                ctx.shard(y_all),
            )
            with self.precision.autocast():
                logits = self.train_model(x)
            # DDP averages over processes: weighting by the chunk's share makes that the global batch's mean
            loss = self.criterion(logits.float(), y) * (y.numel() * ctx.world_size / y_all.numel())
            if ctx.world_size > 1:  # every process must see a non-finite loss on any of them
                total = loss.detach().clone()
                ctx.all_reduce_([total])
            else:
                total = loss
            if not total.item() <= MAX_LOSS:  # NaN, infinite or diverged
                raise NonFiniteLossError(total.item(), self.step)
            self.optimizer.zero_grad(set_to_none=True)
            # SD-Conv eq. 9: + λ_s L_s (weight decay is the optimiser's)
            self.precision.backward(loss + self.hooks.extra_loss())
            self.precision.step(self.optimizer)
            self.scheduler.step()
            self.hooks.after_step()
            self.step += 1
            loss_sum += loss.item() * y_all.numel() / ctx.world_size
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}")
        self.epoch += 1
        sums = torch.tensor([loss_sum, correct, seen], dtype=torch.float64)
        ctx.all_reduce_([sums])
        loss_sum, correct, seen = sums.tolist()
        return {"train_loss": loss_sum / seen, "train_top1": 100.0 * correct / seen}

    # ---------------------------------------------------------------- run
    def fit(self) -> dict:
        """Partition (PAD-Net), train, evaluate every epoch; returns the run's results."""
        cfg = self.cfg
        ctx = self.ctx
        if self.resume and epoch_checkpoints(self.run_dir):
            resume_newest(
                self.run_dir, self.load, self.ctx.main
            )  # refuses a changed configuration before writing
        ctx.barrier()  # every process has checked the run directory before process 0 writes to it
        log_path = self.run_dir / "metrics.jsonl"
        records = [r for r in _read_jsonl(log_path) if r["epoch"] <= self.epoch] if self.resume else []
        if ctx.main and [r["epoch"] for r in records] != list(range(1, self.epoch + 1)):
            print(
                f"padnet: warning: {log_path} holds damaged or missing records of epochs 1-{self.epoch}; "
                "the readable ones are kept and training goes on",
                file=sys.stderr,
            )
        if ctx.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
            write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
        self.hooks.maybe_partition()  # before the model is wrapped for data-parallel training
        self.train_model = data_parallel(self.model, ctx)
        if cfg.compile:  # the training forward and backward; evaluation stays eager
            self.train_model = compile_model(self.train_model)
        board = _TensorBoard(self.run_dir) if ctx.main else None
        test_loader = make_loader(self.test_data, 512, train=False)
        last = records[-1] if records else {}
        top1 = last.get("test_top1") if last.get("epoch") == self.epoch else None
        if not (isinstance(top1, (int, float)) and math.isfinite(top1)):
            # no trustworthy record of the resumed epoch (a damaged metrics.jsonl): measure it again
            top1 = evaluate(self.model, test_loader, ctx) if self.epoch else float("nan")
        try:
            while self.epoch < cfg.epochs:
                start = time.perf_counter()
                record = self.train_epoch()
                top1 = evaluate(self.model, test_loader, ctx)
                self.elapsed += time.perf_counter() - start
                record = {
                    "epoch": self.epoch,
                    "step": self.step,
                    **record,
                    "test_top1": top1,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "elapsed_s": round(self.elapsed, 2),
                    **self.hooks.log(),
                }
                if ctx.main:
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                    board.log(record, self.step)
                self.save()
        finally:
            if board is not None:
                board.close()
        results = {
            "model": cfg.model,
            "conv": cfg.conv,
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "top1": top1,
            "params": count_parameters(self.model),
            "flops": count_flops(self.model, self.train_data.input_shape),
            "train_seconds": round(self.elapsed, 2),
            "processes": self.ctx.world_size,
            "partition": self._partition_record(),
        }
        results.update(self.hooks.method.results())
        if ctx.main:
            save_checkpoint(self.run_dir / "model.safetensors", self.model, self._state())
            write_json(self.run_dir / "results.json", results)
        ctx.barrier()
        return results


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = parse_json(line)
        except ValueError:
            break  # a damaged tail (a killed write): the records before it are kept, the rest rewritten
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)):
            break
        out.append(record)
    return out
