"""Sharded training with FSDP2 (`torch.distributed.fsdp.fully_shard`) and its checkpoints
(`torch.distributed.checkpoint`), for runs launched by `torchrun`.

[`shard`][padnet.training.sharding.shard] makes every block that holds padnet's dynamic layers an FSDP unit;
masks and BatchNorm statistics stay whole on every process and mode partition sums its scores over them, so every
process gets the same masks. [`save_sharded`][padnet.training.sharding.save_sharded] /
[`load_sharded`][padnet.training.sharding.load_sharded] resume bit-identically;
[`save_pretrained`][padnet.training.sharding.save_pretrained] writes the gathered model on process 0 for one
process to load. Data-parallel training (DDP) and joining the process group are in
[`padnet.training.distributed`][padnet.training.distributed].
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import gc
import json
import os
import shutil
import sys
import warnings
import weakref
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from padnet.adapter.model import PadModel
from padnet.errors import CheckpointError, ConfigError, check_module, first_line
from padnet.layers.conv_base import DynamicConvBase
from padnet.layers.experts import ExpertBank
from padnet.layers.moe import MoEFeedForward, reset_aux_losses
from padnet.parallel import Context, current
from padnet.saving.folder import under
from padnet.training.distributed import global_batchnorm

DYNAMIC_LAYERS = (DynamicConvBase, MoEFeedForward, ExpertBank)
MARKER_FILE = "padnet_sharded.json"  # written last into a sharded checkpoint's folder: its format and step
MARKER_FORMAT = "padnet-sharded"
# the meta-device skeleton of every model `shard` sharded: what `unsharded` fills with the gathered weights
_SKELETONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _drop_dtensor_caches() -> None:
    """Empty DTensor's sharding-propagation caches (FSDP2's parameters are DTensors). They hold the device mesh,
    and through it the process group; the C++ one is freed by static destructors after the interpreter has
    gone, which aborted 1 in 4 FSDP runs at exit ("terminate called without an active exception", SIGABRT)."""
    if "torch.distributed.tensor" not in sys.modules:
        return
    try:  # a private function (torch 2.13): other versions may lack it
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache

        _clear_sharding_prop_cache()
    except (ImportError, AttributeError):
        return
    gc.collect()


def _is_sharded(model: nn.Module) -> bool:
    """Whether `fully_shard` ran on `model` or one of its modules (FSDP2 is imported only when used: importing it
    takes most of a second)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and any(isinstance(m, fsdp.FSDPModule) for m in model.modules())


def _root(model: nn.Module) -> nn.Module:
    """The module that becomes the FSDP root: a PadModel's `base_model` (the wrapper holds no tensors of its own
    and stays a plain PadModel), else `model`."""
    return model.base_model if isinstance(model, PadModel) else model


def _checked_context(ctx: Context | None, entry: str) -> Context:
    """`ctx` (default: the initialised process group's), checked against the process group.

    Raises:
        ConfigError: a context or `WORLD_SIZE` of several processes without an initialised process group, or a
            context whose world size is not the group's.
    """
    if ctx is None:
        ctx = current()
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if ctx.world_size == 1 and launched > 1:
            ctx = Context(int(os.environ.get("RANK", "0")), launched)
    if ctx.world_size == 1:
        return ctx
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(
            f"{entry}: {ctx.world_size} processes but no process group is initialised; call "
            "padnet.training.distributed.init() first (under torchrun)"
        )
    if dist.get_world_size() != ctx.world_size:
        raise ConfigError(
            f"{entry}: the context has {ctx.world_size} processes, the process group {dist.get_world_size()}"
        )
    return ctx


def shard_units(model: nn.Module, blocks=None) -> list[str]:
    """Names (in the FSDP root, [`shard`][padnet.training.sharding.shard]'s `_root`) of the modules that become
    FSDP units of their own, outermost first.

    Args:
        model: a model or a PadModel.
        blocks: None: the classes a Hugging Face model names in `_no_split_modules` (its transformer layers,
            each holding one MoE layer), else the parent of every padnet dynamic layer (a ResNet's residual
            block); a tuple of module classes; or a function `(name, module) -> bool`.

    Returns:
        The unit names; a unit inside another is left out, and so is a unit whose parameters are also used
        outside it (tied weights, e.g. a masked LM's word embeddings), which stays in the root.
    """
    root = _root(model)
    no_split = set(getattr(root, "_no_split_modules", None) or ())
    candidates = []
    for name, module in root.named_modules():
        if not name:
            continue
        if callable(blocks) and not isinstance(blocks, type):
            chosen = bool(blocks(name, module))
        elif blocks is not None:
            chosen = isinstance(module, tuple(blocks) if not isinstance(blocks, type) else blocks)
        elif no_split:
            chosen = type(module).__name__ in no_split
        else:
            chosen = False
            if isinstance(module, DYNAMIC_LAYERS):
                name = name.rpartition(".")[0] or name  # its block; the layer itself when it sits in the root
                chosen = True
        if chosen and name not in candidates:
            candidates.append(name)
    everywhere = list(root.named_parameters(remove_duplicate=False))
    units: list[str] = []
    for name in candidates:
        if under(name, units):
            continue
        own = {id(p) for p in root.get_submodule(name).parameters()}
        if own and not any(id(p) in own and not under(key, [name]) for key, p in everywhere):
            units.append(name)
    return units


def _skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device (no memory): its parameters and buffers are meta tensors, its
    training state (a PadModel's `training_state`) None."""
    reset_aux_losses(model)  # a forward's load-balancing losses are autograd results deepcopy refuses
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    if isinstance(model, PadModel):
        memo[id(model.training_state)] = None
    return copy.deepcopy(model, memo)


def shard(
    model: nn.Module, ctx: Context | None = None, blocks=None, batchnorm: bool = True, **fsdp
) -> nn.Module:
    """Shard `model` over the processes with FSDP2 (`torch.distributed.fsdp.fully_shard`): each block becomes a
    unit whose parameters are all-gathered for its forward and backward only, then the root.

    The units are the blocks that hold padnet's dynamic layers ([`shard_units`][padnet.training.sharding.shard_units]):
    a ResNet's residual blocks, a transformer's layers. A [`PadModel`][padnet.adapter.model.PadModel] stays a
    PadModel: its `base_model` is the FSDP root, so `partition`, `start_training` and the step hooks work as in
    one process (mode partition all-gathers each block for its forward and sums the mask scores over the
    processes). Masks and BatchNorm statistics are buffers, which FSDP keeps whole on every process. Every
    parameter becomes a `DTensor` sharded along dim 0: build the optimiser after this call. Each process trains on
    its own chunk of each global batch ([`Context.shard`][padnet.parallel.Context.shard]); FSDP averages the
    gradients as DDP does.

    Args:
        model: a model or a PadModel, the same on every process (same seed), on `ctx.device`.
        ctx: this process's context (default: the initialised process group's, [`init`][padnet.training.distributed.init]).
        blocks: which modules become units (see [`shard_units`][padnet.training.sharding.shard_units]).
        batchnorm: compute BatchNorm statistics over all processes ([`global_batchnorm`][padnet.training.distributed.global_batchnorm]),
            as data-parallel training needs.
        **fsdp: keyword arguments of every `fully_shard` call (`mesh`, `reshard_after_forward`, `mp_policy`,
            `offload_policy`).

    Returns:
        `model` itself, sharded in place; unchanged in one process.

    Raises:
        ConfigError: `model` is not an `nn.Module`, is wrapped in DDP or already sharded; several processes
            without an initialised process group.
    """
    check_module(model, "shard")
    ctx = _checked_context(ctx, "shard")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ConfigError("shard takes the model itself, not its DistributedDataParallel wrapper")
    if _is_sharded(model):
        raise ConfigError("the model is already sharded (fully_shard ran on it)")
    if ctx.world_size == 1:
        return model
    from torch.distributed.fsdp import fully_shard

    if not _SKELETONS:  # the first model sharded in this process (the caches fill from here on)
        atexit.register(_drop_dtensor_caches)
    _SKELETONS[model] = _skeleton(model)  # before BatchNorm changes: what one process builds and loads
    if batchnorm:
        root = global_batchnorm(_root(model), ctx)
        if isinstance(model, PadModel):
            model.base_model = root
        else:
            model = root
    root = _root(model)
    for name in shard_units(model, blocks):
        fully_shard(root.get_submodule(name), **fsdp)
    fully_shard(root, **fsdp)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded `model`, on the CPU in process 0 (keys as `model.state_dict()`'s).

    A collective: call it on every process. In one process, the model's own state dict (detached CPU copies).

    Returns:
        {name: tensor} on process 0 (parameters gathered from their shards, buffers); {} on the others.
    """
    check_module(model, "full_state_dict")
    if not _is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded(model: nn.Module) -> nn.Module | None:
    """A plain copy of a sharded `model` on the CPU in process 0: the same class (a PadModel stays a PadModel,
    with its config, partition report and base-model fingerprints), the gathered parameters and process 0's
    buffers (masks, BatchNorm statistics, plain BatchNorm layers as before sharding). Save it with
    `padnet.save_pretrained` or evaluate it in one process. A collective: call it on every process.

    Returns:
        The copy on process 0, None on the others; `model` itself when it was not sharded.

    Raises:
        ConfigError: `model` was sharded, but not by [`shard`][padnet.training.sharding.shard].
    """
    check_module(model, "unsharded")
    if not _is_sharded(model):
        return model
    if model not in _SKELETONS:
        raise ConfigError("unsharded takes a model sharded by padnet.training.sharding.shard")
    state = full_state_dict(model)
    if dist.get_rank() != 0:
        return None
    plain = copy.deepcopy(_SKELETONS[model])
    live = dict(model.named_buffers(remove_duplicate=False))
    made: dict[int, torch.Tensor] = {}
    for kind in ("_parameters", "_buffers"):
        for prefix, module in plain.named_modules(remove_duplicate=False):
            for leaf, old in list(getattr(module, kind).items()):
                if old is None:
                    continue
                key = f"{prefix}.{leaf}" if prefix else leaf
                if id(old) not in made:
                    if kind == "_parameters":
                        made[id(old)] = nn.Parameter(state[key].clone(), requires_grad=old.requires_grad)
                    else:
                        made[id(old)] = live[key].detach().cpu().clone()
                getattr(module, kind)[leaf] = made[id(old)]
    if isinstance(model, PadModel):
        plain.partition_report = model.partition_report
    return plain.train(model.training)


def save_pretrained(model: nn.Module, directory: str | Path, **options) -> Path:
    """`padnet.save_pretrained` of a sharded `model`: process 0 writes the folder of its
    [`unsharded`][padnet.training.sharding.unsharded] copy, which one process loads with
    `padnet.load_pretrained` / `PadModel.from_pretrained`. A collective: call it on every process.

    Args:
        model: the sharded model (or PadModel); in one process, any model `padnet.save_pretrained` takes.
        directory: the folder.
        **options: `form`, `full`, `tokenizer` of `padnet.save_pretrained`.

    Returns:
        The directory, on every process once it is written.

    Raises:
        ConfigError: as `padnet.save_pretrained`, on every process.
    """
    from padnet.adapter.model import save_pretrained as save_folder

    plain = unsharded(model)
    failure = None
    if plain is not None:
        try:
            save_folder(plain, directory, **options)
        except ConfigError as exc:
            failure = str(exc)
    failure = _agree(failure)
    if failure is not None:
        raise ConfigError(failure)
    return Path(directory)


def _agree(message: str | None) -> str | None:
    """Process 0's `message` on every process (a barrier): what went wrong where only process 0 acts."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _one_process_quiet():
    """A context in which `torch.distributed.checkpoint` does not warn that it runs in one process (as asked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
        )
        yield


def _optimizers(optimizer) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    if isinstance(optimizer, torch.optim.Optimizer):
        return [optimizer]
    optimizers = list(optimizer)
    if not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
        raise ConfigError("optimizer must be a torch.optim.Optimizer, a list of them, or None")
    return optimizers


def _rng_state(generators: dict[str, torch.Generator] | None) -> dict[str, torch.Tensor]:
    """This process's random number generators' states: `torch`, `cuda` (once CUDA is in use), and every
    named generator (as the trainer's checkpoints store them)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    states.update({name: gen.get_state() for name, gen in (generators or {}).items()})
    return states


def _state(model, optimizers) -> dict:
    """The state dict `torch.distributed.checkpoint` saves and loads: model (shards and buffers) and optimisers."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizers:
        model_state, optim_state = get_state_dict(model, optimizers)
        return {"model": model_state, "optim": optim_state}
    return {"model": get_model_state_dict(model)}


def save_sharded(
    model: nn.Module,
    optimizer,
    directory: str | Path,
    step: int | None = None,
    generators: dict[str, torch.Generator] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a sharded checkpoint with `torch.distributed.checkpoint`: every process writes its shards of the
    parameters and the optimiser state, once each; masks and BatchNorm statistics (buffers, equal everywhere)
    once; and each process's random number generator states. A collective: call it on every process.

    The checkpoint is written into `DIRECTORY.incomplete`, its marker file (`padnet_sharded.json`: step, world
    size, `extra`) last; after every process finished, process 0 renames it to `directory` (replacing an older
    checkpoint there). A crash leaves no half checkpoint under the final name. It loads with
    [`load_sharded`][padnet.training.sharding.load_sharded] on any number of processes (bit-identical
    training resumes with the same number).

    Args:
        model: the sharded model (or PadModel) of [`shard`][padnet.training.sharding.shard]; in one process, any model.
        optimizer: its optimiser, a list of optimisers (e.g. SD-Conv's threshold optimiser too), or None.
        directory: the checkpoint's folder (must be on a file system every process sees).
        step: the optimiser steps done (default: a PadModel's `training_state.step`, else None).
        generators: named `torch.Generator`s to save with this process's global ones (e.g. a sampler's).
        extra: JSON-serialisable values to keep with the checkpoint (returned by `load_sharded`).

    Returns:
        The directory, on every process once the checkpoint is in place.

    Raises:
        ConfigError: `directory` is a file, or a folder with other content than a sharded checkpoint (not
            overwritten); a folder that cannot be written; `extra` that JSON cannot hold; a bad `optimizer`.
    """
    check_module(model, "save_sharded")
    optimizers = _optimizers(optimizer)
    final = Path(directory)
    partial, old = final.with_name(final.name + ".incomplete"), final.with_name(final.name + ".old")
    if step is None and isinstance(model, PadModel) and model.training_state is not None:
        step = model.training_state.step
    ctx = current()
    try:
        marker = json.dumps(
            {
                "format": MARKER_FORMAT,
                "version": 1,
                "world_size": ctx.world_size,
                "step": step,
                "extra": extra or {},
            }
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"save_sharded's extra must be JSON-serialisable ({first_line(exc)})") from None
    if final.exists() and not (
        final.is_dir() and (not any(final.iterdir()) or (final / MARKER_FILE).is_file())
    ):
        raise ConfigError(f"{final} holds something other than a sharded checkpoint; save elsewhere")
    failure = None
    if ctx.main:
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        except OSError as exc:
            failure = f"cannot create folder {partial} ({exc.strerror or exc})"
    failure = _agree(failure)
    if failure is not None:
        raise ConfigError(failure)
    import torch.distributed.checkpoint as dcp  # here: importing it takes most of a second

    state = {**_state(model, optimizers), "rng": {f"rank{ctx.rank}": _rng_state(generators)}}
    with _one_process_quiet():
        dcp.save(state, checkpoint_id=partial, no_dist=not dist.is_initialized())
    if ctx.main:
        try:
            (partial / MARKER_FILE).write_text(marker)
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
            partial.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            failure = f"cannot put the checkpoint in place at {final} ({exc.strerror or exc})"
    failure = _agree(failure)
    if failure is not None:
        raise ConfigError(failure)
    return final


def read_marker(directory: str | Path) -> dict:
    """The marker of a sharded checkpoint (`padnet_sharded.json`: `step`, `world_size`, `extra`).

    Raises:
        CheckpointError: `directory` is missing, or not a sharded checkpoint (no marker or no `.metadata`, as a
            folder left by a crash), or its marker is damaged.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no sharded checkpoint there (not a folder)")
    if not (directory / MARKER_FILE).is_file() or not (directory / ".metadata").is_file():
        raise CheckpointError(
            f"{directory} is not a complete sharded checkpoint (no {MARKER_FILE} or .metadata)"
        )
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory / MARKER_FILE} is unreadable ({first_line(exc)})") from None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise CheckpointError(f"{directory / MARKER_FILE} is not a padnet sharded-checkpoint marker")
    return marker


def load_sharded(
    model: nn.Module, optimizer, directory: str | Path, generators: dict[str, torch.Generator] | None = None
) -> dict:
    """Load a checkpoint of [`save_sharded`][padnet.training.sharding.save_sharded] into `model` (sharded the
    same way as when saved, on any number of processes) and `optimizer` (built for it, possibly without state
    yet), and restore this process's random number generator states (saved by a run of as many processes). A
    collective: call it on every process. Resume a PadModel's training with
    `pad.start_training(..., step=loaded["step"])`.

    Args:
        model, optimizer, generators: as given to `save_sharded`.
        directory: the checkpoint's folder.

    Returns:
        `{"step": the step saved, "world_size": the processes that saved it, "extra": the values saved}`.

    Raises:
        CheckpointError: `directory` is not a complete sharded checkpoint; its tensors do not fit `model` or
            `optimizer` (naming the first mismatch torch reports).
        ConfigError: a bad `optimizer`.
    """
    check_module(model, "load_sharded")
    optimizers = _optimizers(optimizer)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    marker = read_marker(directory)
    ctx = current()
    state = _state(model, optimizers)
    rng = _rng_state(generators)
    saved = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
    own = {name: t for name, t in rng.items() if f"rng.rank{ctx.rank}.{name}" in saved}
    if own:
        state["rng"] = {f"rank{ctx.rank}": own}
    try:
        with _one_process_quiet():
            dcp.load(state, checkpoint_id=directory, no_dist=not dist.is_initialized())
        set_state_dict(
            model,
            optimizers,
            model_state_dict=state["model"],
            optim_state_dict=state.get("optim", {}),
        )
    except (CheckpointException, RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{directory} does not fit this model or optimiser ({first_line(exc)})"
        ) from None
    if "torch" in own:
        torch.set_rng_state(own["torch"])
    if "cuda" in own and torch.cuda.is_available():
        torch.cuda.set_rng_state(own["cuda"])
    for name, gen in (generators or {}).items():
        if name in own:
            gen.set_state(own[name])
    return {
        "step": marker.get("step"),
        "world_size": marker.get("world_size"),
        "extra": marker.get("extra", {}),
    }
