"""`PadCallback`: a PadModel's method inside a Lightning `Trainer` (the `lightning` extra).

Usage:

```python
class Module(L.LightningModule):
    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def training_step(self, batch, i):
        x, y = batch
        return F.cross_entropy(self.pad(x), y) + self.pad.extra_loss()   # the method's loss terms

    def configure_optimizers(self):
        return torch.optim.SGD(self.pad.optimizer_parameters(), lr=0.1)

L.Trainer(max_epochs=3, callbacks=[PadCallback(pad, partition_data=loader)]).fit(Module(pad), loader)
```

The callback calls `start_training` when fitting starts (steps per epoch and total steps from the Trainer, the
step reached when resuming), `before_step` before every training batch and `after_step` after it (Lightning
runs the optimiser step before `on_train_batch_end` with automatic optimisation). Gradient accumulation is
refused: the hooks count optimiser steps. The thresholds' own optimiser state (SD-Conv) is not part of
Lightning's checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import lightning as L

from padnet.adapter.model import PadModel
from padnet.errors import ConfigError


class PadCallback(L.Callback):
    """Runs `pad`'s training hooks in a Lightning `Trainer`.

    Args:
        pad: the [`padnet.PadModel`][padnet.adapter.model.PadModel] the LightningModule trains.
        partition_data: the batches mode partition gets when it is due (`data` of
            [`padnet.PadModel.partition`][padnet.adapter.model.PadModel.partition]).
        loss_fn: the `loss_fn` mode partition gets when it is due (see
            [`padnet.PadModel.partition`][padnet.adapter.model.PadModel.partition]).
        batch_loss: the `batch_loss` mode partition gets when it is due (see
            [`padnet.PadModel.partition`][padnet.adapter.model.PadModel.partition]).
    """

    def __init__(
        self,
        pad: PadModel,
        partition_data: Iterable | None = None,
        loss_fn: Callable | None = None,
        batch_loss: Callable | None = None,
    ):
        self.pad, self.partition_data, self.loss_fn, self.batch_loss = (
            pad,
            partition_data,
            loss_fn,
            batch_loss,
        )

    def on_train_start(self, trainer, pl_module):
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError("PadCallback counts optimiser steps: use accumulate_grad_batches=1")
        total = trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else None
        per_epoch = trainer.num_training_batches
        per_epoch = int(per_epoch) if math.isfinite(per_epoch) else None
        self.pad.start_training(
            steps_per_epoch=per_epoch,
            total_steps=total,
            partition_data=self.partition_data,
            loss_fn=self.loss_fn,
            batch_loss=self.batch_loss,
            step=trainer.global_step,
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.pad.before_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.pad.after_step()
