"""PAD compression of an MoE causal LM one decoder layer at a time, read from and written to disk.

[`compress_layers`][padnet.training.nlp.layerwise.compress_layers] never holds more than one decoder layer:

1. The architecture is built on the meta device (no memory) from `config.json`; the safetensors shards are
   indexed by their headers, and every tensor the architecture needs is checked to be there with its shape before
   anything is computed.
2. The embeddings, final norm and head are read (`safetensors.safe_open`, tensor by tensor); the calibration and
   held-out blocks run up to the first decoder layer, whose inputs are kept.
3. For each decoder layer: its tensors are read from the shards; the original layer runs on the held-out stream
   of the original model; on the calibration stream it records what reaches each bank of experts and what the
   bank returns ([`record_banks`][padnet.adapter.moe_local.record_banks]); the banks are compressed against that
   record with the layer-local objective ([`padnet.adapter.moe_local`][padnet.adapter.moe_local]: Θ̄, IMP on the
   layer's reconstruction error, optionally the least-squares Θ̄); the compressed layer runs on the calibration
   stream and the compressed model's held-out stream, is written as one shard and freed (back to the meta
   device).
4. The head turns both held-out streams into the original's and the compressed model's perplexities.

Peak memory is one decoder layer (in float32) plus the activations of the calibration and held-out tokens,
independent of depth. The output is padnet's folder in shards (loads with `padnet.load_pretrained`) or, for a
Mixtral, the standard Qwen2-MoE folder ([`padnet.training.nlp.transformers_export`][padnet.training.nlp.transformers_export]),
each shard checked against padnet's layer before it is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm.auto import tqdm

from padnet.adapter.moe_convert import compress_experts, set_static
from padnet.adapter.moe_local import (
    partition_bank,
    record_banks,
    set_static_by_curvature,
    set_static_by_least_squares,
)
from padnet.errors import CheckpointError, ConfigError, first_line
from padnet.layers.experts import ExpertBank, find_expert_banks
from padnet.saving import folder as padnet_folder
from padnet.saving.fileio import atomic_path
from padnet.saving.moe_codec import encode_moe
from padnet.training.allocator import return_freed_memory
from padnet.training.nlp.finetune import quiet_transformers
from padnet.training.nlp.lm_metrics import NextTokenScores

HF_INDEX = "model.safetensors.index.json"
# checkpoints that store each expert as its own linear maps (Mixtral's and Qwen-MoE's published layout, which
# transformers stacks into a bank when it loads them): the names of the gate, up and down maps of expert e
PER_EXPERT_NAMES = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))
RENAMED = ((".mlp.", ".block_sparse_moe."),)  # (module name in transformers, the name older checkpoints use)
# a stored tensor is read in slices of rows of at most this many elements
READ_SLICE_ELEMENTS = 1 << 24


def check_parameter_count(folder: Path, needed: int, stored: int) -> None:
    """CheckpointError when `folder`'s config.json asks for more parameters (`needed`) than its weight files hold
    (`stored` values): the rest would be initialised at random, or fill the memory."""
    if needed > stored:
        raise CheckpointError(
            f"{folder / 'config.json'} describes a model of {needed:,} parameters; its weight files hold "
            f"{stored:,} values"
        )


def model_fails(exc: BaseException) -> CheckpointError:
    """The one-line error of an original model that fails on the calibration text: its config.json does not fit
    its weights, or the blocks are longer than its positions."""
    return CheckpointError(
        f"the original model fails on the calibration text ({first_line(exc)}); check its config.json and "
        "--block-size"
    )


class CheckpointShards:
    """The tensors of a folder's safetensors weights (one file, or shards listed in `model.safetensors.index.json`),
    located by their headers and read one at a time.

    Raises (at construction) CheckpointError for a folder without safetensors weights, a malformed index, a shard
    the index lists that is missing, or an unreadable header.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / HF_INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{index} is not a readable shard index ({first_line(exc)})") from None
            if not all(isinstance(f, str) and f == Path(f).name for f in files):
                raise CheckpointError(f"{index} names shard files outside {self.folder}")
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(
                    f"{self.folder} holds no safetensors weights (*.safetensors); padnet never unpickles *.bin files"
                )
        self.location: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        for name in files:
            path = self.folder / name
            if not path.is_file():
                raise CheckpointError(f"{self.folder}: shard {name}, listed in {HF_INDEX}, is missing")
            try:
                with safe_open(str(path), framework="pt") as fh:
                    for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                        piece = fh.get_slice(key)
                        self.location[key] = path
                        self.shapes[key] = tuple(piece.get_shape())
                        self.dtypes[key] = piece.get_dtype()
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(
                    f"{path} is not a readable safetensors file ({first_line(exc)})"
                ) from None

    def _stacked(self, key: str) -> tuple[list[list[str]], tuple[int, ...]] | None:
        """Where a bank tensor (`….gate_up_proj` (E, 2F, H) or `….down_proj` (E, H, F)) missing under its own name
        is stored expert by expert: (per expert, the stored names to concatenate along dim 0; the stacked shape),
        or None."""
        bank, _, part = key.rpartition(".")
        if part not in ("gate_up_proj", "down_proj"):
            return None
        for base in self._names(bank):
            for gate, up, down in PER_EXPERT_NAMES:
                names = [gate, up] if part == "gate_up_proj" else [down]
                experts = []
                while all(f"{base}.{len(experts)}.{n}.weight" in self.shapes for n in names):
                    experts.append([f"{base}.{len(experts)}.{n}.weight" for n in names])
                if experts:
                    rows = sum(self.shapes[n][0] for n in experts[0])
                    return experts, (len(experts), rows, self.shapes[experts[0][0]][1])
        return None

    def _names(self, key: str) -> list[str]:
        """`key` and the names older checkpoints give it ([`RENAMED`][padnet.training.nlp.layerwise.RENAMED])."""
        names = [key]
        for new, old in RENAMED:
            names += [n.replace(new, old) for n in names if new in n]
        return names

    def source(self, key: str) -> tuple[list[list[str]], tuple[int, ...]] | None:
        """How the model's tensor `key` is stored: (names to read, grouped to concatenate; its shape), or None."""
        for name in self._names(key):
            if name in self.shapes:
                return [[name]], self.shapes[name]
        return self._stacked(key)

    def check(self, model: nn.Module, tied: set[str]) -> None:
        """CheckpointError unless every tensor of `model`'s state (built on the meta device) is stored with its
        shape, checked before anything is read: a config asking for more parameters than the files hold
        ([`check_parameter_count`][padnet.training.nlp.layerwise.check_parameter_count]), a missing tensor (the
        `tied` names, a head tied to the embeddings, may be absent), a tensor of another shape."""
        stored = sum(math.prod(shape) for shape in self.shapes.values())
        check_parameter_count(self.folder, sum(p.numel() for p in model.parameters()), stored)
        found = {key: self.source(key) for key in model.state_dict()}
        missing = [key for key, where in found.items() if where is None and key not in tied]
        if missing:
            raise CheckpointError(f"{self.folder} does not hold tensor {missing[0]} ({len(missing)} missing)")
        for key, tensor in model.state_dict().items():
            if found[key] is None:
                continue
            names, shape = found[key]
            if len(names) == 1 and shape != tuple(tensor.shape):
                raise CheckpointError(
                    f"{self.location[names[0][0]]}: tensor {names[0][0]} has shape {list(shape)}; the model's "
                    f"config.json needs {list(tensor.shape)}"
                )
            if len(names) > 1:
                want = tuple(tensor.shape)
                pieces = {self.shapes[n] for group in names for n in group}
                expected = {(want[1] // len(names[0]), want[2])}
                if shape != want or pieces != expected:
                    raise CheckpointError(
                        f"{self.location[names[0][0]]}: the experts stored as {names[0][0]} … have shapes "
                        f"{sorted(list(p) for p in pieces)}; the model's config.json needs {len(names)} of "
                        f"{list(next(iter(expected)))} per map for {key} {list(want)}"
                    )

    def dtype(self, prefix: str) -> torch.dtype:
        """The dtype of the first floating-point tensor stored under `prefix`."""
        names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
        for key, dtype in self.dtypes.items():
            if any(key.startswith(p) for p in self._names(prefix)) and dtype in names:
                return names[dtype]
        return torch.float32

    @torch.no_grad()
    def load(self, module: nn.Module, prefix: str = "", skip: str | None = None) -> None:
        """Materialise `module` (on the meta device) on the CPU in float32 and fill its state with the tensors
        stored under `prefix` (those under `skip` left out; experts stored one by one are stacked). Each stored
        tensor is read alone and copied into its place, so loading costs the module in float32 plus one stored
        tensor. CheckpointError for a tensor holding NaN or infinity."""
        module.float()  # on the meta device: no memory, so the CPU copy is allocated once, in float32
        module.to_empty(device="cpu")
        for name, target in module.state_dict(keep_vars=True).items():
            key = prefix + name
            found = None if skip is not None and key.startswith(skip) else self.source(key)
            if found is None:
                continue
            groups = found[0]
            for index, group in enumerate(groups):
                place = target[index] if len(groups) > 1 else target  # this expert's slice of a stacked bank
                row = 0
                for stored in group:  # concatenated along dim 0 (an expert's gate and up projections)
                    row = self._read_into(stored, place, row)

    def _read_into(self, stored: str, place: torch.Tensor, row: int) -> int:
        """Copy the stored tensor `stored` into `place` from row `row` on (the whole of `place` for a scalar) and
        return the row after it. A large tensor is read in slices of rows, each with its shard opened for it
        alone (a shard's mapped pages count as resident memory while it is open), so reading costs one slice.
        CheckpointError for values that are NaN or infinite."""
        path, shape = self.location[stored], self.shapes[stored]
        if not shape:
            place.copy_(self._slice(path, stored, None))
            return row
        step = max(1, READ_SLICE_ELEMENTS // max(1, math.prod(shape[1:])))
        for start in range(0, shape[0], step):
            stop = min(start + step, shape[0])
            place[row + start : row + stop].copy_(self._slice(path, stored, slice(start, stop)))
        return row + shape[0]

    @staticmethod
    def _slice(path: Path, stored: str, rows: slice | None) -> torch.Tensor:
        with safe_open(str(path), framework="pt") as handle:
            tensor = handle.get_tensor(stored) if rows is None else handle.get_slice(stored)[rows]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {stored} holds NaN or infinite values")
        return tensor


class _Reached(Exception):
    """Raised by [`_Entry`][padnet.training.nlp.layerwise._Entry] once it has what reached the first layer."""


class _Entry(nn.Module):
    """Stands in for the decoder layers: keeps what reaches the first, then stops the forward pass."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[torch.Tensor, dict]] = []

    def forward(self, hidden: torch.Tensor, *args, **kwargs):
        self.seen.append((hidden, kwargs))
        raise _Reached


class _Exit(nn.Module):
    """Stands in for the decoder layers: returns the hidden states of the last one, set before each call."""

    def __init__(self):
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.hidden


def _layer_list(model: nn.Module, banks: list[str]) -> str:
    """The name of the `nn.ModuleList` of decoder layers: the one whose layers hold the banks of experts."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name and all(b.startswith(name + ".") for b in banks):
            return name
    raise ConfigError(f"{type(model).__name__} keeps its banks of experts outside one list of decoder layers")


class LayerStreams:
    """The model as its decoder layers see it: the skeleton (meta device) with its outer modules read, the
    list of decoder layers, and the hidden states reaching the first layer for each batch."""

    def __init__(self, skeleton: nn.Module, shards: CheckpointShards, banks: list[str]):
        self.model, self.shards = skeleton, shards
        self.path = _layer_list(skeleton, banks)
        parent, _, leaf = self.path.rpartition(".")
        self._parent, self._leaf = skeleton.get_submodule(parent) if parent else skeleton, leaf
        self.layers: nn.ModuleList = skeleton.get_submodule(self.path)
        setattr(self._parent, self._leaf, nn.ModuleList())
        shards.load(skeleton, skip=self.path + ".")
        self._rebuild_unsaved_buffers()
        if getattr(skeleton.config, "tie_word_embeddings", False) and hasattr(skeleton, "tie_weights"):
            skeleton.tie_weights()
        skeleton.eval()

    def _rebuild_unsaved_buffers(self) -> None:
        """Modules outside the layers with buffers the checkpoint does not store (rotary frequencies) are built
        again from the config, on the CPU."""
        for name, module in list(self.model.named_modules()):
            if name and module._non_persistent_buffers_set:
                parent, _, leaf = name.rpartition(".")
                with torch.device("cpu"):
                    rebuilt = type(module)(self.model.config)
                setattr(self.model.get_submodule(parent) if parent else self.model, leaf, rebuilt.float())

    @torch.no_grad()
    def entries(self, blocks: list[torch.Tensor]) -> list[tuple[torch.Tensor, dict]]:
        """(hidden states reaching the first decoder layer, the keyword arguments it gets) per block of token
        ids (b, T)."""
        entry = _Entry()
        setattr(self._parent, self._leaf, nn.ModuleList([entry]))
        try:
            for ids in blocks:
                with contextlib.suppress(_Reached):
                    self.model(input_ids=ids, use_cache=False)
        finally:
            setattr(self._parent, self._leaf, nn.ModuleList())
        return entry.seen

    @torch.no_grad()
    def scores(self, blocks: list[torch.Tensor], hidden: list[torch.Tensor]) -> dict:
        """Perplexity and next-token accuracy of `blocks` whose last decoder layer returned `hidden`
        ([`NextTokenScores`][padnet.training.nlp.lm_metrics.NextTokenScores], as
        [`heldout_scores`][padnet.training.nlp.compress.heldout_scores] measures a whole model)."""
        exit_ = _Exit()
        setattr(self._parent, self._leaf, nn.ModuleList([exit_]))
        scores = NextTokenScores()
        try:
            for ids, h in zip(blocks, hidden):
                exit_.hidden = h
                output = self.model(input_ids=ids, labels=ids, use_cache=False)
                scores.add(output.loss, output.logits, ids)
        finally:
            setattr(self._parent, self._leaf, nn.ModuleList())
        return scores.to_dict()


def compress_bank(bank: ExpertBank, data, cfg, pad_config, mask: dict | None = None) -> float:
    """Compress one bank of experts against its calibration record `data`
    ([`BankCalibration`][padnet.adapter.moe_local.BankCalibration]) as `cfg` (a
    [`CompressConfig`][padnet.training.nlp.compress.CompressConfig]) says: Θ̄ (`static`), then the masks — `mask`
    ({"experts": …, "expert_bias": …} mask tensors) when given, all static for `merge`, else layer-local IMP —
    then the least-squares Θ̄ when `static="lsq"`. Returns the dynamic ratio."""
    moe = bank.moe
    if cfg.static == "load":
        load = data.load(moe.num_experts)
        set_static(bank, load, load)
    elif cfg.static == "fisher":
        set_static_by_curvature(bank, data)
    pairs = {suffix: mode for suffix, mode, _ in moe.mode_pairs()}
    if mask is not None or cfg.method == "merge":
        with torch.no_grad():
            for suffix, mode in pairs.items():
                mode.mask.copy_(mask[suffix] if mask is not None else torch.zeros_like(mode.mask))
        ratio = moe.dynamic_ratio()
    else:
        ratio = partition_bank(
            bank, data, pad_config.value("kappa"), pad_config.value("partition_iterations")
        )
    if cfg.static == "lsq":
        set_static_by_least_squares(bank, data)
    return ratio


def _move(hidden: list[torch.Tensor], layer: nn.Module, kwargs: list[dict]) -> list[torch.Tensor]:
    """Every batch's hidden states through `layer` (a decoder layer returns a tensor, or a tuple starting with
    it)."""
    out = []
    for h, kw in zip(hidden, kwargs):
        result = layer(h, **kw)
        out.append(result[0] if isinstance(result, tuple) else result)
    return out


def compress_layers(
    shards: CheckpointShards,
    skeleton: nn.Module,
    calibration: list[torch.Tensor],
    heldout: list[torch.Tensor],
    cfg,
    write: Callable[[str, str, nn.Module], None] | None = None,
    masks: dict[str, dict] | None = None,
) -> dict:
    """The layer-by-layer pipeline (see the module docstring) on a checked skeleton (meta device) and its shards.

    Args:
        shards: the checkpoint's tensors ([`CheckpointShards`][padnet.training.nlp.layerwise.CheckpointShards]).
        skeleton: the causal LM built on the meta device from the folder's config.
        calibration: batches of token ids (b, T) that calibrate.
        heldout: batches of token ids (b, T) that measure perplexity.
        cfg: a validated [`CompressConfig`][padnet.training.nlp.compress.CompressConfig].
        write: `write(shard, prefix, module)` stores the modules outside the decoder layers (the first shard) and
            then each compressed decoder layer before it is freed; `shard` is "00001-of-000NN" and so on, `prefix`
            the module's name in the model.
        masks: per bank name, the masks to use instead of a partition (`{"experts": …, "expert_bias": …}`).

    Returns:
        The measurements: held-out perplexity and next-token accuracy of the original and compressed model
        (`original`, `compressed`), the
        dynamic ratio reached per bank, the compressed banks' bytes in the checkpoint's dtype, the seconds per
        layer.
    """
    banks = find_expert_banks(skeleton)
    pad_config = cfg.pad_config()
    mode = "prune" if cfg.method == "moe-p" else "pad"
    streams = LayerStreams(skeleton, shards, banks)
    count = len(streams.layers) + 1
    if write is not None:
        write(f"{1:05d}-of-{count:05d}", "", skeleton)
    try:
        entered = streams.entries(calibration + heldout)
    except (RuntimeError, IndexError, ValueError) as exc:
        raise model_fails(exc) from None
    kwargs = [kw for _, kw in entered]
    calib_kw, held_kw = kwargs[: len(calibration)], kwargs[len(calibration) :]
    calib = [h for h, _ in entered[: len(calibration)]]
    original = compressed = [h for h, _ in entered[len(calibration) :]]
    ratios, seconds, size = {}, [], 0
    dtype = shards.dtype(banks[0])
    for index in tqdm(range(len(streams.layers)), desc="layers", disable=not cfg.progress):
        started = time.perf_counter()
        layer, prefix = streams.layers[index], f"{streams.path}.{index}."
        shards.load(layer, prefix)
        layer.eval()
        local = [name[len(prefix) :] for name in banks if name.startswith(prefix)]
        try:
            with torch.no_grad():
                original = _move(original, layer, held_kw)
                with record_banks(layer, local) as recorded:
                    _move(calib, layer, calib_kw)
        except (RuntimeError, IndexError, ValueError) as exc:
            raise model_fails(exc) from None
        if local:
            compress_experts(layer, mode, pad_config.value("granularity"), names=local)
            for name in local:
                data = recorded.get(name)
                if data is None:
                    raise ConfigError(f"the calibration batches routed no token to {prefix}{name}")
                given = None if masks is None else masks[prefix + name]
                ratios[prefix + name] = compress_bank(layer.get_submodule(name), data, cfg, pad_config, given)
        size += bank_bytes(layer, dtype)
        with torch.no_grad():
            calib = _move(calib, layer, calib_kw)
            compressed = _move(compressed, layer, held_kw)
        if write is not None:
            write(f"{index + 2:05d}-of-{count:05d}", prefix, layer)
        streams.layers[index] = layer.to("meta")
        del layer, recorded
        return_freed_memory()  # what the layer's compression freed, so that memory does not grow with depth
        seconds.append(time.perf_counter() - started)
    return {
        "original": streams.scores(heldout, original),
        "compressed": streams.scores(heldout, compressed),
        "dynamic_ratio": ratios,
        "bytes": size,
        "seconds_per_layer": seconds,
    }


def _stored(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copies, floating-point ones in `dtype` (the checkpoint's); ConfigError for one that
    holds NaN or infinity (never written)."""
    stored = {}
    for key, value in tensors.items():
        value = (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(
                f"the compressed model holds NaN or infinite values in {key}; nothing was written"
            )
        stored[key] = value
    return stored


def bank_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    """Bytes the PAD-compressed banks of experts of `module` take in padnet's encoding, floating-point values
    counted in `dtype`."""
    return sum(
        t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
        for bank in module.modules()
        if isinstance(bank, ExpertBank)
        for t in encode_moe(bank).values()
    )


class StagedFolder:
    """A model folder written under a temporary name beside `directory` and renamed into place by
    [`finish`][padnet.training.nlp.layerwise.StagedFolder.finish]; [`abort`][padnet.training.nlp.layerwise.StagedFolder.abort]
    deletes it, so `directory` is either whole or absent. ConfigError for a `directory` that is not empty."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        if self.directory.exists() and (not self.directory.is_dir() or any(self.directory.iterdir())):
            raise ConfigError(f"{self.directory} is not an empty folder: choose another")
        self._created = not self.directory.parent.exists()  # removed again by abort()
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=self.directory.parent))
        self.weight_map: dict[str, str] = {}

    def index(self, name: str) -> None:
        """Write the shard index `name` of the shards written so far."""
        with atomic_path(self.path / name) as tmp:
            Path(tmp).write_text(json.dumps({"metadata": {}, "weight_map": self.weight_map}, indent=1))

    def finish(self) -> Path:
        if self.directory.exists():
            self.directory.rmdir()  # empty (checked at the start)
        self.path.rename(self.directory)
        return self.directory

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._created:
            with contextlib.suppress(OSError):  # not empty: something else was written there
                self.directory.parent.rmdir()


class PadnetShards(StagedFolder):
    """padnet's model folder ([`padnet.saving.folder`][padnet.saving.folder]) written one decoder layer at a
    time: the training form of the PAD-compressed banks in padnet's MoE encoding, every shard in `dtype`."""

    def __init__(self, directory: Path, dtype: torch.dtype):
        super().__init__(directory)
        self.dtype = dtype

    def write(self, shard: str, prefix: str, module: nn.Module) -> None:
        tensors = {prefix + k: v for k, v in _stored(encode_moe(module), self.dtype).items()}
        padnet_folder.write_weights(self.path / f"padnet_model-{shard}.safetensors", tensors, "training")
        self.weight_map.update(dict.fromkeys(tensors, f"padnet_model-{shard}.safetensors"))

    def close(self, record: dict, skeleton: nn.Module, tokenizer) -> Path:
        self.index(padnet_folder.WEIGHTS_INDEX)
        padnet_folder.write_record(self.path, record, skeleton, tokenizer)
        return self.finish()


class Qwen2MoeShards(StagedFolder):
    """The standard Qwen2-MoE form of a PAD-compressed Mixtral
    ([`padnet.training.nlp.transformers_export`][padnet.training.nlp.transformers_export]) written one decoder layer
    at a time, with routed experts of `routed` neurons and a shared expert of `shared`. Every layer's sparse
    block is checked against padnet's on random hidden states before its shard is written."""

    def __init__(self, directory: Path, dtype: torch.dtype, config):
        super().__init__(directory)
        self.dtype, self.config = dtype, config

    def write(self, shard: str, prefix: str, module: nn.Module) -> None:
        from padnet.training.nlp.transformers_export import check_biases, shared_expert_tensors

        tensors = {k: v for k, v in module.state_dict().items() if not k.startswith("mlp.")}
        mlp = getattr(module, "mlp", None)
        if mlp is not None:
            moe = mlp.experts.deployed().moe
            check_biases(moe, int(prefix.rstrip(".").rpartition(".")[2]))
            block = shared_expert_tensors(
                "mlp.",
                mlp.gate.weight,
                moe,
                self.config.moe_intermediate_size,
                self.config.shared_expert_intermediate_size,
            )
            self._check(mlp, block)
            tensors.update(block)
        tensors = {prefix + k: v for k, v in _stored(tensors, self.dtype).items()}
        name = f"model-{shard}.safetensors"
        from safetensors.torch import save_file

        with atomic_path(self.path / name) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(tensors, name))

    @torch.no_grad()
    def _check(self, mlp: nn.Module, block: dict[str, torch.Tensor]) -> None:
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

        from padnet.training.nlp.transformers_export import EXPORT_TOLERANCE

        with quiet_transformers():  # a block built alone has no experts implementation chosen: the default
            target = Qwen2MoeSparseMoeBlock(self.config).float()
        target.load_state_dict({k[len("mlp.") :]: v.float() for k, v in block.items()})
        x = torch.randn(1, 64, self.config.hidden_size, generator=torch.Generator().manual_seed(0))
        reference = mlp(x)
        with quiet_transformers():
            output = target(x)
        error = float((output - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
        if not error <= EXPORT_TOLERANCE:
            raise ConfigError(
                f"the Qwen2-MoE form of a layer differs from padnet's by {error:.1e} (relative): not written"
            )

    def close(self, tokenizer) -> Path:
        self.index(HF_INDEX)
        self.config.save_pretrained(str(self.path))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(self.path))
        return self.finish()
