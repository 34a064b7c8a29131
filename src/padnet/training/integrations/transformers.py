"""`PadTrainerCallback`: a PadModel's method inside the transformers `Trainer`.

Usage:

```python
pad = padnet.get_pad_model(model, padnet.PadConfig(method="pad-moe", kappa=0.5))
args = TrainingArguments(..., remove_unused_columns=False)   # PadModel.forward takes **kwargs
trainer = Trainer(model=pad, args=args, train_dataset=train, data_collator=collator,
                  callbacks=[PadTrainerCallback(pad, partition_data=batches)])
trainer.train()
```

The callback calls `start_training` when training begins (optimiser steps per epoch from the train dataloader
and the gradient accumulation, total steps from the Trainer's state, the step reached when resuming), then
`before_step` when an optimiser step begins and `after_step` right after `optimizer.step()` (before the
Trainer zeroes the gradients, so SD-Conv's thresholds get theirs). The method's extra loss (MoE load balancing)
reaches the Trainer's loss because [`padnet.PadModel`][padnet.adapter.model.PadModel] adds it to the model output's `loss` while
training. Keep `remove_unused_columns=False`: the Trainer reads the columns a model takes from its
`forward` signature, and PadModel's is `(*args, **kwargs)`. For SD-Conv, build the Trainer's optimiser from
`pad.optimizer_parameters()` (`optimizers=(torch.optim.AdamW(pad.optimizer_parameters()), None)`); the
thresholds' own optimiser state is not part of the Trainer's checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from transformers import TrainerCallback

from padnet.adapter.model import PadModel


class PadTrainerCallback(TrainerCallback):
    """Runs `pad`'s training hooks in a transformers `Trainer`.

    Args:
        pad: the [`padnet.PadModel`][padnet.adapter.model.PadModel] the Trainer trains.
        partition_data: batches for mode partition when it is due (keyword dicts with `labels`; IMP and MP
            need them, and their absence is an error when training starts).
        loss_fn: as [`padnet.PadModel.partition`][padnet.adapter.model.PadModel.partition].
        batch_loss: as [`padnet.PadModel.partition`][padnet.adapter.model.PadModel.partition].
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

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        accumulation = max(1, args.gradient_accumulation_steps)
        if train_dataloader is not None and hasattr(train_dataloader, "__len__"):
            steps_per_epoch = math.ceil(len(train_dataloader) / accumulation)
        else:  # an iterable dataset: the Trainer runs max_steps
            steps_per_epoch = None
        self.pad.start_training(
            steps_per_epoch=steps_per_epoch,
            total_steps=state.max_steps or None,
            partition_data=self.partition_data,
            loss_fn=self.loss_fn,
            batch_loss=self.batch_loss,
            step=state.global_step,
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self.pad.before_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.pad.after_step()
