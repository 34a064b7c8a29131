"""Checkpoints in safetensors, written atomically, never unpickled.

One file holds the model state (`model/<key>`), the optimiser's tensor state (`optim/<param index>/<name>`;
a second optimiser, e.g. SD-Conv's thresholds', under `optim-<name>/`), the torch RNG
states (`rng/torch`, and `rng/cuda` once CUDA is in use), named generators (`rng/<name>`, e.g. a batch
sampler's) and, in the header metadata under `padnet`, a JSON document with the run configuration, progress
counters, optimiser hyper-parameters and the scheduler state. Epoch checkpoints of a run directory are
`checkpoint-epochNNNN.safetensors`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from padnet.errors import CheckpointError, ConfigError, NonFiniteStateError, first_line
from padnet.saving.fileio import atomic_path, parse_json, sweep_temporary_files
from padnet.saving.folder import load_state
from padnet.training.config import config_from_dict

FORMAT = "padnet-checkpoint-1"
CHECKPOINT_GLOB = "checkpoint-epoch*.safetensors"


def epoch_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run directory's epoch checkpoints, oldest first."""
    return sorted(Path(run_dir).glob(CHECKPOINT_GLOB))


T = TypeVar("T")


def resume_newest(run_dir: str | Path, load: Callable[[Path], T], warn: bool = True) -> T:
    """`load(path)` of the newest epoch checkpoint of `run_dir` that loads. Damaged newer ones are skipped with
    a `padnet: warning:` line naming them (when `warn`; the run goes on from the older one and writes them
    again).

    Raises:
        CheckpointError: no checkpoint loads; names the newest one's damage and the remedy.
        ConfigError: from `load` (e.g. the configuration differs from the run's), at once.
    """
    damaged: list[tuple[Path, CheckpointError]] = []
    for path in reversed(epoch_checkpoints(run_dir)):
        try:
            result = load(path)
        except CheckpointError as exc:
            damaged.append((path, exc))
            continue
        if damaged and warn:
            names = ", ".join(p.name for p, _ in damaged)
            print(
                f"padnet: warning: {names} cannot be resumed ({first_line(damaged[0][1])}); resuming from "
                f"{path.name} instead",
                file=sys.stderr,
            )
        return result
    raise CheckpointError(
        f"{first_line(damaged[0][1])}; no other checkpoint in {run_dir} loads: delete "
        f"{', '.join(p.name for p, _ in damaged)} to train the run from the start, or choose "
        "another --out"
    )


def changed_keys(saved: dict, current: dict, resumable) -> list[str]:
    """Configuration keys whose saved value differs from the current one, except the `resumable` keys (which
    do not change results) and keys the saved configuration lacks (added since it was written)."""
    return sorted(k for k, v in current.items() if k not in resumable and k in saved and saved[k] != v)


def saved_differences(saved: dict, cfg, resumable) -> list[str]:
    """Keys (other than `resumable`) whose value in the `saved` configuration (flat keys, read from disk)
    differs from `cfg` (a [`MethodOptions`][padnet.training.config.MethodOptions] configuration) in what the run
    does ([`effective`][padnet.training.config.MethodOptions.effective]); an unreadable saved configuration
    differs as a whole."""
    try:
        before = config_from_dict(saved, type(cfg)(), "the saved configuration").validate()
    except ConfigError as exc:
        return [f"everything (the saved configuration is invalid: {exc})"]
    return changed_keys(before.effective(), cfg.effective(), resumable)


def claim_run_dir(run_dir: str | Path, resume: bool, resumable: bool = True) -> None:
    """Refuse to start a new run in a directory that holds another run's checkpoints or results (ConfigError; the
    remedy names `--resume` for a `resumable` command); then delete the temporary files an interrupted write
    left there ([`padnet.saving.fileio.sweep_temporary_files`][padnet.saving.fileio.sweep_temporary_files])."""
    run_dir = Path(run_dir)
    if not resume and (epoch_checkpoints(run_dir) or (run_dir / "results.json").exists()):
        remedy = (
            "pass --resume to continue it or choose another --out" if resumable else "choose another --out"
        )
        raise ConfigError(f"run directory {run_dir} already holds a run; {remedy}")
    sweep_temporary_files(run_dir)


def save_epoch_checkpoint(run_dir: str | Path, epoch: int, keep: int, *args, **kwargs) -> Path:
    """`save_checkpoint` to `run_dir/checkpoint-epochNNNN.safetensors` (further arguments as there), then
    delete all but the newest `keep` epoch checkpoints."""
    path = save_checkpoint(Path(run_dir) / f"checkpoint-epoch{epoch:04d}.safetensors", *args, **kwargs)
    for old in epoch_checkpoints(run_dir)[: -max(1, keep)]:
        old.unlink()
    return path


def _keys(name: str) -> tuple[str, str]:
    """Tensor-name prefix and metadata key of the optimiser called `name` ("" for the main one)."""
    return (f"optim-{name}", f"optimizer-{name}") if name else ("optim", "optimizer")


def _check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """NonFiniteStateError naming the first tensor with a NaN or infinity and the newest checkpoint beside
    `path` (the resume point that stays)."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            earlier = [p for p in epoch_checkpoints(Path(path).parent) if p != Path(path)]
            raise NonFiniteStateError(key.removeprefix("model/"), earlier[-1] if earlier else None)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    state: dict,
    optimizer=None,
    scheduler=None,
    extra_optimizers: dict | None = None,
    generators: dict | None = None,
) -> Path:
    """Write a checkpoint to `path` atomically (temporary file + rename); returns the path.

    `state` must be JSON-serialisable (configuration, epoch, step, temperature, ...). A model or optimiser
    state holding NaN or infinity is never written (NonFiniteStateError names the tensor and the last good
    checkpoint, which stays the resume point).
    `extra_optimizers` maps names to further optimisers (restored by the same names); `generators` maps
    names to `torch.Generator` objects (e.g. a sampler's) whose states are saved as `rng/<name>`.
    """
    tensors = {f"model/{k}": v.detach().clone().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    tensors.update({f"rng/{name}": gen.get_state() for name, gen in (generators or {}).items()})
    meta = {"format": FORMAT, "state": state}
    named = {"": optimizer, **(extra_optimizers or {})}
    for name, opt in named.items():
        if opt is None:
            continue
        prefix, meta_key = _keys(name)
        osd = opt.state_dict()
        saved = meta[meta_key] = {"param_groups": osd["param_groups"], "scalars": {}, "tensors": []}
        for pid, pstate in osd["state"].items():
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"{prefix}/{pid}/{key}"] = value.detach().clone().contiguous().cpu()
                    saved["tensors"].append(f"{pid}/{key}")  # so that a missing one is noticed on resume
                else:
                    saved["scalars"][f"{pid}/{key}"] = value
    _check_finite(tensors, path)
    if scheduler is not None:
        meta["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"padnet": json.dumps(meta)})
    return Path(path)


def looks_pickled(path: str | Path) -> bool:
    """True when `path` starts like a `torch.save` / TorchScript file (a zip archive) or a raw pickle
    (protocol 2+). Only asked of files safetensors could not read. A safetensors file starts with its header's
    length (8 bytes, little-endian, so the first may be 0x80 like a pickle's) and then the header's `{`: such a
    file is damaged safetensors, not a pickle."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:] == b"{":
        return False
    return head.startswith((b"PK\x03\x04", b"\x80"))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a checkpoint; CheckpointError if missing, corrupt or not padnet's."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:  # one read: header metadata and tensors
            metadata = fh.metadata() or {}
            if "padnet" not in metadata:
                raise CheckpointError(
                    f"{path} is a safetensors file but not a padnet checkpoint (no padnet metadata)"
                )
            meta = parse_json(metadata["padnet"])
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        if looks_pickled(path):
            raise CheckpointError(
                f"{path} is a pickle or a torch.save / TorchScript archive, not safetensors; "
                "padnet never unpickles a file"
            ) from None
        reason = first_line(exc)
        raise CheckpointError(f"{path} is not a readable padnet checkpoint ({reason})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"{path} is not a padnet checkpoint (unexpected metadata)")
    return tensors, meta


def load_model_state(
    model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path = "checkpoint"
) -> None:
    """Load the `model/*` tensors of a checkpoint strictly ([`padnet.saving.folder.load_state`][padnet.saving.folder.load_state])."""
    load_state(model, {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}, path)


def restore_training(
    tensors: dict,
    meta: dict,
    optimizer=None,
    scheduler=None,
    extra_optimizers: dict | None = None,
    generators: dict | None = None,
    path: str | Path = "checkpoint",
) -> None:
    """Restore optimiser(s), scheduler, the torch RNG and named generators saved by [`save_checkpoint`][padnet.training.engine.checkpoint.save_checkpoint].

    What was read from disk is checked first: every optimiser tensor the checkpoint lists is there, each one
    belongs to a parameter and has its shape. CheckpointError (`cannot resume PATH: ...`) otherwise, or when
    torch refuses a state (an RNG state of the wrong size, parameter groups that do not fit)."""
    try:
        for name, opt in {"": optimizer, **(extra_optimizers or {})}.items():
            prefix, meta_key = _keys(name)
            saved = meta.get(meta_key)
            if opt is None or saved is None:
                continue
            params = [p for group in opt.param_groups for p in group["params"]]
            state: dict[int, dict] = {}
            for key, value in tensors.items():
                if key.startswith(prefix + "/"):
                    _, pid, field = key.split("/", 2)
                    state.setdefault(int(pid), {})[field] = value
            _check_optimizer_tensors(state, saved.get("tensors"), params, prefix)
            for pid, fields in state.items():  # moments of scalars saved 0-d (layers.modes.scalar_parameter)
                for field, value in fields.items():
                    if value.dim() == 0 and field != "step" and params[pid].shape == (1,):
                        fields[field] = value.reshape(1)
            for key, value in saved["scalars"].items():
                pid, field = key.split("/", 1)
                state.setdefault(int(pid), {})[field] = value
            opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        if scheduler is not None and "scheduler" in meta:
            scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
        if "rng/torch" in tensors:
            torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        for name, gen in (generators or {}).items():
            if f"rng/{name}" not in tensors:
                raise CheckpointError(f"the checkpoint holds no state of the generator {name!r}")
            gen.set_state(tensors[f"rng/{name}"])
    except (
        RuntimeError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        CheckpointError,
    ) as exc:
        reason = first_line(exc)
        raise CheckpointError(f"cannot resume {path}: {reason}") from None


def _check_optimizer_tensors(state: dict[int, dict], listed, params: list, prefix: str) -> None:
    """CheckpointError unless the optimiser tensors found are the ones the checkpoint lists (when it lists them)
    and each has the shape of its parameter (0-d values such as Adam's step excepted)."""
    found = sorted(f"{pid}/{field}" for pid, fields in state.items() for field in fields)
    if listed is not None:
        missing = sorted(set(map(str, listed)) - set(found))
        if missing:
            raise CheckpointError(f"the optimiser state is incomplete (no tensor {prefix}/{missing[0]})")
    for pid, fields in state.items():
        if not 0 <= pid < len(params):
            raise CheckpointError(f"the optimiser state names parameter {pid}, the model has {len(params)}")
        for field, value in fields.items():
            if value.dim() and value.shape != params[pid].shape:
                raise CheckpointError(
                    f"optimiser tensor {prefix}/{pid}/{field} has shape {tuple(value.shape)}, "
                    f"its parameter {tuple(params[pid].shape)}"
                )
