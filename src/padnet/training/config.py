"""Run configuration: one dataclass, read from YAML and/or command-line flags, saved with each run."""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from padnet.adapter.config import CONV_METHODS, MAX_EPOCHS, MOE_METHODS, PadConfig, applies, canonical_method
from padnet.errors import ConfigError, check_choice, check_seed, deprecated, shown
from padnet.layers.registry import canonical_conv, effective_option
from padnet.models.registry import MODELS, STEMS
from padnet.training.data import DATASETS
from padnet.training.data.registry import check_image_options
from padnet.training.distributed import DEVICES
from padnet.training.precision import PRECISIONS


def _check_types(cfg, names: tuple[str, ...]) -> None:
    """ConfigError unless every field in `names` is a string and `data_root` is a path or None."""
    for name in names:
        if not isinstance(getattr(cfg, name), str):
            raise ConfigError(f"{name} must be a name, got {getattr(cfg, name)!r}")
    if cfg.data_root is not None and not isinstance(cfg.data_root, str):
        raise ConfigError(f"data_root must be a path, got {cfg.data_root!r}")


# The method options a run takes: fields of PadConfig, which alone defines their defaults, ranges and the methods
# they apply to. An image run builds its model from scratch (create_model), so the options that choose modules
# to convert or concern MoE are not among its keys; a fine-tuning run upcycles a pretrained encoder's FFNs.
METHOD_KEYS = (
    "num_kernels",
    "reduction",
    "temperature_start",
    "temperature_end",
    "temperature_anneal",
    "temperature_unit",
    "kappa",
    "granularity",
    "scale_mode",
    "mask_semantics",
    "partition",
    "partition_scope",
    "partition_iterations",
    "partition_batches",
    "partition_align",
    "partition_at",
    "partition_after",
    "check_scores",
    "sparsity",
    "pruning_iterations",
    "budget_weight",
    "threshold_lr",
    "mask_strategy",
)
MOE_KEYS = (
    "num_experts",
    "top_k",
    "noisy_gating",
    "aux_loss_weight",
    "kappa",
    "granularity",
    "scale_mode",
    "partition",
    "partition_scope",
    "partition_iterations",
    "partition_batches",
    "partition_at",
    "partition_after",
    "check_scores",
)


class MethodOptions:
    """What a run configuration holding a method's options does with them (mixed into
    [`TrainConfig`][padnet.training.config.TrainConfig] and [`FinetuneConfig`][padnet.training.config.FinetuneConfig]).

    The method is the field `METHOD_FIELD` (`PLAIN` for a model without padnet layers) and its options are
    `pad_options`: [`PadConfig`][padnet.adapter.config.PadConfig] fields by name (of `METHOD_KEYS`), whose
    defaults, ranges and applicability are PadConfig's. Options that do not apply to the method are kept but not
    used (a study's recipe serves several methods); [`check_applies`][padnet.training.config.MethodOptions.check_applies]
    refuses them where a user gave them.
    """

    METHOD_FIELD: ClassVar[str]
    PLAIN: ClassVar[str]
    METHOD_KEYS: ClassVar[tuple[str, ...]]
    METHODS: ClassVar[tuple[str, ...]]  # the PadConfig methods the run may use
    FROM_PRETRAINED: ClassVar[bool]  # init_from_pretrained of the run's PadConfig
    RENAMED: ClassVar[dict[str, tuple[str, dict]]] = {}  # old key -> (new key, old value -> new value)

    @property
    def method(self) -> str:
        return getattr(self, self.METHOD_FIELD)

    def _options_for(self, method: str) -> dict[str, Any]:
        return {k: v for k, v in self.pad_options.items() if applies(k, method)}

    def pad_config(self) -> PadConfig | None:
        """The [`PadConfig`][padnet.adapter.config.PadConfig] of this run's method with the options that apply to
        it (None for the plain model)."""
        if self.method == self.PLAIN:
            return None
        return PadConfig(
            method=self.method, init_from_pretrained=self.FROM_PRETRAINED, **self._options_for(self.method)
        )

    def value(self, key: str, method: str | None = None):
        """The method option `key` as a run of `method` (default: this run's) uses it: the option given, or
        PadConfig's default; a convolution's `num_kernels` and `reduction` as the layers get them (the type's
        default written out). None for the plain model or an option that does not apply to `method`."""
        method = self.method if method is None else method
        if method == self.PLAIN:
            return None
        method = canonical_method(method)
        if not applies(key, method):
            return None
        config = PadConfig(
            method=method, init_from_pretrained=self.FROM_PRETRAINED, **self._options_for(method)
        )
        value = config.value(key)
        if key in ("num_kernels", "reduction") and config.family == "conv":
            return effective_option(method, key, value)
        return value

    def effective(self) -> dict[str, Any]:
        """The configuration as flat keys with every method option at the value the run uses
        ([`value`][padnet.training.config.MethodOptions.value]; None where it does not apply): two configurations
        that train the same run have equal `effective()`, whether their options are written out or left to
        their defaults."""
        data = {k: v for k, v in self.to_dict().items() if k not in self.METHOD_KEYS}
        return {**data, **{key: self.value(key) for key in self.METHOD_KEYS}}

    def to_dict(self) -> dict[str, Any]:
        """The configuration as flat keys (what `config.yaml` holds and [`config_from_dict`][padnet.training.config.config_from_dict] reads)."""
        data = dataclasses.asdict(self)
        return {**{k: v for k, v in data.items() if k != "pad_options"}, **data["pad_options"]}

    def replace(self, **changes):
        """A copy with `changes` given as flat keys (run fields and method options alike), validated."""
        return config_from_dict(changes, self, "changes").validate()

    def applicable(self):
        """A copy that holds only the method options that apply to its method (what one run saves)."""
        copied = copy.deepcopy(self)
        copied.pad_options = {} if self.method == self.PLAIN else self._options_for(self.method)
        return copied

    def check_applies(self, given, methods=None) -> None:
        """ConfigError for a method option in `given` (keys a user set) that applies to none of `methods`
        (default: this run's method; the applicability of [`PadConfig`][padnet.adapter.config.PadConfig]), e.g.
        `sparsity` for PAD-Net or `kappa` for DY-Conv: such a value would be ignored without a word."""
        methods = [self.method] if methods is None else list(methods)
        runs = [canonical_method(m) for m in methods if m != self.PLAIN]
        for key in sorted(set(given) & set(self.pad_options)):
            if not any(applies(key, m) for m in runs):
                where = ", ".join(m for m in self.METHODS if applies(key, m))
                which = (
                    f"{self.METHOD_FIELD} {methods[0]!r}"
                    if len(methods) == 1
                    else f"any of {', '.join(methods)}"
                )
                raise ConfigError(f"{key} does not apply to {which} (it applies to {where})")

    def check_options(self) -> None:
        """ConfigError unless `pad_options` maps `METHOD_KEYS` to values that
        [`PadConfig`][padnet.adapter.config.PadConfig] accepts for a method they apply to; then the options that
        apply to this run's method are checked together (e.g. `top_k` against `num_experts`)."""
        options = self.pad_options
        if not isinstance(options, dict):
            raise ConfigError(f"pad_options must map option names to values, got {options!r}")
        unknown = sorted(map(shown, set(options) - set(self.METHOD_KEYS)))
        if unknown:
            raise ConfigError(f"unknown method option(s): {', '.join(unknown)}")
        for method in self.METHODS:  # each method with every option it takes: ranges and combinations
            PadConfig(method=method, init_from_pretrained=self.FROM_PRETRAINED, **self._options_for(method))


@dataclass
class TrainConfig(MethodOptions):
    """Everything that defines a training run (defaults: the quick Fashion-MNIST recipe).

    The method is `conv` (a convolution type of `padnet.layers.registry`; `"static"` for plain convolutions)
    and its options are `pad_options`: [`PadConfig`][padnet.adapter.config.PadConfig] fields by name (`kappa`,
    `granularity`, `temperature_anneal`, `sparsity`, ... of [`METHOD_KEYS`][padnet.training.config.METHOD_KEYS]),
    for layers trained from scratch. A YAML file or the command line gives them as top-level keys, as every
    other key ([`config_from_dict`][padnet.training.config.config_from_dict]); see
    [`MethodOptions`][padnet.training.config.MethodOptions].
    """

    METHOD_FIELD: ClassVar[str] = "conv"
    PLAIN: ClassVar[str] = "static"
    METHOD_KEYS: ClassVar[tuple[str, ...]] = METHOD_KEYS
    METHODS: ClassVar[tuple[str, ...]] = CONV_METHODS
    FROM_PRETRAINED: ClassVar[bool] = False
    RENAMED: ClassVar[dict[str, tuple[str, dict]]] = {"temperature_epochs": ("temperature_anneal", {})}

    # model
    model: str = "resnet10"
    conv: str = "static"
    width: float = 0.25
    stem: str = "small"
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
    # the method's options: PadConfig fields by name
    pad_options: dict[str, Any] = field(default_factory=dict)
    # run
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # "auto" (GPU LOCAL_RANK when CUDA is available), "cpu" or "cuda"
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast + gradient scaler, GPU only)
    compile: bool = False  # torch.compile the training forward and backward
    channels_last: bool = False  # the model and its inputs in channels_last memory format
    keep_checkpoints: int = 2
    progress: bool = True
    tags: list[str] = field(default_factory=list)

    def validate(self) -> TrainConfig:
        """Check ranges and names that can be checked without building anything; returns self."""

        _check_types(self, ("model", "conv", "stem", "dataset"))
        check_choice("model", self.model.lower(), MODELS)
        self.conv = canonical_conv(self.conv)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("stem", self.stem, STEMS)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "width": self.width}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        # upper bounds: a configuration read from a run directory must not ask for a huge allocation
        for name, high in (("width", 16), ("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH)):
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be at most {high}, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2: BatchNorm needs two samples per batch to train")
        for name in ("weight_decay", "momentum"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        if not 0 <= self.warmup_epochs <= MAX_EPOCHS:
            raise ConfigError(
                f"warmup_epochs must be in [0, {MAX_EPOCHS}] epochs, got {self.warmup_epochs!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.flip is not None and not isinstance(self.flip, bool):
            raise ConfigError(f"flip must be true, false or unset (the data's default), got {self.flip!r}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"train_subset must be >= 1, got {self.train_subset}")
        check_image_options(self.dataset, **self.data_options())
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be in [1, {MAX_THREADS}], got {self.threads}")
        check_seed(self.seed)
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        self.check_options()
        return self

    def data_options(self) -> dict[str, Any]:
        """The image options `padnet.training.data.load_dataset` takes (image size, channels, normalisation)."""
        return {"image_size": self.image_size, "channels": self.channels, "normalization": self.normalization}


@dataclass
class FinetuneConfig(MethodOptions):
    """Everything that defines one fine-tuning run of `padnet finetune` / `padnet moe` (PAD-Net
    appendix A; defaults: one Rotten Tomatoes run with MiniLM).

    The method is `method`: `"dense"` (the encoder as it is) or an MoE method of
    [`PadConfig`][padnet.adapter.config.PadConfig] (`"moe"`, `"pad-moe"`, `"moe-p"`) that upcycles its FFN
    blocks; its options (`num_experts`, `top_k`, `kappa`, `granularity`, `partition`, ... of
    [`MOE_KEYS`][padnet.training.config.MOE_KEYS]) are PadConfig fields held in `pad_options` (see
    [`MethodOptions`][padnet.training.config.MethodOptions]). PAD-MoE and MoE-P partition at the start of the
    second epoch (PadConfig's default for MoE, PAD-Net appendix A). The key `variant` of earlier releases
    (`dense`, `moe`, `pad`, `prune`) is read as `method` with a warning.
    """

    METHOD_FIELD: ClassVar[str] = "method"
    PLAIN: ClassVar[str] = "dense"
    METHOD_KEYS: ClassVar[tuple[str, ...]] = MOE_KEYS
    METHODS: ClassVar[tuple[str, ...]] = tuple(MOE_METHODS)
    FROM_PRETRAINED: ClassVar[bool] = True
    RENAMED: ClassVar[dict[str, tuple[str, dict]]] = {
        "variant": ("method", {"pad": "pad-moe", "prune": "moe-p"})
    }

    model: str = "minilm"
    task: str = "rotten_tomatoes"  # a GLUE task, rotten_tomatoes, or "text" (your files in data_root)
    data_root: str | None = None
    text_columns: list[str] = field(default_factory=lambda: ["text"])  # task "text": one or two text columns
    label_column: str = "label"  # task "text": the label column
    method: str = "dense"
    pad_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.1
    warmup_ratio: float = 0.1
    max_length: int = 128
    train_subset: int | None = None
    seed: int = 0
    precision: str = "fp32"  # fp32, bf16 or fp16 (GPU only): accelerate's mixed precision
    keep_checkpoints: int = 2  # epoch checkpoints kept in a run directory
    progress: bool = True

    def validate(self) -> FinetuneConfig:
        """Check names and ranges (ConfigError with a one-line message); returns self."""
        from padnet.training.data.text import TASK_NAMES

        check_choice("task", self.task, TASK_NAMES)
        check_choice("precision", self.precision, PRECISIONS)
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
        _check_types(self, ("model", "task", "method"))
        if self.method != self.PLAIN:
            self.method = canonical_method(self.method)
        check_choice("method", self.method, (self.PLAIN, *self.METHODS))
        self.check_options()
        for name in (
            "epochs",
            "batch_size",
            "max_length",
            "keep_checkpoints",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name, high in (("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH), ("max_length", MAX_TOKENS)):
            if getattr(self, name) > high:
                raise ConfigError(f"{name} must be at most {high}, got {getattr(self, name)!r}")
        check_seed(self.seed)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"train_subset must be >= 1, got {self.train_subset}")
        after = self.value("partition_after")
        if self.value("partition_at") == "epochs" and self.epochs <= after:
            raise ConfigError(
                f"method {self.method!r} partitions after {after:g} epoch(s): needs epochs > {after:g}"
            )
        return self

    def task_spec(self):
        """The task's description (labels, metrics, evaluation splits; read from the files for `"text"`)."""
        from padnet.training.data.text import task_spec

        return task_spec(self.task, self.data_root, tuple(self.text_columns), self.label_column)

    def load_split(self, split: str):
        """The examples of one split of the task."""
        from padnet.training.data.text import load_task

        return load_task(self.task, split, self.data_root, tuple(self.text_columns), self.label_column)


MAX_THREADS = 256  # more would exhaust the process's threads (OpenBLAS fails at about 10^5)
PATH_KEYS = ("data_root",)  # keys whose value is a folder
MAX_BATCH = 65_536  # examples per batch
MAX_TOKENS = 8_192  # tokens per sequence (max_length, block_size)


def _kind(cls, name: str) -> tuple[type, bool]:
    """The value type of field `name` of the dataclass `cls` (bool, int, float, list, dict or str) and whether
    it may be None, read from its annotation."""
    hint = typing.get_type_hints(cls)[name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    for kind in (bool, int, float, list, dict, str):
        if any(a is kind or typing.get_origin(a) is kind for a in args):
            return kind, type(None) in args
    return str, type(None) in args


def _coerce(name: str, value: Any, kind: type, optional: bool) -> Any:
    """Convert a YAML/CLI value to the field's type `kind` (None only where `optional`).

    Values of another kind are refused, not converted: `seed: true`, `augment: 7`, a mapping where a list or a
    name belongs. Command-line values arrive as text and are parsed."""
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} needs a value")
    bad = ConfigError(f"{name} has an invalid value {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be {'a path' if name in PATH_KEYS else 'a name'}, got {value!r}")
        return value
    if kind is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
            return list(value)
        if isinstance(value, str):
            return [value]
        raise bad
    if isinstance(value, (bool, dict, list, tuple)):
        raise bad
    try:
        if kind is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(value) if isinstance(value, int) else int(number)
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise bad from None


def config_keys(cls) -> dict[str, tuple[type, Any]]:
    """The flat keys of a configuration class (what YAML files and flags name): key -> (dataclass that defines
    it, its default). The method options of a [`MethodOptions`][padnet.training.config.MethodOptions] class are
    [`PadConfig`][padnet.adapter.config.PadConfig]'s fields."""
    keys = {f.name: (cls, f.default) for f in fields(cls) if f.name != "pad_options"}
    if issubclass(cls, MethodOptions):
        pad = {f.name: f.default for f in fields(PadConfig)}
        keys.update({key: (PadConfig, pad[key]) for key in cls.METHOD_KEYS})
    return keys


def renamed_keys(cls) -> dict[str, tuple[str, dict]]:
    """Old keys of a configuration class, read under their new names until 0.3.0: old -> (new, value map)."""
    return cls.RENAMED if issubclass(cls, MethodOptions) else {}


def config_from_dict(data: dict[str, Any], base=None, source: str = "config"):
    """A config from `base` (default: a default [`TrainConfig`][padnet.training.config.TrainConfig]; any config
    dataclass) updated with the flat keys of `data`, values coerced to the fields' types; unknown keys are
    errors. A renamed key ([`renamed_keys`][padnet.training.config.renamed_keys]) warns and is read under its
    new name (and an old value under its new one)."""
    base = base or TrainConfig()
    cls = type(base)
    keys, renamed = config_keys(cls), renamed_keys(cls)
    unknown = sorted(map(shown, set(data) - set(keys) - set(renamed)))
    if unknown:
        raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}")
    both = sorted(old for old, (new, _) in renamed.items() if old in data and new in data)
    if both:
        raise ConfigError(
            f"{both[0]} is the old name of {renamed[both[0]][0]}: give {renamed[both[0]][0]} only"
        )
    values = {f.name: copy.deepcopy(getattr(base, f.name)) for f in fields(cls)}
    for key, value in data.items():
        if key in renamed:
            new, value_map = renamed[key]
            deprecated(f"the key {key}", new)
            key, value = new, value_map.get(value, value) if isinstance(value, str) else value
        owner, _ = keys[key]
        value = _coerce(key, value, *_kind(owner, key))
        if owner is PadConfig and cls is not PadConfig:
            if value is None:  # None: the method's default
                values["pad_options"].pop(key, None)
            else:
                values["pad_options"][key] = value
        else:
            values[key] = value
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
