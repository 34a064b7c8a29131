"""BatchNorm running statistics that match the model they normalise.

A BatchNorm layer evaluates with running statistics gathered, with momentum, over the training steps before.
Dynamic layers change what they compute faster than that average follows: the attention temperature falls from
30 to 1 during the anneal (Chen et al. 2020) and mode partition (PAD-Net eq. 5–9) turns most dynamic elements
static at once. Evaluated right after such a change, a model normalises with statistics of a model that no
longer exists and can predict one class for every input. [`recalibrate_batchnorm`][padnet.adapter.statistics.recalibrate_batchnorm] re-estimates them on a
few training batches; [`PadTraining`][padnet.adapter.methods.PadTraining] calls it when the anneal ends or a partition
changes the masks, and [`catch_up_steps`][padnet.adapter.statistics.catch_up_steps] says how long the running average takes to forget a change.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from padnet.errors import DataError, first_line

STALE_FRACTION = 0.05  # running statistics count as stale while the old model weighs more than this in them


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics."""
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def catch_up_steps(model: nn.Module) -> float:
    """Training steps after which every BatchNorm running average of `model` weighs a past change less than
    `STALE_FRACTION` (momentum m: the smallest n with (1 − m)ⁿ < 0.05, 29 for PyTorch's default 0.1); 0 without
    BatchNorm, `inf` when a layer averages cumulatively (`momentum=None`) and so never forgets."""
    steps = 0.0
    for layer in batchnorm_layers(model):
        momentum = layer.momentum
        if momentum is None or momentum <= 0:
            return math.inf
        steps = max(
            steps, 1.0 if momentum >= 1 else math.ceil(math.log(STALE_FRACTION) / math.log(1 - momentum))
        )
    return steps


class _Keywords(nn.Module):
    """Calls `model(**batch)` for keyword batches (Hugging Face style) inside `update_bn`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping) -> object:
        return self.model(**batch)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Iterable) -> int:
    """Re-estimate every BatchNorm running mean and variance of `model` on `data`, as the model is now.

    The statistics are reset and averaged over all of `data` with equal weight per batch (torch's
    `torch.optim.swa_utils.update_bn`, the same re-estimation SWA uses after averaging weights); the model's
    train/eval mode and each layer's momentum are kept. Use it before evaluating a model whose layers changed
    faster than the running averages follow: after the temperature anneal or a mode partition. For a
    [`padnet.PadModel`][padnet.adapter.model.PadModel] call its [`recalibrate_batchnorm`][padnet.adapter.model.PadModel.recalibrate_batchnorm], which also tells its
    training hooks.

    Args:
        model: any module.
        data: batches: input tensors (N, ...), `(inputs, targets)` pairs, or keyword dicts for a Hugging Face
            model, on the model's device. Training batches without augmentation are best; a few (e.g. the
            partition batches) suffice.

    Returns the number of BatchNorm layers re-estimated (0: the model has none, and `data` is not read).

    Raises:
        DataError: `data` holds no batch, or a batch the model cannot take (the statistics, momenta and mode
            are then left as they were).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    batches = iter(data)
    first = next(batches, None)
    if first is None:
        raise DataError("recalibrate_batchnorm got no batches to re-estimate the BatchNorm statistics on")
    saved = [(layer.momentum, {k: v.clone() for k, v in layer.state_dict().items()}) for layer in layers]
    was_training = model.training
    try:
        update_bn(
            itertools.chain([first], batches), _Keywords(model) if isinstance(first, Mapping) else model
        )
    except BaseException as exc:  # an interrupted re-estimation leaves the statistics as they were too
        for layer, (momentum, state) in zip(layers, saved):
            layer.load_state_dict(state)
            layer.momentum = momentum
        if isinstance(exc, Exception):
            raise DataError(
                f"a batch for recalibrate_batchnorm does not fit the model: {first_line(exc)}"
            ) from exc
        raise
    finally:
        model.train(was_training)
    return len(layers)
