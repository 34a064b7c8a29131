"""One way in for any model: `get_pad_model(model, PadConfig(...)) -> PadModel`, in the spirit of PEFT.

[`PadModel`][padnet.adapter.model.PadModel] wraps a model whose convolutions (any `nn.Module` with `nn.Conv2d` layers) or feed-forward
blocks (Hugging Face encoders of the BERT family) were made dynamic, and gives one vocabulary for what follows:
`partition` (mode partition, PAD-Net eq. 5–9), the training hooks of [`padnet.adapter.methods`][padnet.adapter.methods]
(`start_training`, `before_step`, `extra_loss`, `after_step`), `merge_and_unload` (the compact deployed
form), `save_pretrained` / `from_pretrained` (safetensors of what the method adds or changes, plus
`padnet_config.json`), `summary`, `masks`, `scale_factors` / `set_scale_factors` and `unload`.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import is_lazy

from padnet.adapter.config import PadConfig
from padnet.adapter.methods import PadTraining, method_for
from padnet.adapter.moe_convert import (
    FFN_PATTERNS,
    FFNSite,
    compress_experts,
    replace_ffns,
    require_ffns,
    set_linear_parts,
)
from padnet.adapter.statistics import recalibrate_batchnorm
from padnet.deployment.deploy import deploy
from padnet.errors import CheckpointError, ConfigError, check_module, deprecated, first_line
from padnet.layers.conv_base import BASE_SOURCES, DynamicConvBase
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.experts import ExpertBank, find_expert_banks
from padnet.layers.modes import PartialMode, ScaleFactors
from padnet.layers.moe import (
    DeployedMoE,
    MoEFeedForward,
    auxiliary_loss,
    moe_layers,
    reset_aux_losses,
    split_neurons,
)
from padnet.layers.registry import resolve_conv
from padnet.layers.surgery import find_convs, replace_convs
from padnet.metrics.counting import count_flops, count_parameters
from padnet.partitioning import PartitionReport, partition
from padnet.partitioning.scores import masked_tensors
from padnet.saving import folder
from padnet.saving.conv_codec import decode_deployed, deployed_skeleton, encode_deployed
from padnet.saving.folder import FORMS, fingerprint, under
from padnet.saving.moe_codec import decode_moe, encode_moe


def _targets(config: PadConfig) -> list[str] | None:
    return None if config.target_modules in ("auto", "all") else list(config.target_modules)


def _selected(name: str, targets: list[str] | None, exclude) -> bool:
    """Whether module `name` matches `targets` (None: every module) and no pattern of `exclude`."""
    return (targets is None or any(fnmatch.fnmatch(name, p) for p in targets)) and not any(
        fnmatch.fnmatch(name, p) for p in exclude
    )


def _convert(model: nn.Module, config: PadConfig) -> tuple[list[str], dict[str, BaseModules]]:
    """Apply `config` to `model` in place; the names of the modules it replaced, and for an MoE method the
    modules they replaced (as empty skeletons, [`BaseModules`][padnet.adapter.model.BaseModules])."""
    if config.family == "conv":
        layer_type = resolve_conv(config.method)[0]
        built = [n for n, m in model.named_modules() if isinstance(m, DynamicConvBase)]
        if built and config.target_modules == "auto":  # e.g. create_model(..., conv="pad"): already converted
            for name in built:
                _check_built(name, model.get_submodule(name), layer_type, config)
            return built, {}
        stem = config.target_modules == "auto"  # leave the first convolution static
        found = find_convs(
            model,
            skip_first=stem,
            targets=_targets(config),
            exclude=config.exclude_modules,
            min_channels=config.min_channels,
        )
        if not found:
            raise ConfigError(f"{type(model).__name__} has no nn.Conv2d that target_modules selects")
        replace_convs(
            model,
            config.method,
            init_from_static=config.init_from_pretrained,
            skip_first=stem,
            exclude=tuple(config.exclude_modules),
            min_channels=config.min_channels,
            targets=_targets(config),
            **config.layer_kwargs(),
        )
        return [name for name, _ in found], {}
    targets = _targets(config)
    banks = find_expert_banks(model)
    if banks:  # a pretrained MoE: compress its own experts, keep its routers
        banks = [name for name in banks if _selected(name, targets, config.exclude_modules)]
        if not banks:
            raise ConfigError(
                f"target_modules selects none of the expert banks of {type(model).__name__} "
                f"({', '.join(find_expert_banks(model)[:3])}, ...)"
            )
        _check_own_experts(model, banks, config)
        options = config.layer_kwargs()
        extra = {"scale_mode": options["scale_mode"]} if "scale_mode" in options else {}
        originals = {name: BaseModules({"bank": model.get_submodule(name)}) for name in banks}
        converted = compress_experts(
            model, options["mode"], options.get("granularity", "element"), banks, **extra
        )
        return converted, _skeletons(originals)
    patterns = [tuple(p) for p in config.ffn_patterns] if config.ffn_patterns else FFN_PATTERNS
    sites = require_ffns(model, patterns)
    chosen = [i for i, site in enumerate(sites) if _selected(site.moe, targets, config.exclude_modules)]
    if not chosen:
        raise ConfigError(
            f"{type(model).__name__} has no feed-forward block that target_modules selects "
            f"({len(sites)} found)"
        )
    originals = {sites[i].moe: BaseModules.of(model, sites[i]) for i in chosen}
    replace_ffns(model, layers=chosen, patterns=patterns, **config.layer_kwargs())
    if not config.init_from_pretrained:
        for i in chosen:
            layer = model.get_submodule(sites[i].moe)
            nn.init.normal_(layer.experts, std=0.02)
    return [sites[i].moe for i in chosen], _skeletons(originals)


class BaseModules(NamedTuple):
    """The modules an MoE method replaced at one place, kept as skeletons on the meta device (no memory) so that
    [`PadModel.unload`][padnet.adapter.model.PadModel.unload] can put the base architecture back.

    Attributes:
        modules: by role: `"up"` and `"down"` (an FFN's two linears, replaced by the MoE layer and an
            identity), `"block"` (a gated FFN block, replaced whole) or `"bank"` (a pretrained MoE's bank of
            experts, replaced by an [`ExpertBank`][padnet.layers.experts.ExpertBank]).
        site: the FFN's [`FFNSite`][padnet.adapter.moe_convert.FFNSite] (None for a bank).
    """

    modules: dict[str, nn.Module]
    site: FFNSite | None = None

    @classmethod
    def of(cls, model: nn.Module, site: FFNSite) -> BaseModules:
        """The modules of `model` that upcycling the FFN at `site` replaces."""
        if site.block is not None:
            return cls({"block": model.get_submodule(site.block)}, site)
        return cls({"up": model.get_submodule(site.up), "down": model.get_submodule(site.down)}, site)


def _skeletons(originals: dict[str, BaseModules]) -> dict[str, BaseModules]:
    """`originals` with every module moved to the meta device: the converted layers hold copies of the weights
    (and share only parameter-free activations), so the replaced modules keep their structure, not their
    memory."""
    for base in originals.values():
        for module in base.modules.values():
            module.to("meta")
    return originals


@torch.no_grad()
def _restore_moe(model: nn.Module, name: str, layer: nn.Module, base: BaseModules) -> tuple[str, bool]:
    """Put the modules an MoE method replaced at `name` back into `model` (a copy), holding `layer`'s weights
    in the base layout; returns (source, exact) as [`PadModel.unload`][padnet.adapter.model.PadModel.unload]
    records them."""
    skeletons = {role: copy.deepcopy(m) for role, m in base.modules.items()}
    if isinstance(layer, ExpertBank):
        gate_up, down, exact = layer.bank_weights()
        bank = skeletons["bank"].to_empty(device=gate_up.device)
        bank.gate_up_proj.copy_(gate_up)
        bank.down_proj.copy_(down)
        model.set_submodule(name, bank)
        return "expert bank", exact
    neurons, bias, source, exact = layer.dense_weights()
    parts = split_neurons(neurons, layer.gated)
    site = base.site
    if site.block is not None:
        block = skeletons["block"].to_empty(device=neurons.device)
        inner = {
            role: block.get_submodule(getattr(site, role)[len(site.block) + 1 :])
            for role in ("gate", "up", "down")
        }
        set_linear_parts(inner["gate"], parts.w_in.t(), parts.b_in)
        set_linear_parts(inner["up"], parts.w_up.t(), parts.b_up)
        set_linear_parts(inner["down"], parts.w_out, bias)
        model.set_submodule(site.block, block)
        return source, exact
    up, down = (skeletons[role].to_empty(device=neurons.device) for role in ("up", "down"))
    set_linear_parts(up, parts.w_in.t(), parts.b_in)
    set_linear_parts(down, parts.w_out, bias)
    model.set_submodule(site.up, up)
    model.set_submodule(site.activation, layer.activation)
    model.set_submodule(site.down, down)
    return source, exact


def _check_own_experts(model: nn.Module, banks: list[str], config: PadConfig) -> None:
    """ConfigError when `config` sets `num_experts` or `top_k` other than a pretrained MoE's own (its banks'
    expert count, its config's `num_experts_per_tok`): the model keeps its experts and routers, so the value
    would be ignored, and recorded wrongly."""
    own = {
        "num_experts": {model.get_submodule(name).down_proj.shape[0] for name in banks},
        "top_k": {getattr(getattr(model, "config", None), "num_experts_per_tok", None)} - {None},
    }
    for option, values in own.items():
        wanted = getattr(config, option)
        if wanted is not None and values and values != {wanted}:
            raise ConfigError(
                f"{option} {wanted} differs from the model's own ({', '.join(map(str, sorted(values)))}):"
                f" a pretrained MoE keeps its experts and routers; leave {option} unset"
            )


class PadModel(nn.Module):
    """A model made partially dynamic by [`get_pad_model`][padnet.adapter.model.get_pad_model]; forwards like
    the model it wraps. Attributes the wrapper does not have are looked up on `base_model`.

    Attributes:
        base_model: the converted model (changed in place by `get_pad_model`).
        pad_config: the [`PadConfig`][padnet.adapter.config.PadConfig] it was converted with.
        converted: names of the replaced modules.
        partition_report: the [`PartitionReport`][padnet.partitioning.imp.PartitionReport] of the last mode
            partition, run by [`partition`][padnet.adapter.model.PadModel.partition] or during training; None
            before.
        training_state: the [`PadTraining`][padnet.adapter.methods.PadTraining] of the run, once
            [`start_training`][padnet.adapter.model.PadModel.start_training] ran; None before.

    In training mode, when the wrapped model returns an output with a `loss` (a Hugging Face
    `ModelOutput`), the method's extra loss (e.g. MoE load balancing) is added to it, as Mixtral adds its
    router loss; [`extra_loss`][padnet.adapter.model.PadModel.extra_loss] then returns 0.0 for that step, so a loop may always add it.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PadConfig,
        converted: list[str],
        fingerprints: dict[str, str],
        originals: dict[str, BaseModules] | None = None,
    ):
        super().__init__()
        self.base_model = model
        self.pad_config = config
        self.converted = list(converted)
        self._fingerprints = fingerprints
        self._originals = dict(originals or {})  # a plain dict: the skeletons are not submodules
        self.training_state: PadTraining | None = None
        self.partition_report: PartitionReport | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args, **kwargs):
        out = self.base_model(*args, **kwargs)
        state = self.training_state
        if state is not None and self.training and getattr(out, "loss", None) is not None:
            extra = state.fold()
            if extra is not None:
                out.loss = out.loss + extra
        return out

    # ------------------------------------------------------------------ partition
    def partition(
        self,
        data: Iterable | None = None,
        loss_fn: Callable | None = None,
        batch_loss: Callable | None = None,
        seed: int = 0,
        **overrides,
    ) -> PartitionReport:
        """Mode partition of every masked layer (PAD-Net eq. 5–9) as the config describes it.

        Args:
            data: batches: (inputs, targets) pairs, or keyword dicts for a Hugging Face model (their loss is
                `model(**batch).loss` plus the load-balancing loss). Needed by `"imp"` and `"mp"`.
            loss_fn: loss of (outputs, targets) (default cross-entropy).
            batch_loss: `batch_loss(model, batch) -> loss` for other batches; replaces `loss_fn`.
            seed: seed of the `"random"` partition.
            **overrides: `kappa`, `partition` (method or score function), `partition_scope`,
                `partition_iterations`, `partition_batches`, `partition_align`, `check_scores` for this call
                only.

        Returns the [`PartitionReport`][padnet.partitioning.imp.PartitionReport]. Raises ConfigError for a method without
        masks, bad overrides, missing data, or scores without signal (`check_scores`; see
        [`padnet.partition`][padnet.partitioning.imp.partition]).
        """
        if not self.pad_config.partial:
            raise ConfigError(f"method {self.pad_config.method!r} has no masks to partition")
        scores = overrides.get("partition", self.pad_config.partition)
        if scores == "custom":
            raise ConfigError(
                "this configuration was saved with a custom score function: pass it as partition="
            )
        allowed = {
            "kappa",
            "partition",
            "partition_scope",
            "partition_iterations",
            "partition_batches",
            "partition_align",
            "check_scores",
        }
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ConfigError(f"partition got unexpected options: {', '.join(unknown)}")
        cfg = PadConfig.from_dict(
            {**self.pad_config.to_dict(), **overrides}, scores if callable(scores) else None
        )
        if data is not None:
            data = list(itertools.islice(iter(data), cfg.partition_batches))  # only the N batches scored
            if batch_loss is None and loss_fn is None and data and isinstance(data[0], Mapping):
                batch_loss = _keyword_loss
        report = partition(
            self.base_model,
            cfg.value("kappa"),
            cfg.partition,
            data,
            loss_fn or F.cross_entropy,
            cfg.partition_batches,
            cfg.partition_iterations,
            cfg.partition_scope,
            seed,
            align=cfg.value("partition_align"),
            batch_loss=batch_loss,
            check_scores=cfg.check_scores,
        )
        self.partition_report = report
        if self.training_state is not None:
            self.training_state.masks_changed()
        return report

    # ------------------------------------------------------------------ training hooks
    def start_training(
        self,
        steps_per_epoch: int | None = None,
        epochs: float | None = None,
        total_steps: int | None = None,
        partition_data: Iterable | None = None,
        loss_fn: Callable | None = None,
        batch_loss: Callable | None = None,
        step: int = 0,
        partitioned: bool | None = None,
        statistics_data: Iterable | None = None,
        partition_seed: int = 0,
    ) -> PadTraining:
        """Prepare the method's training-time work for a run (see [`padnet.adapter.methods`][padnet.adapter.methods]).

        Args:
            steps_per_epoch: optimiser steps per epoch (for schedules given in epochs).
            epochs, total_steps: the run's length (SD-Conv's schedule needs one of them).
            partition_data, loss_fn, batch_loss: what [`partition`][padnet.adapter.model.PadModel.partition] gets when the partition is due.
            step: the step to start from (a resumed run).
            partitioned: whether the partition already ran (default: whether any mask has a static element, as
                after a resumed run or `from_pretrained`), so a resumed run does not partition again.
            statistics_data: training batches on which the BatchNorm running statistics are re-estimated after
                the temperature anneal's last step and after a partition outside the anneal (default:
                `partition_data`; see [`recalibrate_batchnorm`][padnet.adapter.model.PadModel.recalibrate_batchnorm]). Without either, `eval()` warns while
                the statistics lag such a change.
            partition_seed: seed of a `"random"` partition.

        Returns the [`PadTraining`][padnet.adapter.methods.PadTraining], also kept as `training_state`.

        Raises ConfigError when IMP / MP is due during training without `partition_data` or `batch_loss`.
        """
        if total_steps is None and epochs is not None and steps_per_epoch is not None:
            total_steps = math.ceil(epochs * steps_per_epoch)
        cfg = self.pad_config
        if (
            partitioned is None
        ):  # masks with static elements: partitioned before (a resumed run, from_pretrained)
            partitioned = any(bool((mode.mask == 0).any()) for _, mode, _ in masked_tensors(self.base_model))
        due = cfg.partial and cfg.value("partition_at") != "manual" and not partitioned
        if due and cfg.partition == "custom":
            raise ConfigError(
                "this configuration was saved with a custom score function: build the PadModel with "
                "it (PadConfig(partition=fn)) before training"
            )
        if due and cfg.partition in ("imp", "mp") and partition_data is None and batch_loss is None:
            raise ConfigError(
                f"mode partition ({cfg.partition}) is due during training: pass partition_data (or "
                "set partition_at='manual' and call partition yourself)"
            )

        count = cfg.partition_batches
        partition_data = _reusable(partition_data, count)
        statistics = partition_data if statistics_data is None else _reusable(statistics_data, count)

        def run():
            return self.partition(partition_data, loss_fn, batch_loss, partition_seed)

        def recalibrate():
            return self.recalibrate_batchnorm(statistics, count)

        self.training_state = PadTraining(
            self.base_model,
            cfg,
            steps_per_epoch,
            total_steps,
            run if cfg.partial else None,
            step,
            partitioned,
            recalibrate if statistics is not None else None,
        )
        return self.training_state

    def recalibrate_batchnorm(self, data: Iterable | None = None, num_batches: int | None = None) -> int:
        """Re-estimate every BatchNorm running mean and variance on `data` as the model computes now.

        Call it before evaluating after the temperature anneal or a mode partition when training did not do it
        ([`start_training`][padnet.adapter.model.PadModel.start_training] without `partition_data` or `statistics_data`), or after [`set_masks`][padnet.adapter.model.PadModel.set_masks].
        Right after such a change the running averages describe the model before it, and a model evaluated
        with them can predict one class for every input.

        Args:
            data: training batches (tensors, `(inputs, targets)` pairs or keyword dicts); a few suffice.
                Default: the batches given to [`start_training`][padnet.adapter.model.PadModel.start_training].
            num_batches: read at most this many batches of `data` (default: all of `data` given here, the
                config's `partition_batches` of [`start_training`][padnet.adapter.model.PadModel.start_training]'s).

        Returns the number of BatchNorm layers re-estimated (0 for a model without BatchNorm).
        Raises ConfigError without data; DataError for batches the model cannot take (see
        [`padnet.adapter.statistics.recalibrate_batchnorm`][padnet.adapter.statistics.recalibrate_batchnorm]).
        """
        if data is None:
            state = self.training_state
            if state is None or not state.can_recalibrate:
                raise ConfigError("recalibrate_batchnorm needs training batches: pass data=")
            return state.refresh_statistics()
        if num_batches is not None:
            data = _first(data, num_batches)
        count = recalibrate_batchnorm(self.base_model, data)
        if self.training_state is not None:
            self.training_state.statistics_fresh()
        return count

    def train(self, mode: bool = True) -> PadModel:
        """Set training mode (`nn.Module.train`); going to evaluation warns when the BatchNorm statistics still
        lag the last temperature or mask change (see [`recalibrate_batchnorm`][padnet.adapter.model.PadModel.recalibrate_batchnorm])."""
        if not mode and self.training and self.training_state is not None:
            self.training_state.warn_if_stale()
        return super().train(mode)

    def _state(self) -> PadTraining:
        if self.training_state is None:
            raise ConfigError("call start_training(...) before the training hooks")
        return self.training_state

    def before_step(self) -> None:
        """Before each optimiser step's forward: partition when due, temperature annealing."""
        self._state().before_step()

    def extra_loss(self) -> torch.Tensor | float:
        """The method's loss terms for this step (SD-Conv budget loss, MoE load-balancing loss), or 0.0."""
        return self._state().extra_loss()

    def after_step(self) -> None:
        """After each optimiser step: SD-Conv's threshold step and clamp; advances the step."""
        self._state().after_step()

    def optimizer_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters for your optimiser: all but those the method trains itself (SD-Conv's
        thresholds, which [`after_step`][padnet.adapter.model.PadModel.after_step] updates)."""
        if self.training_state is not None:
            return self.training_state.optimizer_parameters(self.base_model)
        own = {id(p) for p in method_for(self.pad_config).own_parameters(self.base_model)}
        return [p for p in self.base_model.parameters() if p.requires_grad and id(p) not in own]

    # ------------------------------------------------------------------ masks and scale factors
    def masks(self) -> dict[str, torch.Tensor]:
        """Every mode-partition mask as booleans (True = dynamic), by masked tensor name, each in its mask
        shape ((1 or k, *shape), or one element per filter / neuron)."""
        return {name: mode.mask.detach().bool().clone() for name, mode, _ in masked_tensors(self.base_model)}

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        """Set masks by name (booleans or 0/1 of each mask's shape). Raises ConfigError for an unknown name or a
        shape that does not fit."""
        modes = {name: mode for name, mode, _ in masked_tensors(self.base_model)}
        for name, value in masks.items():
            if name not in modes:
                raise ConfigError(f"no mask named {name!r}; masks: {', '.join(list(modes)[:5])}...")
            mode = modes[name]
            value = torch.as_tensor(value)
            if tuple(value.shape) != tuple(mode.mask.shape):
                raise ConfigError(f"mask {name} has shape {tuple(mode.mask.shape)}, got {tuple(value.shape)}")
            with torch.no_grad():
                mode.mask.copy_((value != 0).to(mode.mask.dtype))
        if self.training_state is not None:
            self.training_state.masks_changed()

    def scale_factors(self) -> dict[str, tuple[float, float]]:
        """(λs, λd) of every layer with scale factors, by module name (PAD-Net eq. 4)."""
        return {
            name: tuple(float(v.detach()) for v in module())
            for name, module in self.base_model.named_modules()
            if isinstance(module, ScaleFactors) and module.mode != "none"
        }

    @torch.no_grad()
    def set_scale_factors(self, lambda_s: float | None = None, lambda_d: float | None = None) -> int:
        """Set the scale factors of every layer; returns how many were set.

        With `scale_mode="constrained"` give one of them (the other is 2 minus it, each in (0, 2)); with
        `"both"` either or both; `"static"`/`"dynamic"` the one they train. Raises ConfigError for a value
        the mode cannot hold.
        """
        count = 0
        for module in self.base_model.modules():
            if not isinstance(module, ScaleFactors) or module.mode == "none":
                continue
            if module.mode == "constrained":
                lam_d = lambda_d if lambda_d is not None else (None if lambda_s is None else 2.0 - lambda_s)
                if (
                    lam_d is None
                    or not 0 < lam_d < 2
                    or (lambda_s is not None and lambda_d is not None and abs(lambda_s + lambda_d - 2) > 1e-9)
                ):
                    raise ConfigError("constrained scale factors need λs + λd = 2 with each in (0, 2)")
                module.phi.fill_(math.log(lam_d / (2.0 - lam_d)))  # λd = 2·sigmoid(φ)
            else:
                for name, value in (("lambda_s", lambda_s), ("lambda_d", lambda_d)):
                    if value is not None:
                        if not hasattr(module, name):
                            raise ConfigError(f"scale-factor mode {module.mode!r} has no trainable {name}")
                        getattr(module, name).fill_(float(value))
            count += 1
        return count

    # ------------------------------------------------------------------ accounting
    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table: parameters (trainable / stored / compact), FLOPs (MACs of one input of `input_shape`,
        convolutional models), and the dynamic ratio per layer type."""
        model = self.base_model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows = [
            ("method", self.pad_config.method),
            ("converted modules", str(len(self.converted))),
            ("trainable parameters", f"{trainable:,}"),
            ("stored parameters", f"{count_parameters(model, compact=False):,}"),
            ("compact parameters", f"{count_parameters(model):,}"),
        ]
        if input_shape is not None:
            rows.append(("MACs per input", f"{count_flops(model, tuple(input_shape)):,}"))
        by_type: dict[str, list[int]] = {}
        for name in self.converted:
            module = model.get_submodule(name)
            kind = type(module[-1] if isinstance(module, nn.Sequential) else module).__name__
            counts = by_type.setdefault(kind, [0, 0])
            for mode in module.modules():
                if isinstance(mode, PartialMode):
                    c = mode.compact_counts()["dynamic"]
                    counts[0], counts[1] = counts[0] + c, counts[1] + mode.factor_numel
        for kind, (dynamic, total) in by_type.items():
            rows.append(
                (f"dynamic ratio, {kind}", f"{dynamic / total:.4f}" if total else "1 (fully dynamic)")
            )
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

    # ------------------------------------------------------------------ deployment and unloading
    def merge_and_unload(self) -> nn.Module:
        """The compact inference form as a plain module (a copy; this model is unchanged), in eval mode:
        [`padnet.deploy`][padnet.deployment.deploy.deploy] — BatchNorm and the scale factors folded, dynamic factors
        only where M = 1, MoE experts merged once ([`DeployedMoE`][padnet.layers.moe.DeployedMoE]); layers with no
        compact form (ODConv, DCD) are kept and named in one warning."""
        try:
            return deploy(self.base_model)
        except ConfigError:  # a model torch.fx cannot trace keeps its BatchNorm layers
            return deploy(self.base_model, fold_bn=False)

    def unload(self) -> nn.Module:
        """The base architecture back: a copy of the wrapped model (this one is unchanged) with every converted
        module replaced by the plain module(s) its layer states. Never refuses; the weights are:


        - convolutions ([`base_layer`][padnet.layers.conv_base.DynamicConvBase.base_layer], an `nn.Conv2d` with
          weight (Cout, Cin/groups, kh, kw), bias (Cout,) where the layer has one, the original geometry):
          PAD-Net forms with static parameters (`"pad"`, `"pad-condconv"`, `"pad-odconv"`, `"pad-dcd"`) take the
          layer with M = 0, the static part λs · Θ̄ of PAD-Net eq. 4 (with ODConv's static attentions and DCD's
          static scale and residual folded in), exact when every mask is static; DY-Conv, CondConv, ODConv,
          SD-Conv (and zero mask semantics) the mean of the k kernels, the original weight while the kernels are
          the copies made at conversion; DCD its static kernel W₀;
        - upcycled FFNs (MoE, PAD-MoE, MoE-P): the FFN's own linears (`nn.Linear` or `Conv1D`, a gated block
          whole) with PAD-MoE's λs · Θ̄, or the mean of the experts' computational parameters
          ([`dense_weights`][padnet.layers.moe.MoEFeedForward.dense_weights]); exact when every expert computes
          the same;
        - a pretrained MoE's expert banks: the original bank (`gate_up_proj` (E, 2F, H), `down_proj` (E, H, F))
          holding each expert's computational parameters (PAD-Net eq. 4 per expert), exact unless the
          compressed experts learnt biases, which the bank has no place for.

        A layer converted with a padding mode other than zeros stays `nn.Sequential(PadInput, conv)`.

        Returns:
            The model, with attribute `padnet_unloaded`: {converted module name: where its weights came
                from, a key of `BASE_SOURCES` (`"static"`, `"kernels"`, `"W0"`, `"experts"`, `"expert bank"`)}.
                Unless every layer's base form is exact, one warning says which weights were used, e.g.
                "unload: 8 layers took their static weights λs·Θ̄ (PAD-Net eq. 4 with M = 0); 5 had dynamic
                elements, dropped".
        """
        model = _copy(self.base_model)
        sources, taken, dropped = {}, Counter(), 0
        for name in self.converted:
            module = model.get_submodule(name)
            layer = module[-1] if isinstance(module, nn.Sequential) else module
            if isinstance(layer, DynamicConvBase):
                base = layer.base_layer()
                source, exact = base.source, base.exact
                if isinstance(module, nn.Sequential):
                    module[-1] = base.layer
                else:
                    model.set_submodule(name, base.layer)
            else:
                source, exact = _restore_moe(model, name, layer, self._originals[name])
            sources[name] = source
            taken[source] += 1
            dropped += not exact
        model.padnet_unloaded = sources
        if dropped:
            clauses = ", ".join(f"{n} layers took {BASE_SOURCES[source]}" for source, n in taken.items())
            warnings.warn(f"unload: {clauses}; {dropped} had dynamic elements, dropped", stacklevel=2)
        return model

    # ------------------------------------------------------------------ files
    def save_pretrained(
        self, directory: str | Path, form: str = "training", full: bool = False, tokenizer=None
    ) -> Path:
        """Write `directory/padnet_config.json` and `directory/padnet_model.safetensors` ([`padnet.saving.folder`][padnet.saving.folder]),
        each file atomically. Returns the directory.

        Args:
            form: `"training"` (masks, static parameters, scale factors: train further) or `"deployed"` (the
                compact form of [`merge_and_unload`][padnet.adapter.model.PadModel.merge_and_unload]).
            full: store every tensor and the architecture (`padnet.create_model`'s arguments, or the Hugging Face
                class and `config.json`), so that [`from_pretrained`][padnet.adapter.model.PadModel.from_pretrained] needs no base model. By default only
                what the method adds or changes is stored: the converted modules, and every other tensor whose
                value changed since [`get_pad_model`][padnet.adapter.model.get_pad_model] (e.g. a fine-tuned head); the tensors left out are
                recorded by hash, so [`from_pretrained`][padnet.adapter.model.PadModel.from_pretrained] can check the base model it is given.
            tokenizer: a Hugging Face tokenizer saved into the same folder.

        Raises ConfigError for an unknown form, or `full` for a model whose architecture padnet cannot rebuild.
        """
        if form not in FORMS:
            raise ConfigError(f"unknown form {form!r}; choose from {', '.join(FORMS)}")
        recipe = folder.architecture(self.base_model)
        if full and recipe is None:
            raise ConfigError(
                "full=True needs a model padnet can rebuild (from padnet.create_model or a "
                "transformers model); save without full= and pass base_model= when loading"
            )
        if self.pad_config.family == "moe":  # deployed: the experts are merged when loaded
            tensors, meta = encode_moe(self.base_model), {}
        elif form == "deployed":
            tensors, meta = _deployed_tensors(self.merge_and_unload())
        else:
            tensors, meta = folder.state_tensors(self.base_model), {}
        changed = set(meta.get("folded_bn", ())) | set(meta.get("fused_convs", ()))
        kept = (
            tensors
            if full
            else {
                k: v
                for k, v in tensors.items()
                if under(k, self.converted)
                or under(k, changed)
                or self._fingerprints.get(k) != fingerprint(v)
            }
        )
        record = {
            "form": form,
            "config": self.pad_config.to_dict(),
            "converted": self.converted,
            "base": {} if full else {k: h for k, h in self._fingerprints.items() if k not in kept},
            "deploy": meta,
            "architecture": recipe if full else None,
        }
        return folder.write_folder(directory, kept, record, self.base_model, tokenizer)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, base_model: nn.Module | None = None, partition: Callable | None = None
    ) -> PadModel:
        """The [`PadModel`][padnet.adapter.model.PadModel] that [`save_pretrained`][padnet.adapter.model.PadModel.save_pretrained]
        wrote in its training form (see [`load_pretrained`][padnet.adapter.model.load_pretrained] for the
        arguments and errors).

        A folder that holds no PadModel (the deployed form, or a plain model) is read by
        `padnet.load_pretrained`, which returns whatever a folder holds; reading one here still returns the plain
        module, with a deprecation warning, until 0.3.0.
        """
        model = load_pretrained(directory, base_model, partition)
        if not isinstance(model, PadModel):
            deprecated(
                "PadModel.from_pretrained on a folder without a training-form PadModel",
                "padnet.load_pretrained",
            )
        return model


def _check_built(name: str, layer: nn.Module, layer_type: type, config: PadConfig) -> None:
    """Refuse a config whose method or layer options differ from a layer the model already has."""
    if type(layer) is not layer_type:
        raise ConfigError(f"{name} is a {type(layer).__name__}, not a layer of method {config.method!r}")
    mode = getattr(layer, "weight_mode", None)
    found = {
        "num_kernels": getattr(layer, "num_kernels", None),
        "reduction": getattr(getattr(layer, "attention", layer), "reduction", None),
        "granularity": getattr(mode, "granularity", None),
        "mask_semantics": getattr(mode, "semantics", None),
        "scale_mode": getattr(layer.scales, "mode", None) if hasattr(layer, "scales") else None,
    }
    for option, value in found.items():
        wanted = getattr(config, option)
        if wanted is not None and value is not None and wanted != value:
            raise ConfigError(
                f"{name} already has {option} {value!r}, the config asks for {wanted!r}: a model built "
                "with padnet layers keeps its own; build it with the options you want"
            )


def _reusable(data: Iterable | None, count: int) -> Iterable | None:
    """`data` in a form that can be read more than once: a one-shot iterator (a generator) becomes the list of
    its first `count` batches, which the partition and the BatchNorm re-estimation then share. An iterable is
    kept as it is, unread (a DataLoader's iterator would draw from its sampler's generator)."""
    if not isinstance(data, Iterator):
        return data
    return list(itertools.islice(data, count))


def _first(data: Iterable, count: int) -> Iterator:
    """The first `count` items of `data`, read lazily: nothing is drawn from `data` (no DataLoader iterator is
    made) until the first item is asked for."""
    yield from itertools.islice(data, count)


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model`; the MoE layers' losses of the last forward (autograd results) are dropped first."""
    reset_aux_losses(model)
    return copy.deepcopy(model)


def _keyword_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Task loss of a Hugging Face model on a keyword batch plus the load-balancing loss of its MoE layers."""
    return model(**batch).loss + auxiliary_loss(model)


def convert(model: nn.Module, method: str = "pad", **options) -> nn.Module:
    """`get_pad_model(model, PadConfig(method=method, **options)).base_model`: the model itself (changed in
    place) rather than its [`PadModel`][padnet.adapter.model.PadModel] wrapper, for code that keeps working with the plain module.

    `options` are [`PadConfig`][padnet.adapter.config.PadConfig] fields (`kappa`, `num_kernels`, `exclude_modules`,
    `init_from_pretrained`, `target_modules="all"` for the stem too, `min_channels`, `layer_options`, ...).
    Raises ConfigError as [`get_pad_model`][padnet.adapter.model.get_pad_model].
    """
    check_module(model, "convert")
    return get_pad_model(model, method=method, **options).base_model


def get_pad_model(model: nn.Module, config: PadConfig | None = None, **options) -> PadModel:
    """Make `model` dynamic or partially dynamic as `config` describes (in place) and wrap it.

    Args:
        model: any `nn.Module` with `nn.Conv2d` layers (convolution methods), or a transformer encoder
            whose FFN blocks `padnet.adapter.moe_convert.find_ffns` recognises (BERT family, GPT-2; MoE methods).
        config: a [`PadConfig`][padnet.adapter.config.PadConfig]; or give its fields as keyword `options` (`method="pad", kappa=0.3`).

    Returns a [`PadModel`][padnet.adapter.model.PadModel]. Converting a pretrained model starts every kernel / expert and the static
    parameters from its weights, so the converted model computes what it did (softmax routing; MoE with the
    zero-initialised router); mode partition then needs a warm-up of training first (`partition_at`).

    Raises:
        ConfigError: `model` is not an `nn.Module`, a bad config, a module that cannot be converted (named,
            with the `exclude_modules` remedy), or nothing to convert. The model is unchanged after any error.
    """
    check_module(model, "get_pad_model")
    if isinstance(model, PadModel):
        raise ConfigError("the model is already a PadModel")
    if config is None:
        config = PadConfig.from_dict(options)
    elif options:
        config = PadConfig.from_dict(
            {**config.to_dict(), **options}, config.partition if callable(config.partition) else None
        )
    if not isinstance(config, PadConfig):
        raise ConfigError(f"config must be a PadConfig, got {type(config).__name__}")
    lazy = next(
        (n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if is_lazy(t)), None
    )
    if lazy is not None:
        raise ConfigError(
            f"{lazy} is not initialised yet (a lazy module): run one forward pass before converting"
        )
    converted, originals = _convert(model, config)
    fingerprints = {k: fingerprint(v) for k, v in model.state_dict().items() if not under(k, converted)}
    return PadModel(model, config, converted, fingerprints, originals)


def _deployed_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The compact tensors of a deployed model and its layout (folded BatchNorm, each deployed layer's)."""
    layers = {n: m.config for n, m in model.named_modules() if isinstance(m, DeployedConv2d)}
    return encode_deployed(model), {"layers": layers, **model.padnet_deployed}


def save_pretrained(
    model: nn.Module, directory: str | Path, form: str = "training", full: bool = False, tokenizer=None
) -> Path:
    """Save any padnet model to a folder that [`load_pretrained`][padnet.adapter.model.load_pretrained] reads.

    A [`PadModel`][padnet.adapter.model.PadModel] is saved by [`PadModel.save_pretrained`][padnet.adapter.model.PadModel.save_pretrained] with these arguments. A plain model (static
    or built with padnet's layers by `padnet.create_model`, a Hugging Face model without MoE layers, or the
    output of `padnet.deploy` / `merge_and_unload` of such a model) is stored whole with its architecture,
    in the form it has (`form` and `full` do not apply). Returns the directory.

    Raises ConfigError for something that is not an `nn.Module`, a plain model padnet cannot rebuild (no
    architecture recorded, MoE layers, or layers converted after `create_model`: save the [`PadModel`][padnet.adapter.model.PadModel] of
    [`get_pad_model`][padnet.adapter.model.get_pad_model] instead), or a `directory` that is a file.
    """
    check_module(model, "save_pretrained")
    if isinstance(model, PadModel):
        return model.save_pretrained(directory, form, full, tokenizer)
    recipe = folder.architecture(model)
    remedy = "save the PadModel that padnet.get_pad_model returned"
    if recipe is None:
        raise ConfigError(
            "save_pretrained takes a PadModel, a model from padnet.create_model or a transformers "
            f"model; {type(model).__name__} records no architecture to rebuild"
        )
    if any(isinstance(m, (MoEFeedForward, DeployedMoE)) for m in model.modules()):
        raise ConfigError(f"this model has MoE layers but no PadConfig: {remedy}")
    if recipe.get("padnet", {}).get("conv") == "static" and any(
        isinstance(m, (DynamicConvBase, DeployedConv2d)) for m in model.modules()
    ):
        raise ConfigError(f"this model's convolutions were converted after create_model: {remedy}")
    deployed = getattr(model, "padnet_deployed", None) is not None
    if deployed:
        tensors, meta = _deployed_tensors(model)
    else:
        tensors, meta = folder.state_tensors(model), {}
    record = {
        "form": "deployed" if deployed else "training",
        "config": None,
        "converted": [],
        "base": {},
        "deploy": meta,
        "architecture": recipe,
    }
    return folder.write_folder(directory, tensors, record, model, tokenizer)


def load_pretrained(
    directory: str | Path, base_model: nn.Module | None = None, partition: Callable | None = None
) -> PadModel | nn.Module:
    """Load a folder written by [`save_pretrained`][padnet.adapter.model.save_pretrained] / [`PadModel.save_pretrained`][padnet.adapter.model.PadModel.save_pretrained].

    Args:
        directory: the folder.
        base_model: the model it was converted from (changed in place); by default rebuilt from the architecture
            the folder records (saved with `full=True`, or a plain model).
        partition: the score function of a config saved with a custom one.

    Returns a [`PadModel`][padnet.adapter.model.PadModel] (training form with a PadConfig), or a plain module in eval mode (deployed form:
    compact convolutions or merged experts; or a model saved without a PadConfig). A model rebuilt from the
    folder comes in the dtype it was saved in when all its floating-point tensors share one (a model cast to
    bfloat16 loads in bfloat16).

    Raises:
        CheckpointError: a missing, corrupt or foreign folder; a folder that stores only what changed and no
            `base_model`; a base model that differs from the one converted (naming the first differing
            tensor); weights that do not fit, or that hold integers or NaN / infinity where floats belong.
    """
    if base_model is not None:
        check_module(base_model, "load_pretrained's base_model")
    directory = Path(directory)
    record = folder.read_record(directory)
    config = None
    if record["config"] is not None:
        try:
            config = PadConfig.from_dict(record["config"], partition)
        except ConfigError as exc:
            raise CheckpointError(f"{directory / folder.CONFIG_FILE}: {exc}") from None
    rebuilt = base_model is None
    if rebuilt:
        if record["architecture"] is None:
            raise CheckpointError(
                f"{directory} stores only what changed from its base model: pass base_model= (the "
                "model it was converted from)"
            )
        base_model = folder.build_architecture(record["architecture"], directory)
    base_state = base_model.state_dict()
    for key, digest in record["base"].items():  # checked before anything is converted
        if key not in base_state or fingerprint(base_state[key]) != digest:
            raise CheckpointError(
                f"{directory}: base_model differs from the model that was converted (tensor {key})"
            )
    tensors = folder.read_weights(directory, record["form"])
    form, source = record["form"], directory / folder.WEIGHTS_FILE
    if config is None:
        if record["converted"]:
            raise CheckpointError(
                f"{directory / folder.CONFIG_FILE} names converted modules but no PadConfig"
            )
        model = _load_into(base_model, tensors, form, record["deploy"], source, set(record["base"]))
        return _saved_dtype(model.eval(), tensors, rebuilt)
    try:
        pad = get_pad_model(base_model, config)
    except ConfigError as exc:  # the record does not fit the base model
        raise CheckpointError(f"{directory / folder.CONFIG_FILE}: {exc}") from None
    if pad.converted != record["converted"]:
        raise CheckpointError(
            f"{directory}: the base model's converted modules differ from the saved ones "
            f"(first: {record['converted'][:1]} vs {pad.converted[:1]})"
        )
    if config.family == "moe":
        _check_expert_counts(pad.base_model, tensors, directory / folder.CONFIG_FILE)
        state = pad.base_model.state_dict()
        try:
            decoded = decode_moe(pad.base_model, tensors)
        except (RuntimeError, KeyError, IndexError, TypeError, ValueError) as exc:
            reason = first_line(exc)
            raise CheckpointError(f"{source} does not fit the base model ({reason})") from None
        _check_complete(state, decoded, set(record["base"]), source)
        state.update(decoded)
        folder.load_state(pad.base_model, state, source)
        return _saved_dtype(
            deploy(pad.base_model, inplace=True) if form == "deployed" else pad, tensors, rebuilt
        )
    model = _load_into(pad.base_model, tensors, form, record["deploy"], source, set(record["base"]))
    return _saved_dtype(model.eval() if form == "deployed" else pad, tensors, rebuilt)


def _saved_dtype(model: nn.Module, tensors: dict[str, torch.Tensor], rebuilt: bool) -> nn.Module:
    """`model` cast to the one floating-point dtype of the saved `tensors` when it was rebuilt from the folder
    (its skeleton is float32; the values loaded into it are exact in float32, so the cast restores them)."""
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if rebuilt and len(dtypes) == 1:
        model.to(dtypes.pop())
    return model


def _check_expert_counts(model: nn.Module, tensors: dict[str, torch.Tensor], record: Path) -> None:
    """CheckpointError unless every MoE layer of `model` (built as the `record` says) has as many experts as the
    tensors stored for it."""
    for name, layer in moe_layers(model):
        stored = tensors.get(f"{name}.experts.values", tensors.get(f"{name}.experts"))
        if stored is not None and (stored.dim() == 0 or stored.shape[0] != layer.num_experts):
            count = stored.shape[0] if stored.dim() else 0
            raise CheckpointError(
                f"{record}: num_experts {layer.num_experts} does not match the {count} experts the "
                f"weights store for {name}"
            )


def _check_complete(state: dict, tensors: dict, base: set[str], source: Path) -> None:
    """CheckpointError unless every tensor of `state` is stored or is a base-model tensor checked by hash."""
    missing = [k for k in state if k not in tensors and k not in base]
    if missing:
        raise CheckpointError(f"{source} does not hold tensor {missing[0]} ({len(missing)} missing)")


def _load_into(
    model: nn.Module, tensors: dict[str, torch.Tensor], form: str, layout: dict, source: Path, base: set[str]
) -> nn.Module:
    """Load `tensors` (all of the state, or the part that changed; the rest must be among the `base` tensors
    checked by hash) into `model`, made deployed first for the deployed form; the model loaded (a deployed one
    is built in place of `model`'s layers)."""
    try:
        if form == "deployed":
            model = deployed_skeleton(model, layout)
            tensors = decode_deployed(model, tensors)
    except (RuntimeError, KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        reason = first_line(exc)
        raise CheckpointError(f"{source} does not fit the base model ({reason})") from None
    state = model.state_dict()
    _check_complete(state, tensors, base, source)
    state.update(tensors)
    folder.load_state(model, state, source)
    return model
