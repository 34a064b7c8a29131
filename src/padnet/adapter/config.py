"""`PadConfig`: one validated, JSON-serialisable description of a padnet method applied to a model.

Its keys are the vocabulary of the YAML run configurations and of the command line (`kappa`, `granularity`,
`scale_mode`, `mask_semantics`, `partition`, `partition_scope`, `mask_strategy`, ...), so one name
means one thing everywhere. [`padnet.get_pad_model`][padnet.adapter.model.get_pad_model] takes it; [`padnet.adapter.methods.Method`][padnet.adapter.methods.Method] reads the
training-time part of it (temperature schedule, moment of partition, SD-Conv budget, load-balancing weight).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from padnet.errors import ConfigError, check_choice
from padnet.layers.modes import SCALE_MODES
from padnet.layers.moe import MAX_EXPERTS
from padnet.layers.options import OPTION_RANGES
from padnet.layers.registry import (
    ALIASES,
    MAX_TEMPERATURE,
    accepted_options,
    start_temperature,
)
from padnet.partitioning import DEFAULT_KAPPA, MAX_ALIGN, SCOPES, check_kappa
from padnet.partitioning import METHODS as PARTITIONS

# method -> (family, what the family's converter calls it)
CONV_METHODS = ("dy", "condconv", "odconv", "dcd", "pad", "pad-condconv", "pad-odconv", "pad-dcd", "sdconv")
MOE_METHODS = {"moe": "dynamic", "pad-moe": "pad", "moe-p": "prune"}
METHODS = (*CONV_METHODS, *MOE_METHODS)
# the convolution types' aliases (padnet.layers.registry.ALIASES) and the MoE methods'
METHOD_ALIASES = {**ALIASES, "padmoe": "pad-moe", "moep": "moe-p", "prune": "moe-p"}
PARTIAL_METHODS = ("pad", "pad-condconv", "pad-odconv", "pad-dcd", "pad-moe", "moe-p")
PARTITION_AT = ("start", "steps", "epochs", "manual")
TIME_UNITS = ("steps", "epochs")
CONV_GRANULARITIES = ("shared", "kernel", "filter")
MOE_GRANULARITIES = ("element", "neuron")
# upper bounds: a configuration read from a file (a model folder, a run) must not ask for a huge allocation or
# an endless schedule; an amount of training time is at most MAX_EPOCHS epochs or MAX_STEPS steps
MAX_EPOCHS = 100_000
MAX_STEPS = 1_000_000_000
LIMITS = {
    **{name: high for name, (_, high) in OPTION_RANGES.items()},
    "num_experts": MAX_EXPERTS,
    "partition_iterations": 1_000,
    "partition_batches": 10_000,
    "partition_align": MAX_ALIGN,
    "pruning_iterations": 1_000,
}


def _layers_taking(keyword: str) -> tuple[str, ...]:
    """The convolution methods whose layers take the keyword option `keyword` (their `OPTIONS`)."""
    return tuple(m for m in CONV_METHODS if keyword in accepted_options(m))


# options that only some methods take: name -> methods. A value other than None for another method is an error.
# The only table of which option applies to which method; the convolutions' layer options read it from the
# layers themselves (their OPTIONS), so a layer that has no granularity (PAD-DCD) is never given one silently.
_APPLIES = {
    "num_kernels": _layers_taking("num_kernels"),
    "reduction": _layers_taking("reduction"),
    "temperature_start": _layers_taking("temperature"),
    "temperature_end": _layers_taking("temperature"),
    "temperature_anneal": _layers_taking("temperature"),
    "temperature_unit": _layers_taking("temperature"),
    "kappa": PARTIAL_METHODS,
    "partition": PARTIAL_METHODS,
    "partition_scope": PARTIAL_METHODS,
    "partition_iterations": PARTIAL_METHODS,
    "check_scores": PARTIAL_METHODS,
    "granularity": (*_layers_taking("granularity"), "pad-moe", "moe-p"),
    "partition_at": PARTIAL_METHODS,
    "partition_after": PARTIAL_METHODS,
    "partition_align": tuple(m for m in PARTIAL_METHODS if m in CONV_METHODS),
    "scale_mode": (*_layers_taking("scale_mode"), "pad-moe"),
    "mask_semantics": _layers_taking("mask_semantics"),
    "sparsity": ("sdconv",),
    "pruning_iterations": ("sdconv",),
    "budget_weight": ("sdconv",),
    "threshold_lr": ("sdconv",),
    "mask_strategy": _layers_taking("mask_strategy"),
    "num_experts": tuple(MOE_METHODS),
    "top_k": tuple(MOE_METHODS),
    "noisy_gating": tuple(MOE_METHODS),
    "ffn_patterns": tuple(MOE_METHODS),
    "aux_loss_weight": tuple(MOE_METHODS),
}
# defaults filled in by `resolved()` for the methods an option applies to
_DEFAULTS = {
    "scale_mode": "constrained",
    "mask_semantics": "static",
    "sparsity": 0.5,
    "pruning_iterations": 3,
    "budget_weight": 0.01,
    "threshold_lr": 0.01,
    "mask_strategy": "different",
    "num_experts": 8,
    "top_k": 2,
    "noisy_gating": True,
    "aux_loss_weight": 0.01,
}


def applies(option: str, method: str) -> bool:
    """Whether the [`PadConfig`][padnet.adapter.config.PadConfig] field `option` applies to `method` (a
    canonical method name); fields outside the applicability table apply to every method."""
    return method in _APPLIES.get(option, (method,))


def canonical_method(name) -> str:
    """The registered method name for `name` (aliases and case folded); ConfigError if unknown."""
    if not isinstance(name, str):
        raise ConfigError(f"method must be a name, got {name!r}")
    key = METHOD_ALIASES.get(name.lower(), name.lower())
    check_choice("method", key, METHODS)
    return key


def _number(
    name: str, value, low: float, *, integer: bool = False, inclusive: bool = True, high: float | None = None
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if inclusive else value > low) and (high is None or value <= high)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        bound = f">= {low}" if inclusive else f"> {low}"
        kind = "an integer" if integer else "a number"
        raise ConfigError(
            f"{name} must be {kind} {bound}{f' and <= {high}' if high is not None else ''}, got {value!r}"
        )


def _time_limit(unit: str) -> int:
    """The most training time an option counted in `unit` (`"steps"` or `"epochs"`) may ask for."""
    return MAX_EPOCHS if unit == "epochs" else MAX_STEPS


@dataclass
class PadConfig:
    """How to make a model partially dynamic, and how the method behaves while it trains.

    Each field below is one option, with its type, default and range; the option names are the vocabulary of
    the YAML run configurations and of the command line. An option left at None takes the method's default
    ([`value`][padnet.adapter.config.PadConfig.value] gives it). Options that do not apply to `method` must
    stay None or at their default: setting one is an error, so a misplaced option is never ignored silently.
    Which option applies to which method is one table (`_APPLIES`, read by
    [`applies`][padnet.adapter.config.applies]); the convolutions' layer options come from the layers' own
    `OPTIONS`.

    Raises:
        ConfigError: from [`validate`][padnet.adapter.config.PadConfig.validate] (called at construction): an
            unknown name, a value out of range, an option the method does not take.
    """

    # ---- model surgery
    method: str = "pad"
    """The method: `"dy"` (DY-Conv), `"condconv"`, `"odconv"`, `"dcd"`, their PAD-Net forms `"pad"` (PAD-Net
    over DY-Conv, the paper's main setting), `"pad-condconv"`, `"pad-odconv"`, `"pad-dcd"`, `"sdconv"` (SD-Conv);
    for transformers `"moe"`, `"pad-moe"` (PAD-MoE) and `"moe-p"` (MoE-P, the pruning baseline). Aliases
    (`METHOD_ALIASES`, e.g. `"dyconv"`, `"padmoe"`) are accepted. Dense FFNs are upcycled; a pretrained MoE
    (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) keeps its routers and its banks of experts are compressed."""
    target_modules: str | list[str] = "auto"
    """Modules to convert: `"auto"` (every `nn.Conv2d` but the first, the stem; or every FFN block of a
    transformer), `"all"` (the stem too) or glob patterns of module names (a conv's name; an FFN's first linear,
    e.g. `"*.layer.0.intermediate.dense"`; a gated block, e.g. `"model.layers.0.mlp"`)."""
    exclude_modules: list[str] = field(default_factory=list)
    """Glob patterns of module names to leave as they are."""
    min_channels: int = 1
    """Convolutions with fewer input channels stay static (convolution methods; >= 1)."""
    ffn_patterns: list[list[str]] | None = None
    """MoE methods: (first linear, activation, second linear) name triples of the FFN blocks, relative to the
    module holding them, or (gate, up, down, activation) quadruples of gated blocks. None: BERT, ALBERT,
    DistilBERT, GPT-2 and Llama / Mistral / Qwen names (`padnet.adapter.moe_convert.FFN_PATTERNS`)."""
    init_from_pretrained: bool = True
    """Start every kernel / expert and the static parameters Θ̄ from the existing weights, so the converted
    model computes what it did; False initialises the layers on their own."""
    layer_options: dict = field(default_factory=dict)
    """Further keyword options of the layers, passed as they are and checked by them (e.g.
    `{"formulation": "batched"}`, `{"routing": "sigmoid"}`, SD-Conv's `{"threshold": 0.01}`)."""
    # ---- dynamic layers
    num_kernels: int | None = None
    """Number of kernels k of a dynamic convolution, in [1, 64]. None: the layer type's (DY-Conv and PAD-Net 4,
    CondConv 8, ODConv 4, SD-Conv 4; `padnet.layers.registry.CONV_TYPES`). DCD has none."""
    reduction: int | None = None
    """Attention reduction ratio r (hidden width C / r), in [0, 4096]. None: the layer's (DY-Conv 4, ODConv, DCD
    and SD-Conv 16)."""
    temperature_start: float | None = None
    """Attention temperature T at the start of the anneal (Chen et al. 2020), in (0, 10⁴]. None: the layer's, 30
    for softmax routing and 1 for CondConv (a plain sigmoid, no temperature). Not for DCD (no temperature)."""
    temperature_end: float = 1.0
    """Temperature T at the end of the linear anneal, in (0, 10⁴]."""
    temperature_anneal: float = 1.0
    """Length of the anneal, in `temperature_unit`s (0: T = `temperature_end` from the start)."""
    temperature_unit: str = "epochs"
    """Unit of `temperature_anneal`: `"steps"` or `"epochs"`."""
    # ---- mode partition (PAD-Net eq. 5–9)
    kappa: float | None = None
    """Dynamic ratio κ ∈ (0, 1]: the fraction of the computational parameters kept dynamic. None:
    `padnet.partitioning.DEFAULT_KAPPA` (0.3 for convolutions, 0.5 for PAD-MoE / MoE-P, PAD-Net §5.1 and
    appendix B). PAD-Net forms, PAD-MoE and MoE-P."""
    granularity: str | None = None
    """Mask granularity: `"shared"` (one mask for the k factors), `"kernel"` or `"filter"` (whole output
    filters) for convolutions, `"element"` or `"neuron"` for MoE. None: `"shared"` / `"element"`."""
    scale_mode: str | None = None
    """Scale factors λs, λd of PAD-Net eq. 4 (Table 3): `"constrained"` (λs + λd = 2), `"both"`, `"static"`,
    `"dynamic"` or `"none"`. None: `"constrained"`."""
    mask_semantics: str | None = None
    """What a static (M = 0) element of a convolution holds: `"static"` (the static parameters Θ̄, PAD-Net) or
    `"zero"` (pruned). None: `"static"`."""
    partition: str | Callable = "imp"
    """Mode partition method: `"imp"` (Iterative Mode Partition), `"mp"` (one-shot), `"random"`, `"magnitude"`,
    or a function `scores(name, factors, mask) -> Tensor` of the mask's shape (as `importance_scores` of
    `torch.nn.utils.prune`); higher scores stay dynamic. A function is written as `"custom"` in JSON, and a
    config read back without it keeps `"custom"`, which partitions only when given the function."""
    partition_scope: str = "global"
    """`"global"`: one threshold over every masked tensor; `"local"`: κ of each tensor."""
    partition_iterations: int = 5
    """E, the iterations of IMP (PAD-Net eq. 9), in [1, 1000]."""
    partition_batches: int = 10
    """N, the training batches each importance score averages, in [1, 10⁴]; also how many batches the BatchNorm
    statistics are re-estimated on after the temperature anneal (every dynamic method)."""
    partition_at: str | None = None
    """When training runs the partition: `"start"`, after `partition_after` `"steps"` or `"epochs"`, or
    `"manual"` (call `PadModel.partition` yourself). None: after 1 epoch when the layers start from the model's
    weights (`init_from_pretrained`; MoE always, PAD-Net appendix A), since every kernel then equals Θ̄ and the
    scores carry no signal; `"start"` for layers initialised on their own."""
    partition_after: float | None = None
    """How many `partition_at` units of training come before the partition (with `"steps"` or `"epochs"`)."""
    partition_align: int | None = None
    """With `partition_scope="local"` and filter masks: keep a multiple of this many dynamic filters per layer,
    in [1, 4096] (oneDNN runs channel counts that are multiples of 16 faster, docs/speed.md). None: 1."""
    check_scores: bool = True
    """Refuse IMP / MP scores that carry no signal (`padnet.partitioning.imp.check_separation`)."""
    # ---- SD-Conv (paper 002 eq. 8–9, Algorithm 1)
    sparsity: float | None = None
    """Target sparsity s ∈ [0, 1): the fraction of the k kernels' weights pruned. None: 0.5."""
    pruning_iterations: int | None = None
    """n: the run is cut into n + 1 phases with budgets s^(j/n), in [0, 1000]. None: 3."""
    budget_weight: float | None = None
    """λ_s, the weight of the L0 budget loss (SD-Conv eq. 9), >= 0. None: 0.01."""
    threshold_lr: float | None = None
    """Adam step of each learnable threshold τ, relative to its layer's weight RMS, > 0. None: 0.01."""
    mask_strategy: str | None = None
    """`"different"` masks for the k kernels or the `"same"` mask. None: `"different"`."""
    # ---- MoE (PAD-Net appendix A)
    num_experts: int | None = None
    """Experts per upcycled FFN, in [1, `padnet.layers.moe.MAX_EXPERTS`]. None: 8; a pretrained MoE keeps its
    own."""
    top_k: int | None = None
    """Experts each token is routed to (top-k), at most `num_experts`. None: 2; a pretrained MoE keeps its own."""
    noisy_gating: bool | None = None
    """Noisy top-k gating of the router while training. None: True."""
    aux_loss_weight: float | None = None
    """Weight of the load-balancing loss, >= 0. None: 0.01."""

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ queries
    @property
    def family(self) -> str:
        """`"conv"` (dynamic convolutions) or `"moe"` (Mixture-of-Experts feed-forward layers)."""
        return "moe" if self.method in MOE_METHODS else "conv"

    @property
    def partial(self) -> bool:
        """Whether the method has masks to partition (PAD-Net forms, PAD-MoE, MoE-P)."""
        return self.method in PARTIAL_METHODS

    def value(self, name: str):
        """The option `name` as the method uses it: the set value, or the method's default. ConfigError for a
        name that is not an option."""
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise ConfigError(f"{name!r} is not a PadConfig option")
        value = getattr(self, name)
        if value is not None:
            return value
        if name == "kappa":
            return DEFAULT_KAPPA[self.family]
        if name == "granularity":
            return "element" if self.family == "moe" else "shared"
        if (
            name == "temperature_start"
        ):  # the layer's: 30 for softmax routing, 1 for CondConv (no temperature)
            return start_temperature(self.method) if applies(name, self.method) else None
        if name == "partition_at":  # after a warm-up when the kernels start as copies of one weight
            return "epochs" if self.family == "moe" or self.init_from_pretrained else "start"
        if name == "partition_after":
            return 1 if self.partition_at is None and self.value("partition_at") == "epochs" else 0
        if name == "partition_align":
            return 1
        return _DEFAULTS.get(name)

    # ------------------------------------------------------------------ validation
    def validate(self) -> PadConfig:
        """Check every value (ConfigError with a one-line message); returns self."""
        self.method = canonical_method(self.method)
        for f in dataclasses.fields(self):  # None means "the method's default" only where that is the default
            if getattr(self, f.name) is None and f.default is not None:
                raise ConfigError(f"{f.name} needs a value (None is not one of its values)")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, methods in _APPLIES.items():  # an option that does not apply must keep its default
            if getattr(self, name) != defaults[name] and self.method not in methods:
                raise ConfigError(
                    f"option {name} does not apply to method {self.method!r} "
                    f"(it applies to {', '.join(methods) or 'no method'})"
                )
        targets = self.target_modules
        if not (
            targets in ("auto", "all")
            or (isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets))
        ):
            raise ConfigError(
                f"target_modules must be 'auto', 'all' or a non-empty list of glob patterns, got {targets!r}"
            )
        if isinstance(targets, tuple):
            self.target_modules = list(targets)
        if not (
            isinstance(self.exclude_modules, (list, tuple))
            and all(isinstance(t, str) for t in self.exclude_modules)
        ):
            raise ConfigError(
                f"exclude_modules must be a list of glob patterns, got {self.exclude_modules!r}"
            )
        self.exclude_modules = list(self.exclude_modules)
        _number("min_channels", self.min_channels, 1, integer=True)
        if self.ffn_patterns is not None:
            if not (
                isinstance(self.ffn_patterns, (list, tuple))
                and self.ffn_patterns
                and all(
                    isinstance(p, (list, tuple))
                    and len(p) in (3, 4)
                    and all(isinstance(n, str) and n for n in p)
                    for p in self.ffn_patterns
                )
            ):
                raise ConfigError(
                    "ffn_patterns must be a list of (first linear, activation, second linear) or, "
                    f"gated, (gate, up, down, activation) names, got {self.ffn_patterns!r}"
                )
            self.ffn_patterns = [list(p) for p in self.ffn_patterns]
        if self.family == "moe" and self.min_channels != 1:
            raise ConfigError(
                "option min_channels applies to convolutions, not to method " + repr(self.method)
            )
        if not (
            isinstance(self.layer_options, dict)
            and all(isinstance(k, str) for k in self.layer_options)
            and all(isinstance(v, (str, int, float, bool)) for v in self.layer_options.values())
        ):
            raise ConfigError(
                f"layer_options must map option names to numbers, names or true/false, got "
                f"{self.layer_options!r}"
            )
        for name in ("init_from_pretrained", "check_scores"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.noisy_gating is not None and not isinstance(self.noisy_gating, bool):
            raise ConfigError(f"noisy_gating must be true or false, got {self.noisy_gating!r}")
        for name in (
            "num_kernels",
            "num_experts",
            "top_k",
            "partition_iterations",
            "partition_batches",
            "partition_align",
        ):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), 1, integer=True, high=LIMITS.get(name))
        for name in ("reduction", "pruning_iterations"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), 0, integer=True, high=LIMITS[name])
        for name, (low, high) in OPTION_RANGES.items():  # layer_options pass them to the layers as they are
            if name in self.layer_options:
                _number(f"layer_options {name}", self.layer_options[name], low, integer=True, high=high)
        for name in ("temperature_start", "temperature_end"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), 0, inclusive=False, high=MAX_TEMPERATURE)
        if "temperature" in self.layer_options:
            _number(
                "layer_options temperature",
                self.layer_options["temperature"],
                0,
                inclusive=False,
                high=MAX_TEMPERATURE,
            )
        check_choice("temperature unit", self.temperature_unit, TIME_UNITS)
        _number("temperature_anneal", self.temperature_anneal, 0, high=_time_limit(self.temperature_unit))
        if self.kappa is not None:
            if isinstance(self.kappa, bool):
                raise ConfigError(f"dynamic ratio kappa must be a number in (0, 1], got {self.kappa!r}")
            check_kappa(self.kappa)
        if self.granularity is not None:
            check_choice(
                "mask granularity",
                self.granularity,
                MOE_GRANULARITIES if self.family == "moe" else CONV_GRANULARITIES,
            )
        if self.scale_mode is not None:
            check_choice("scale-factor mode", self.scale_mode, SCALE_MODES)
        if self.mask_semantics is not None:
            check_choice("mask semantics", self.mask_semantics, ("static", "zero"))
        if not callable(self.partition):
            check_choice("partition method", self.partition, (*PARTITIONS, "custom"))
        check_choice("partition scope", self.partition_scope, SCOPES)
        if self.value("partition_align") > 1 and self.partition_scope != "local":
            raise ConfigError("partition_align > 1 needs partition_scope 'local'")
        if self.partition_at is not None:
            check_choice("partition moment (partition_at)", self.partition_at, PARTITION_AT)
        if self.partition_after is not None:
            if self.value("partition_at") not in TIME_UNITS:
                raise ConfigError("partition_after needs partition_at 'steps' or 'epochs'")
            _number("partition_after", self.partition_after, 0, high=_time_limit(self.value("partition_at")))
        elif self.partition_at in TIME_UNITS:
            raise ConfigError(
                f"partition_at {self.partition_at!r} needs partition_after (how many {self.partition_at})"
            )
        if self.sparsity is not None and not (
            isinstance(self.sparsity, (int, float))
            and not isinstance(self.sparsity, bool)
            and 0 <= self.sparsity < 1
        ):
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        for name in ("budget_weight", "aux_loss_weight"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), 0)
        if self.threshold_lr is not None:
            _number("threshold_lr", self.threshold_lr, 0, inclusive=False)
        if self.mask_strategy is not None:
            check_choice("mask strategy", self.mask_strategy, ("different", "same"))
        if self.family == "moe" and self.value("top_k") > self.value("num_experts"):
            raise ConfigError(
                f"top_k {self.value('top_k')} is larger than num_experts {self.value('num_experts')}"
            )
        return self

    # ------------------------------------------------------------------ the layers' options
    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword options of the method's layers: for convolutions those of `padnet.convert` (only the
        ones the layer takes), for MoE those of `padnet.adapter.moe_convert.replace_ffns`."""
        if self.family == "moe":
            options = {
                "mode": MOE_METHODS[self.method],
                "num_experts": self.value("num_experts"),
                "top_k": self.value("top_k"),
                "noisy": self.value("noisy_gating"),
                "aux_loss_weight": self.value("aux_loss_weight"),
            }
            if self.partial:
                options["granularity"] = self.value("granularity")
            if self.method == "pad-moe":
                options["scale_mode"] = self.value("scale_mode")
            return {**options, **self.layer_options}

        wanted = {
            "num_kernels": self.num_kernels,
            "reduction": self.reduction,
            "temperature": self.value("temperature_start"),
            "granularity": self.granularity,
            "scale_mode": self.scale_mode,
            "mask_semantics": self.mask_semantics,
            "mask_strategy": self.mask_strategy,
        }
        return {**{k: v for k, v in wanted.items() if v is not None}, **self.layer_options}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (a partition function is written as `"custom"`)."""
        data = dataclasses.asdict(self)
        if callable(self.partition):
            data["partition"] = "custom"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], partition: Callable | None = None) -> PadConfig:
        """A config from [`to_dict`][padnet.adapter.config.PadConfig.to_dict] output (e.g. `padnet_config.json`); `partition` supplies the score
        function of a `"custom"` partition. Raises ConfigError for unknown keys or bad values."""
        if not isinstance(data, dict):
            raise ConfigError(f"a PAD configuration must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown PAD configuration key(s): {', '.join(unknown)}")
        data = dict(data)
        if data.get("partition") == "custom" and partition is not None:
            data["partition"] = partition
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid PAD configuration ({exc})") from None
