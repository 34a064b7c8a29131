"""What each method does while a model trains, behind one small interface.

A [`Method`][padnet.adapter.methods.Method] names the parameters it trains with an optimiser of its own, adds its loss terms, does its
per-step work and says when mode partition runs. [`PadTraining`][padnet.adapter.methods.PadTraining] drives one method through any training
loop with three calls per step:

```python
training.before_step()                    # temperature, and the partition when it is due
loss = task_loss + training.extra_loss()  # budget loss (SD-Conv), load-balancing loss (MoE)
loss.backward()
optimizer.step()
training.after_step()                     # SD-Conv's threshold step and clamp; the step counter
```

padnet's trainers, [`padnet.PadModel`][padnet.adapter.model.PadModel] and the integrations for the transformers `Trainer` and Lightning
all go through it, so no training loop names a method.

* Dynamic convolutions (DY-Conv, CondConv, ODConv, DCD): the attention temperature T anneals linearly from
  `temperature_start` to `temperature_end` (Chen et al. 2020, "Dynamic Convolution").
* PAD-Net forms: the same, and mode partition at `partition_at` (PAD-Net eq. 5–9).
* SD-Conv (paper 002, Algorithm 1): thresholds τ in an Adam optimiser of their own, the L0 budget loss
  λ_s · L_s (eq. 8–9) against the density schedule, τ clamped at 0 after each step.
* MoE: the load-balancing loss of every MoE layer (Shazeer et al. 2017 eq. 6 and 11); PAD-MoE and MoE-P
  partition after the first epoch by default (PAD-Net appendix A).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from padnet.adapter.config import PadConfig
from padnet.adapter.statistics import catch_up_steps
from padnet.errors import ConfigError
from padnet.layers.attention import TemperatureRouting, TemperatureSchedule
from padnet.layers.moe import auxiliary_loss
from padnet.layers.sdconv import (
    SparsitySchedule,
    budget_loss,
    clamp_thresholds,
    sparse_layers,
    sparsity_report,
)


def _steps(amount: float, unit: str, steps_per_epoch: int | None, what: str) -> int:
    """`amount` of `unit` (steps or epochs) in optimiser steps."""
    if unit == "steps":
        return round(amount)
    if steps_per_epoch is None:
        raise ConfigError(f"{what} is given in epochs: pass steps_per_epoch when training starts")
    return round(amount * steps_per_epoch)


class Method:
    """A method's training-time behaviour; the base class does nothing (a static model).

    Lifecycle: [`attach`][padnet.adapter.methods.Method.attach] once per training run, then per step [`before_step`][padnet.adapter.methods.Method.before_step], [`extra_loss`][padnet.adapter.methods.Method.extra_loss],
    [`after_step`][padnet.adapter.methods.Method.after_step]. Subclasses override what they need.
    """

    def __init__(self, config: PadConfig):
        self.config = config
        self.model: nn.Module | None = None
        self.steps_per_epoch: int | None = None
        self.total_steps: int | None = None

    def attach(
        self, model: nn.Module, steps_per_epoch: int | None = None, total_steps: int | None = None
    ) -> None:
        """Bind to `model` (the unwrapped module) for a run of `total_steps` optimiser steps."""
        self.model, self.steps_per_epoch, self.total_steps = model, steps_per_epoch, total_steps

    def own_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters of `model` the method trains with its own optimiser (leave them out of the main one)."""
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The method's own optimisers by name (saved and restored with checkpoints)."""
        return {}

    def before_step(self, step: int) -> None:
        """Work before the forward pass of optimiser step `step` (0-based)."""

    def extra_loss(self, step: int) -> torch.Tensor | None:
        """Loss terms to add to the task loss of step `step` (None: nothing)."""
        return None

    def after_step(self, step: int) -> None:
        """Work after the main optimiser's step `step`."""

    def partition_step(self) -> int | None:
        """The step before which mode partition runs; None when training never runs it."""
        return None

    def anneals(self, step: int) -> bool:
        """Whether the method changes what the layers compute at `step` by a schedule (the temperature)."""
        return False

    def log(self, step: int) -> dict:
        """Scalars worth logging after `step` steps (e.g. the temperature, the sparsity reached)."""
        return {}

    def results(self) -> dict:
        """What the method adds to a run's results."""
        return {}


class Dynamic(Method):
    """Dynamic convolutions: linear temperature annealing of every routing branch (Chen et al. 2020)."""

    def attach(self, model, steps_per_epoch=None, total_steps=None) -> None:
        super().attach(model, steps_per_epoch, total_steps)
        cfg = self.config
        self.routings = [m for m in model.modules() if isinstance(m, TemperatureRouting)]  # collected once
        steps = _steps(cfg.temperature_anneal, cfg.temperature_unit, steps_per_epoch, "temperature_anneal")
        start = cfg.value("temperature_start")  # None: the layers have no temperature (DCD)
        self.temperature = None if start is None else TemperatureSchedule(start, cfg.temperature_end, steps)

    def before_step(self, step: int) -> None:
        if self.temperature is not None:
            temperature = self.temperature(step)
            for routing in self.routings:
                routing.update_temperature(temperature)

    def anneals(self, step: int) -> bool:
        return self.temperature is not None and bool(self.routings) and self.temperature.anneals(step)

    def log(self, step: int) -> dict:
        return {} if self.temperature is None else {"temperature": self.temperature(step)}


def _partition_step(config: PadConfig, steps_per_epoch: int | None) -> int | None:
    moment = config.value("partition_at")
    if moment == "manual":
        return None
    if moment == "start":
        return 0
    return _steps(config.value("partition_after"), moment, steps_per_epoch, "partition_after")


class Partial(Dynamic):
    """PAD-Net forms of dynamic convolutions: annealing, and mode partition at `partition_at`."""

    def partition_step(self) -> int | None:
        return _partition_step(self.config, self.steps_per_epoch)


class SDConv(Dynamic):
    """SD-Conv (paper 002 Algorithm 1): thresholds with their own optimiser, budget loss, clamping.

    The budget loss's gradient on τ is in parameters (eq. 8), so no single SGD step size suits every model;
    Adam without momentum moves each τ by about its step size per step (momentum overshoots the budget), and a
    step relative to the layer's initial weight RMS makes one setting fit layers of every scale.
    """

    def attach(self, model, steps_per_epoch=None, total_steps=None) -> None:
        super().attach(model, steps_per_epoch, total_steps)
        cfg = self.config
        layers = [layer for _, layer in sparse_layers(model)]
        if not layers:
            raise ConfigError("method 'sdconv' found no SD-Conv layer in the model")
        if total_steps is None or total_steps < 1:
            raise ConfigError(
                "SD-Conv's sparsity schedule needs the run's total number of steps (total_steps)"
            )
        lr = cfg.value("threshold_lr")
        groups = [
            {
                "params": [layer.weight_mode.threshold],
                "lr": lr * float(layer.weight.detach().square().mean().sqrt()),
            }
            for layer in layers
        ]
        self.optimizer = torch.optim.Adam(groups, lr=lr, betas=(0.0, 0.9))
        self.density = SparsitySchedule(cfg.value("sparsity"), cfg.value("pruning_iterations"), total_steps)

    def own_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The thresholds τ of every SD-Conv layer."""
        return [layer.weight_mode.threshold for _, layer in sparse_layers(model)]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"thresholds": self.optimizer}

    def extra_loss(self, step: int) -> torch.Tensor:
        return self.config.value("budget_weight") * budget_loss(self.model, self.density(step))

    def after_step(self, step: int) -> None:
        self.optimizer.step()
        clamp_thresholds(self.model)
        self.optimizer.zero_grad(set_to_none=True)

    def log(self, step: int) -> dict:
        report = sparsity_report(self.model)
        return {
            **super().log(step),
            "sparsity": round(report["sparsity"], 5),
            "kernel_sparsity": round(report["kernel_sparsity"], 5),
            "density_budget": round(self.density(max(0, step - 1)), 5),
        }

    def results(self) -> dict:
        return {"sparsity": sparsity_report(self.model)}


class MoE(Method):
    """Mixture-of-Experts layers: their load-balancing losses join the task loss."""

    def extra_loss(self, step: int) -> torch.Tensor | float:
        return auxiliary_loss(self.model)


class PartialMoE(MoE):
    """PAD-MoE and MoE-P: the load-balancing loss, and mode partition once the experts have diverged."""

    def partition_step(self) -> int | None:
        return _partition_step(self.config, self.steps_per_epoch)


def method_for(config: PadConfig | None) -> Method:
    """The [`Method`][padnet.adapter.methods.Method] of `config.method` (None: a static model, nothing to do)."""
    if config is None:
        return Method(config)
    if config.family == "moe":
        return (PartialMoE if config.partial else MoE)(config)
    if config.method == "sdconv":
        return SDConv(config)
    return (Partial if config.partial else Dynamic)(config)


class PadTraining:
    """One training run of a method: the step counter, the moment of partition, the method's hooks.

    Args:
        model: the unwrapped model being trained.
        config: its [`PadConfig`][padnet.adapter.config.PadConfig] (None for a static model: every hook does nothing).
        steps_per_epoch: optimiser steps per epoch (needed by any schedule given in epochs).
        total_steps: optimiser steps of the whole run (needed by SD-Conv's sparsity schedule).
        partition: called without arguments when mode partition is due; returns its report (a
            [`PartitionReport`][padnet.partitioning.imp.PartitionReport]) or None.
        step: the step to start from (a resumed run). partitioned: whether the partition already ran.
        recalibrate: called without arguments to re-estimate the BatchNorm running statistics (see
            [`recalibrate_batchnorm`][padnet.adapter.statistics.recalibrate_batchnorm]) after the last step of the temperature
            anneal, and after a partition that falls outside the anneal: the running averages were gathered
            while the layers changed. None: the statistics are marked stale instead, and
            [`warn_if_stale`][padnet.adapter.methods.PadTraining.warn_if_stale] (called by `padnet.PadModel.eval`) warns until training has run long
            enough for them to catch up.

    Raises:
        ConfigError: a schedule in epochs without `steps_per_epoch`; SD-Conv without `total_steps` or
            without SD-Conv layers; a partition due in training without a `partition` function.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PadConfig | None,
        steps_per_epoch: int | None = None,
        total_steps: int | None = None,
        partition: Callable[[], object] | None = None,
        step: int = 0,
        partitioned: bool = False,
        recalibrate: Callable[[], int] | None = None,
    ):
        self.config = config
        self.model = model
        self.method = method_for(config)
        self.method.attach(model, steps_per_epoch, total_steps)
        self.partition_at = self.method.partition_step()
        if self.partition_at is not None and partition is None and not partitioned:
            raise ConfigError(
                "mode partition is due during training: pass partition data (or set "
                "partition_at='manual' and call partition yourself)"
            )
        self._partition = partition
        self._recalibrate = recalibrate
        self.step = step
        self.partitioned = partitioned
        self.report = None
        self._changed: int | None = None  # the last step whose temperature or masks changed
        self._stale_since: int | None = None  # step after which the BatchNorm statistics lag the model
        self._folded = -1  # the step whose extra loss a forward already added to the model's output loss

    def maybe_partition(self) -> bool:
        """Run mode partition if it is due at the current step and has not run; returns whether it ran."""
        if self.partitioned or self.partition_at is None or self.step < self.partition_at:
            return False
        self.report = self._partition()
        self.partitioned = True
        self.masks_changed()
        return True

    def masks_changed(self) -> None:
        """Note that the masks changed at the current step (a partition, or masks set by hand), so the BatchNorm
        statistics are re-estimated after this step unless the anneal goes on."""
        self._changed = self.step

    def before_step(self) -> None:
        """Partition when due, then the method's per-step work (temperature annealing)."""
        self.maybe_partition()
        self.method.before_step(self.step)
        if self.method.anneals(self.step):
            self._changed = self.step

    def extra_loss(self) -> torch.Tensor | float:
        """The method's loss terms for this step (0.0 when none, or when the model's output loss already holds
        them: [`padnet.PadModel`][padnet.adapter.model.PadModel] adds them to a Hugging Face output's `loss`)."""
        if self._folded == self.step:
            return 0.0
        extra = self.method.extra_loss(self.step)
        return 0.0 if extra is None else extra

    def fold(self) -> torch.Tensor | None:
        """The extra loss, marked as added to the model's output for this step (used by PadModel's forward)."""
        extra = self.method.extra_loss(self.step)
        self._folded = self.step
        return extra

    def after_step(self) -> None:
        """The method's work after the optimiser step (SD-Conv thresholds), the BatchNorm statistics when the
        step ended a change (the anneal's last step, or a partition after the anneal), then the next step."""
        self.method.after_step(self.step)
        if self._changed == self.step and self._change_ends():
            self.refresh_statistics()
        self.step += 1

    def _change_ends(self) -> bool:
        """Whether the change at this step is the last for now: the anneal does not go on and no partition is
        due at the next step, or the run ends here."""
        last = self.method.total_steps is not None and self.step + 1 >= self.method.total_steps
        partition_next = (
            not self.partitioned and self.partition_at is not None and self.partition_at <= self.step + 1
        )
        return last or not (self.method.anneals(self.step + 1) or partition_next)

    @property
    def can_recalibrate(self) -> bool:
        """Whether this run holds batches to re-estimate the BatchNorm statistics on."""
        return self._recalibrate is not None

    def refresh_statistics(self) -> int:
        """Re-estimate the BatchNorm running statistics now (with `recalibrate`; without it they are marked
        stale). Returns the number of BatchNorm layers re-estimated."""
        if self._recalibrate is None:
            self._stale_since = self.step + 1
            return 0
        self._stale_since = None
        return self._recalibrate()

    def statistics_fresh(self) -> None:
        """Mark the BatchNorm statistics as matching the model (they were re-estimated outside this object)."""
        self._stale_since = None
        self._changed = None

    def stale_statistics(self) -> bool:
        """Whether the BatchNorm running statistics still lag a change of the layers: it was not followed by a
        re-estimation, and fewer training steps than [`catch_up_steps`][padnet.adapter.statistics.catch_up_steps] ran
        since."""
        if self._changed is not None and self._changed >= self.step:  # changed since the last training step
            return bool(catch_up_steps(self.model))
        if self._stale_since is None:
            return False
        return self.step - self._stale_since < catch_up_steps(self.model)

    def warn_if_stale(self) -> None:
        """Warn (once per change) when evaluating now would use stale BatchNorm statistics."""
        if self.stale_statistics():
            since = self.step - (self._stale_since if self._stale_since is not None else self.step)
            warnings.warn(
                f"padnet: the BatchNorm running statistics were gathered while the layers changed (temperature "
                f"anneal or mode partition, {since} training step(s) since) and evaluation may predict one class "
                "for every input; call pad.recalibrate_batchnorm(batches) with a few training batches before "
                "evaluating, or pass partition_data to start_training so this happens by itself",
                stacklevel=4,
            )  # the user's eval() call: warn_if_stale ← PadModel.train ← nn.Module.eval
            self._stale_since = self._changed = None

    def optimizer_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Trainable parameters of `model` for the main optimiser (the method's own ones left out)."""
        own = {id(p) for p in self.method.own_parameters(model)}
        return [p for p in model.parameters() if p.requires_grad and id(p) not in own]

    def log(self) -> dict:
        """Scalars for this point of training (temperature; SD-Conv sparsity and budget)."""
        return self.method.log(self.step)
