"""The padnet model folder, written by `PadModel.save_pretrained` / `padnet.save_pretrained` and read by
`PadModel.from_pretrained` / `padnet.load_pretrained` ([`padnet.adapter.model`][padnet.adapter.model]).

A folder holds:

- `padnet_config.json`: the format, the form (`"training"` or `"deployed"`), the
  [`PadConfig`][padnet.adapter.config.PadConfig] (null for a model saved without one: static, or built and deployed with
  padnet's layers), the converted module names, the fingerprints of the base model's tensors left out, the
  deployed layout (folded BatchNorm layers, each deployed convolution's layout), and, when every tensor is
  stored, the architecture: `{"padnet": create_model arguments}` or `{"transformers": model class}` with the
  Hugging Face `config.json` beside it;
- `padnet_model.safetensors`: the tensors; deployed convolutions in [`padnet.saving.conv_codec`][padnet.saving.conv_codec]'s compact
  encoding, PAD-MoE / MoE-P experts in [`padnet.saving.moe_codec`][padnet.saving.moe_codec]'s; or, from a
  compression written layer by layer, shards of them (`padnet_model-00001.safetensors`, …) listed in
  `padnet_model.safetensors.index.json` (`{"weight_map": {tensor name: shard file}}`, as transformers' index);
- the tokenizer's files, when one was given.

Everything read back is validated as command-line input is: the record's kinds, the architecture's sizes, the
tensors' names, shapes and values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from padnet.errors import CheckpointError, ConfigError, first_line
from padnet.layers.modes import PartialMode, widen_scalars
from padnet.layers.moe import MAX_EXPERTS
from padnet.layers.options import OPTION_RANGES
from padnet.models import create_model
from padnet.saving.fileio import atomic_path, parse_json, write_json

FORMAT = "padnet-adapter-1"
CONFIG_FILE = "padnet_config.json"
WEIGHTS_FILE = "padnet_model.safetensors"
WEIGHTS_INDEX = "padnet_model.safetensors.index.json"
HF_CONFIG_FILE = "config.json"
FORMS = ("training", "deployed")

# bounds on an architecture read from disk: it must not ask for a huge allocation
_RECIPE_INTS = {"num_classes": (1, 1_000_000), "in_chans": (1, 64), **OPTION_RANGES}
_RECIPE_WIDTH = 16


def fingerprint(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's dtype, shape and bytes (to tell an unchanged tensor from a changed one)."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{data.dtype}{tuple(data.shape)}".encode(), digest_size=12)
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def state_tensors(model: nn.Module, leave_out: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """`model`'s state dict as detached CPU copies, ready for safetensors (which refuses tensors sharing memory,
    as tied weights do: GPT-2's `lm_head.weight` is `transformer.wte.weight`), without the keys in `leave_out`
    (never copied)."""
    return {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
        if k not in leave_out
    }


def under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether state-dict `key` belongs to one of the modules named in `prefixes`."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------------------------------ architecture


def architecture(model: nn.Module) -> dict | None:
    """The recipe that rebuilds `model`'s architecture: `{"padnet": create_model arguments}` for a model from
    `padnet.create_model`, `{"transformers": class name}` for a Hugging Face model, else None."""
    recipe = getattr(model, "padnet_config", None)
    if isinstance(recipe, dict):
        return {"padnet": dict(recipe)}
    if hasattr(getattr(model, "config", None), "to_json_string"):
        return {"transformers": type(model).__name__}
    return None


def _check_recipe(recipe: dict, source: str) -> dict:
    """`create_model` arguments read from disk, checked for kinds and bounded sizes."""
    for key, value in recipe.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, (str, int, float, bool))):
            raise CheckpointError(f"{source}: architecture option {key!r} has a value of the wrong kind")
    for key in ("name", "conv", "stem"):
        if not isinstance(recipe.get(key), str):
            raise CheckpointError(f"{source}: the architecture has no {key} (a string)")
    for key, (low, high) in _RECIPE_INTS.items():
        value = recipe.get(key)
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        ):
            raise CheckpointError(
                f"{source}: architecture option {key} must be an integer in [{low}, {high}], got {value!r}"
            )
    width = recipe.get("width", 1.0)
    if not (
        isinstance(width, (int, float))
        and not isinstance(width, bool)
        and math.isfinite(width)
        and 0 < width <= _RECIPE_WIDTH
    ):
        raise CheckpointError(f"{source}: architecture width must be in (0, {_RECIPE_WIDTH}], got {width!r}")
    return recipe


def build_architecture(recipe: dict, directory: Path) -> nn.Module:
    """A freshly initialised model of the architecture `recipe` (from
    [`architecture`][padnet.saving.folder.architecture], read from the folder `directory`).

    Raises:
        CheckpointError: the architecture is malformed or unknown.
    """
    source = str(directory / CONFIG_FILE)
    if isinstance(recipe.get("padnet"), dict) and len(recipe) == 1:
        try:
            return create_model(**_check_recipe(recipe["padnet"], source))
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(f"{source}: the architecture cannot be built ({exc})") from None
    if isinstance(recipe.get("transformers"), str) and len(recipe) == 1:
        try:
            import transformers
        except ImportError:
            raise CheckpointError(
                f"{directory} holds a Hugging Face model: install padnet[nlp] to load it"
            ) from None
        cls = getattr(transformers, recipe["transformers"], None)
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise CheckpointError(f"{source}: {recipe['transformers']!r} is not a transformers model class")
        try:
            config = transformers.AutoConfig.from_pretrained(str(directory))
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{directory / HF_CONFIG_FILE} is not a readable Hugging Face config "
                f"({str(exc).splitlines()[0]})"
            ) from None
        if not isinstance(config, cls.config_class):
            raise CheckpointError(
                f"{directory / HF_CONFIG_FILE} is a {type(config).__name__}, not the config of {cls.__name__}"
            )
        _check_size(cls, config, directory)
        return _build(cls, config, directory)
    raise CheckpointError(f"{source}: malformed architecture record")


def _build(cls: type, config, directory: Path) -> nn.Module:
    """`cls(config)`; CheckpointError naming the config file when its values do not build the model."""
    try:
        return cls(config)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a config that does not fit
        raise CheckpointError(
            f"{directory / HF_CONFIG_FILE} does not build a {cls.__name__} ({first_line(exc)})"
        ) from None


def _check_size(cls: type, config, directory: Path) -> None:
    """Refuse, before anything is allocated, a Hugging Face config asking for far more parameters than the weights
    file holds: more than [`MAX_EXPERTS`][padnet.layers.moe.MAX_EXPERTS] times its values (what a compressed bank of that many experts,
    stored as one shared part, could need at most). The architecture is built on the meta device to count."""
    with torch.device("meta"):
        needed = sum(p.numel() for p in _build(cls, config, directory).parameters())
    stored = sum(stored_values(path) for path in weight_files(directory))
    if needed > stored * MAX_EXPERTS:
        raise CheckpointError(
            f"{directory / HF_CONFIG_FILE} describes a model of {needed:,} parameters; "
            f"{WEIGHTS_FILE} holds {stored:,} values"
        )


def stored_values(path: Path) -> int:
    """How many values the safetensors file `path` holds (read from its header); CheckpointError if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys())  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(exc)})") from None


# ----------------------------------------------------------------------------------------------- files


def write_folder(
    directory: str | Path, tensors: dict[str, torch.Tensor], record: dict, model: nn.Module, tokenizer=None
) -> Path:
    """Write a model folder, each file atomically, the record last (a folder with a record is complete).

    Args:
        record: The fields of `padnet_config.json` but the format.
        model: The saved model, whose Hugging Face config is written beside it when the record's architecture
            names a transformers class.

    Raises:
        ConfigError: `directory` is a file or cannot be created.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file, not a folder; save into a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create folder {directory} ({exc.strerror or exc})") from None
    write_weights(directory / WEIGHTS_FILE, tensors, record["form"])
    write_record(directory, record, model, tokenizer)
    return directory


def write_weights(path: Path, tensors: dict[str, torch.Tensor], form: str) -> None:
    """One weights file (or shard) of a folder in `form`, written atomically."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"padnet": json.dumps({"format": FORMAT, "form": form})})


def write_record(directory: Path, record: dict, model: nn.Module, tokenizer=None) -> None:
    """The files of a folder beside its weights, the record last (a folder with a record is complete):
    the Hugging Face `config.json` when the record's architecture names a transformers class, the tokenizer's
    files, `padnet_config.json`."""
    if (record.get("architecture") or {}).get("transformers"):
        with atomic_path(directory / HF_CONFIG_FILE) as tmp:
            Path(tmp).write_text(model.config.to_json_string())
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    write_json(directory / CONFIG_FILE, {"format": FORMAT, **record})


def read_record(directory: Path) -> dict:
    """`directory/padnet_config.json`, checked field by field.

    Raises:
        CheckpointError: the record is missing, unreadable or has a bad field.
    """
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not a padnet model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        record = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({str(exc).splitlines()[0]})") from None
    ok = (
        isinstance(record, dict)
        and record.get("format") == FORMAT
        and record.get("form") in FORMS
        and isinstance(record.get("config"), (dict, type(None)))
        and isinstance(record.get("converted"), list)
        and all(isinstance(n, str) for n in record["converted"])
        and isinstance(record.get("base"), dict)
        and all(isinstance(v, str) for v in record["base"].values())
        and isinstance(record.get("deploy"), dict)
        and isinstance(record.setdefault("architecture", None), (dict, type(None)))
    )
    if not ok:
        raise CheckpointError(f"{path} is not a padnet model record ({FORMAT})")
    deploy = record["deploy"]
    if deploy and not (
        isinstance(deploy.get("layers"), dict)
        and all(
            isinstance(deploy.get(k), list) and all(isinstance(n, str) for n in deploy[k])
            for k in ("folded_bn", "fused_convs")
        )
    ):
        raise CheckpointError(f"{path} has a malformed deployed layout")
    return record


def weight_files(directory: Path) -> list[Path]:
    """The weights file of a folder, or its shards in the order its index lists them.

    Raises:
        CheckpointError: neither exists, or an index that is malformed, names a file outside the folder, or
            lists a shard that is missing.
    """
    single, index = directory / WEIGHTS_FILE, directory / WEIGHTS_INDEX
    if single.is_file() or not index.is_file():
        if not single.is_file():
            raise CheckpointError(
                f"{directory} is not a padnet model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        return [single]
    try:
        weight_map = parse_json(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{index} is not a readable shard index ({first_line(exc)})") from None
    if not (
        isinstance(weight_map, dict)
        and weight_map
        and all(
            isinstance(f, str) and f == Path(f).name and f.endswith(".safetensors")
            for f in weight_map.values()
        )
    ):
        raise CheckpointError(f"{index} is not a shard index (a weight_map of tensor names to shard files)")
    files = [directory / name for name in dict.fromkeys(weight_map.values())]
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"{directory}: shard {path.name}, listed in {WEIGHTS_INDEX}, is missing")
    return files


def read_weights(directory: Path, form: str) -> dict[str, torch.Tensor]:
    """The tensors of the folder's weights file or shards ([`weight_files`][padnet.saving.folder.weight_files]),
    each checked to be written in `form`."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = parse_json((fh.metadata() or {}).get("padnet", "null"))
                tensors.update({key: fh.get_tensor(key) for key in fh.keys()})  # noqa: SIM118 - no __iter__
        except (SafetensorError, OSError, ValueError) as exc:
            reason = first_line(exc)
            raise CheckpointError(f"{path} is not a readable safetensors file ({reason})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("form") != form:
            raise CheckpointError(f"{path} was not written with the {form} form of {CONFIG_FILE}")
    return tensors


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `state` into `model` strictly. A one-line CheckpointError names the first missing, unexpected or
    mis-shaped tensor, a floating-point tensor stored as integers, one holding NaN or infinity, a BatchNorm
    running variance below zero, or a mode-partition mask holding a value other than 0 and 1."""
    own = model.state_dict()
    state = widen_scalars(state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        first = (missing or unexpected or shapes)[0]
        raise CheckpointError(
            f"{source} does not match this architecture: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shapes)} mis-shaped tensors (first: {first})"
        )
    for key, value in own.items():  # a float weight stored as integers, or holding NaN / inf, is not a model
        saved = state[key]
        if value.is_floating_point() and not saved.is_floating_point():
            raise CheckpointError(f"{source}: tensor {key} is stored as {saved.dtype}, not floating point")
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
            raise CheckpointError(f"{source}: tensor {key} holds NaN or infinite values")
        if key.endswith("running_var") and bool((saved < 0).any()):  # a variance: the outputs would be NaN
            raise CheckpointError(f"{source}: tensor {key} holds negative variances")
    for key in _mask_keys(model):  # a mask is 0 (static) or 1 (dynamic); 0.5 would mix both unseen
        if not bool(((state[key] == 0) | (state[key] == 1)).all()):
            raise CheckpointError(f"{source}: mask {key} holds values other than 0 and 1")
    model.load_state_dict(state, strict=True)


def _mask_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of `model`'s mode-partition masks."""
    return [
        f"{name}.mask" if name else "mask"
        for name, module in model.named_modules()
        if isinstance(module, PartialMode)
    ]
