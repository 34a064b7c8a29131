"""Run configuration: one dataclass, read from YAML and/or command-line flags, saved with each run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from padnet.adapter.config import LIMITS, MAX_EPOCHS, PadConfig
from padnet.errors import ConfigError, check_choice, shown
from padnet.layers.modes import GRANULARITIES, SCALE_MODES, SEMANTICS
from padnet.layers.registry import (
    MAX_TEMPERATURE,
    OPTION_RANGES,
    accepted_options,
    canonical_conv,
    is_dynamic,
    is_partial,
    layer_options,
)
from padnet.layers.sdconv import STRATEGIES
from padnet.models.registry import MODELS, STEMS
from padnet.partitioning import METHODS, SCOPES, check_kappa
from padnet.training.data import DATASETS
from padnet.training.data.registry import check_image_options
from padnet.training.distributed import DEVICES


def _check_types(cfg, names: tuple[str, ...]) -> None:
    """ConfigError unless every field in `names` is a string and `data_root` is a path or None."""
    for name in names:
        if not isinstance(getattr(cfg, name), str):
            raise ConfigError(f"{name} must be a name, got {getattr(cfg, name)!r}")
    if cfg.data_root is not None and not isinstance(cfg.data_root, str):
        raise ConfigError(f"data_root must be a path, got {cfg.data_root!r}")


# run keys that only some conv types use (the rest apply to every run)
_APPLIES_TO = {
    **dict.fromkeys(
        (
            "kappa",
            "granularity",
            "scale_mode",
            "mask_semantics",
            "partition",
            "partition_batches",
            "partition_iterations",
            "partition_scope",
            "partition_align",
        ),
        "partial",
    ),
    **dict.fromkeys(
        ("sparsity", "pruning_iterations", "budget_weight", "threshold_lr", "mask_strategy"), "sdconv"
    ),
    **dict.fromkeys(
        ("num_kernels", "reduction", "temperature_start", "temperature_end", "temperature_epochs"), "dynamic"
    ),
}
_KIND_NAMES = {"partial": "PAD-Net forms", "sdconv": "sdconv", "dynamic": "dynamic convolutions"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults: the quick Fashion-MNIST recipe)."""

    # model
    model: str = "resnet10"
    conv: str = "static"
    width: float = 0.25
    stem: str = "small"
    num_kernels: int | None = None  # None: the conv type's default (DY-Conv/PAD 4, CondConv 8, ODConv 4)
    reduction: int | None = None  # None: the conv type's default (DY-Conv 4, ODConv/DCD 16)
    granularity: str = "shared"
    scale_mode: str = "constrained"
    mask_semantics: str = (
        "static"  # masked elements take the static parameters ("static") or are pruned ("zero")
    )
    # data
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    train_subset: int | None = None
    augment: bool = True
    flip: bool | None = (
        None  # left-right flip in the augmentation; None: the data's default (off for digits, arrays)
    )
    image_size: int | None = (
        None  # imagefolder: crop side (default 224); arrays: side of flat (N, H*W) images
    )
    channels: int | None = None  # imagefolder: 3 (RGB, default) or 1 (grey levels)
    normalization: str = (
        "auto"  # imagefolder: auto (ImageNet for 3 channels, the data's for 1), imagenet, data, none
    )
    # optimisation (PAD-Net appendix A: SGD 0.9, warm-up + cosine)
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    # dynamic layers: attention temperature anneals linearly from start to end
    temperature_start: float | None = (
        None  # None: the conv type's (30 for softmax routing; CondConv 1: no temperature)
    )
    temperature_end: float = 1.0
    temperature_epochs: float = 1.0
    # mode partition (PAD-Net eq. 5–9), run before training for conv="pad"
    kappa: float = 0.3
    partition: str = "imp"
    partition_batches: int = 10
    partition_iterations: int = 5
    partition_scope: str = "global"
    partition_align: int = 1  # filter granularity, local scope: keep a multiple of this many dynamic filters
    # SD-Conv (paper 002 eq. 8–9, Algorithm 1), for conv="sdconv"
    sparsity: float = 0.5  # target s: fraction of the k kernels' weights pruned
    pruning_iterations: int = 3  # n: the steps are cut into n + 1 phases with budgets s̄^(j/n)
    budget_weight: float = 0.01  # λ_s of the L0 budget loss
    threshold_lr: float = 0.01  # Adam step of each threshold τ, relative to its layer's initial weight RMS
    mask_strategy: str = "different"  # "different" masks per kernel or the "same" mask for the k
    # run
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # "auto" (GPU LOCAL_RANK when CUDA is available), "cpu" or "cuda"
    keep_checkpoints: int = 2
    progress: bool = True
    tags: list[str] = field(default_factory=list)

    def validate(self) -> TrainConfig:
        """Check ranges and names that can be checked without building anything; returns self."""

        _check_types(
            self,
            (
                "model",
                "conv",
                "stem",
                "dataset",
                "granularity",
                "scale_mode",
                "partition",
                "partition_scope",
                "mask_strategy",
                "mask_semantics",
            ),
        )
        check_choice("model", self.model.lower(), MODELS)
        self.conv = canonical_conv(self.conv)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("stem", self.stem, STEMS)
        check_kappa(self.kappa)
        check_choice("partition method", self.partition, METHODS)
        check_choice("partition scope", self.partition_scope, SCOPES)
        if self.partition_align > 1 and self.partition_scope != "local":
            raise ConfigError("partition_align > 1 needs partition_scope 'local'")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "width": self.width,
            "partition_batches": self.partition_batches,
            "partition_iterations": self.partition_iterations,
            "partition_align": self.partition_align,
            "temperature_end": self.temperature_end,
        }
        if self.temperature_start is not None:
            positive["temperature_start"] = self.temperature_start
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        # upper bounds: a configuration read from a run directory must not ask for a huge allocation
        for name, high in (
            ("width", 16),
            ("epochs", MAX_EPOCHS),
            ("batch_size", 65_536),
            ("partition_batches", LIMITS["partition_batches"]),
            ("partition_iterations", LIMITS["partition_iterations"]),
            ("partition_align", 4_096),
            ("pruning_iterations", LIMITS["pruning_iterations"]),
        ):
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be at most {high}, got {getattr(self, name)!r}")
        for name in ("temperature_start", "temperature_end"):
            if getattr(self, name) is not None and getattr(self, name) > MAX_TEMPERATURE:
                raise ConfigError(f"{name} must be at most {MAX_TEMPERATURE:g}, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2: BatchNorm needs two samples per batch to train")
        for name in ("weight_decay", "momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        for name in (
            "warmup_epochs",
            "temperature_epochs",
        ):  # epochs of a schedule, as many as a run may have
            value = getattr(self, name)
            if not 0 <= value <= MAX_EPOCHS:
                raise ConfigError(f"{name} must be in [0, {MAX_EPOCHS}] epochs, got {value!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name, (low, high) in OPTION_RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
        if self.flip is not None and not isinstance(self.flip, bool):
            raise ConfigError(f"flip must be true, false or unset (the data's default), got {self.flip!r}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"train_subset must be >= 1, got {self.train_subset}")
        check_image_options(self.dataset, **self.data_options())
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be in [1, {MAX_THREADS}], got {self.threads}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check_choice("mask granularity", self.granularity, GRANULARITIES)
        check_choice("scale-factor mode", self.scale_mode, SCALE_MODES)
        check_choice("mask semantics", self.mask_semantics, SEMANTICS)
        check_choice("device", self.device, DEVICES)
        layer_options(self.conv, num_kernels=self.num_kernels, reduction=self.reduction)
        if not (isinstance(self.sparsity, (int, float)) and 0 <= self.sparsity < 1):
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.pruning_iterations < 0:
            raise ConfigError(f"pruning_iterations must be >= 0, got {self.pruning_iterations}")
        if not (math.isfinite(self.budget_weight) and self.budget_weight >= 0):
            raise ConfigError(f"budget_weight must be >= 0, got {self.budget_weight!r}")
        if not (math.isfinite(self.threshold_lr) and self.threshold_lr > 0):
            raise ConfigError(f"threshold_lr must be a positive number, got {self.threshold_lr!r}")
        check_choice("mask strategy", self.mask_strategy, STRATEGIES)
        if (
            self.granularity != "shared"
            and is_partial(self.conv)
            and "granularity" not in accepted_options(self.conv)
        ):
            raise ConfigError(f"conv type {self.conv!r} has no mask granularity option (use 'shared')")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_applies(self, given) -> None:
        """ConfigError for a key in `given` (set by the user) that this run's conv type does not use, e.g.
        `sparsity` for PAD-Net or `kappa` for DY-Conv: such a value would be ignored without a word."""

        uses = {
            "partial": is_partial(self.conv),
            "sdconv": self.conv == "sdconv",
            "dynamic": is_dynamic(self.conv),
        }
        for key in sorted(given):
            kind = _APPLIES_TO.get(key)
            if kind is not None and not uses[kind]:
                raise ConfigError(
                    f"{key} does not apply to conv {self.conv!r} (it applies to {_KIND_NAMES[kind]})"
                )

    def data_options(self) -> dict[str, Any]:
        """The image options `padnet.training.data.load_dataset` takes (image size, channels, normalisation)."""
        return {"image_size": self.image_size, "channels": self.channels, "normalization": self.normalization}

    def pad_config(self):
        """The [`PadConfig`][padnet.adapter.config.PadConfig] of this run's method (None for a static model)."""

        if self.conv == "static":
            return None
        partial, sparse = is_partial(self.conv), self.conv == "sdconv"
        return PadConfig(
            method=self.conv,
            num_kernels=self.num_kernels,
            reduction=self.reduction,
            temperature_start=self.temperature_start,
            temperature_end=self.temperature_end,
            temperature_anneal=self.temperature_epochs,
            temperature_unit="epochs",
            kappa=self.kappa if partial else None,
            granularity=self.granularity if partial else None,
            scale_mode=self.scale_mode if partial else None,
            mask_semantics=self.mask_semantics if partial else None,
            partition_at="start" if partial else None,
            init_from_pretrained=False,  # built from scratch
            partition=self.partition,
            partition_scope=self.partition_scope,
            partition_iterations=self.partition_iterations,
            partition_batches=self.partition_batches,
            **(
                {
                    "sparsity": self.sparsity,
                    "pruning_iterations": self.pruning_iterations,
                    "budget_weight": self.budget_weight,
                    "threshold_lr": self.threshold_lr,
                    "mask_strategy": self.mask_strategy,
                }
                if sparse
                else {}
            ),
        )


@dataclass
class FinetuneConfig:
    """Everything that defines one fine-tuning run of `padnet finetune` / `padnet moe` (PAD-Net
    appendix A; defaults: one Rotten Tomatoes run with MiniLM)."""

    VARIANTS: ClassVar[tuple[str, ...]] = ("dense", "moe", "pad", "prune")

    model: str = "minilm"
    task: str = "rotten_tomatoes"  # a GLUE task, rotten_tomatoes, or "text" (your files in data_root)
    data_root: str | None = None
    text_columns: list[str] = field(default_factory=lambda: ["text"])  # task "text": one or two text columns
    label_column: str = "label"  # task "text": the label column
    variant: str = "dense"
    num_experts: int = 8
    top_k: int = 2
    granularity: str = "element"  # PAD-MoE / MoE-P masks: "element" or "neuron"
    kappa: float = 0.5  # dynamic ratio κ of PAD-MoE (kept fraction of MoE-P)
    partition: str = "imp"
    partition_batches: int = 10
    partition_iterations: int = 5
    aux_loss_weight: float = 0.01
    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    max_length: int = 128
    train_subset: int | None = None
    seed: int = 0
    keep_checkpoints: int = 2  # epoch checkpoints kept in a run directory
    progress: bool = True

    def validate(self) -> FinetuneConfig:
        """Check names and ranges (ConfigError with a one-line message); returns self."""
        from padnet.training.data.text import TASK_NAMES

        check_choice("task", self.task, TASK_NAMES)
        if self.task != "text" and (self.text_columns != ["text"] or self.label_column != "label"):
            raise ConfigError("text_columns and label_column apply to task 'text' only")
        if not (
            isinstance(self.text_columns, list)
            and 1 <= len(self.text_columns) <= 2
            and all(isinstance(c, str) and c for c in self.text_columns)
        ):
            raise ConfigError(f"text_columns must name one or two columns, got {self.text_columns!r}")
        if not (isinstance(self.label_column, str) and self.label_column):
            raise ConfigError(f"label_column must name a column, got {self.label_column!r}")
        check_choice("variant", self.variant, self.VARIANTS)
        check_choice("MoE mask granularity", self.granularity, ("element", "neuron"))
        check_choice("partition method", self.partition, METHODS)
        check_kappa(self.kappa)
        _check_types(self, ("model", "task", "variant", "granularity", "partition"))
        for name in (
            "num_experts",
            "top_k",
            "partition_batches",
            "partition_iterations",
            "epochs",
            "batch_size",
            "max_length",
            "keep_checkpoints",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"top_k {self.top_k} is larger than num_experts {self.num_experts}")
        for name, high in (
            ("num_experts", LIMITS["num_experts"]),
            ("epochs", MAX_EPOCHS),
            ("batch_size", 65_536),
            ("max_length", 8_192),
            ("partition_batches", LIMITS["partition_batches"]),
            ("partition_iterations", LIMITS["partition_iterations"]),
        ):
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be at most {high}, got {getattr(self, name)!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("weight_decay", "aux_loss_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"train_subset must be >= 1, got {self.train_subset}")
        if self.variant in ("pad", "prune") and self.epochs < 2:
            raise ConfigError(
                f"variant {self.variant!r} partitions at the start of the second epoch: needs epochs >= 2"
            )
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def task_spec(self):
        """The task's description (labels, metrics, evaluation splits; read from the files for `"text"`)."""
        from padnet.training.data.text import task_spec

        return task_spec(self.task, self.data_root, tuple(self.text_columns), self.label_column)

    def load_split(self, split: str):
        """The examples of one split of the task."""
        from padnet.training.data.text import load_task

        return load_task(self.task, split, self.data_root, tuple(self.text_columns), self.label_column)

    def pad_config(self):
        """The [`PadConfig`][padnet.adapter.config.PadConfig] of this run's variant (None for the dense model). PAD-MoE
        and MoE-P partition at the start of the second epoch (PAD-Net appendix A)."""

        if self.variant == "dense":
            return None
        partial = self.variant in ("pad", "prune")
        method = {"moe": "moe", "pad": "pad-moe", "prune": "moe-p"}[self.variant]
        return PadConfig(
            method=method,
            num_experts=self.num_experts,
            top_k=self.top_k,
            aux_loss_weight=self.aux_loss_weight,
            kappa=self.kappa if partial else None,
            granularity=self.granularity if partial else None,
            partition=self.partition,
            partition_iterations=self.partition_iterations,
            partition_batches=self.partition_batches,
            partition_at="epochs" if partial else None,
            partition_after=1 if partial else None,
        )


MAX_THREADS = 256  # more would exhaust the process's threads (OpenBLAS fails at about 10^5)
OPTIONAL_INTS = ("train_subset", "threads", "num_kernels", "reduction", "image_size", "channels")
OPTIONAL_FLOATS = ("temperature_start",)
OPTIONAL_BOOLS = ("flip",)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert a YAML/CLI value to the type of the field's default (None allowed for optional fields).

    Values of another kind are refused, not converted: `seed: true`, `augment: 7`, a mapping where a list or a
    name belongs. Command-line values arrive as text and are parsed."""
    if value is None:
        if default is None:
            return None
        raise ConfigError(f"{name} needs a value")
    kind = type(default) if default is not None else None
    bad = ConfigError(f"{name} has an invalid value {value!r}")
    if isinstance(default, bool) or name in OPTIONAL_BOOLS:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{name} must be a name, got {value!r}")
    if isinstance(value, bool) or isinstance(value, (dict, list, tuple)) and kind is not list:
        raise bad
    try:
        if kind is int or name in OPTIONAL_INTS:
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(value) if isinstance(value, int) else int(number)
        if kind is float or name in OPTIONAL_FLOATS:
            return float(value)
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if kind is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
            return list(value)
        if isinstance(value, str):
            return [value]
        raise bad
    return value


def config_from_dict(data: dict[str, Any], base=None, source: str = "config"):
    """A config from `base` (default: a default [`TrainConfig`][padnet.training.config.TrainConfig]; any config dataclass with
    `to_dict`) updated with `data`, values coerced to the fields' types; unknown keys are errors."""
    base = base or TrainConfig()
    cls = type(base)
    known = {f.name for f in fields(cls)}
    unknown = sorted(map(shown, set(data) - known))
    if unknown:
        raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}")
    values = base.to_dict()
    defaults = cls().to_dict()
    for key, value in data.items():
        values[key] = _coerce(key, value, defaults[key])
    return cls(**values)


MAX_YAML_BYTES = 1 << 20  # a configuration is a few hundred bytes
MAX_YAML_DEPTH = 16


class _KeyError(Exception):
    """A mapping key the strict loader refuses (reported with the file's name by [`parse_yaml`][padnet.training.config.parse_yaml])."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise _KeyError(f"a key at line {key_node.start_mark.line + 1} is not a name")
            if key in seen:
                raise _KeyError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str):
    """The value of a YAML document, read strictly: no aliases (`*name`; a small file could expand to
    gigabytes), at most 16 levels of nesting, no key twice. Raises ConfigError naming `source` and the line."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(
                    f"{source} uses a YAML alias (*{event.anchor}) at line "
                    f"{event.start_mark.line + 1}; write the value out"
                )
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(f"{source} nests deeper than {MAX_YAML_DEPTH} levels")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=_StrictLoader)
    except _KeyError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {source} is not valid YAML{where}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping strictly ([`parse_yaml`][padnet.training.config.parse_yaml]); ConfigError if missing, over 1 MiB, not UTF-8 text,
    malformed or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"config file {path} is larger than 1 MiB; a configuration is a few keys")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} ({exc.strerror or exc})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def dump_yaml(config) -> str:
    """The configuration as YAML text (what a run saves as `config.yaml`)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
