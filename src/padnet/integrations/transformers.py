"""``PadTrainerCallback``: a PadModel's method inside the transformers ``Trainer``.

Usage::

    pad = padnet.get_pad_model(model, padnet.PadConfig(method="pad-moe", kappa=0.5))
    trainer = Trainer(model=pad, args=args, train_dataset=train, data_collator=collator,
                      callbacks=[PadTrainerCallback(pad, partition_data=batches)])
    trainer.train()

The callback calls ``start_training`` when training begins (steps per epoch and total steps from the Trainer's
state), then ``before_step`` / ``after_step`` around every optimiser step. The method's extra loss (MoE
load balancing) reaches the Trainer's loss because :class:`padnet.PadModel` adds it to the model output's
``loss`` while training. Methods whose parameters need an optimiser of their own (SD-Conv) are stepped in
``after_step``; build the Trainer's optimiser from ``pad.optimizer_parameters()`` for them
(``optimizers=(torch.optim.AdamW(pad.optimizer_parameters()), None)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from transformers import TrainerCallback

from ..adapter import PadModel


class PadTrainerCallback(TrainerCallback):
    """Runs ``pad``'s training hooks in a transformers ``Trainer``.

    Args:
        pad: the :class:`padnet.PadModel` the Trainer trains.
        partition_data: batches for mode partition when it is due (keyword dicts with ``labels``; default:
            nothing, so a partition due in training raises ConfigError at the start).
        loss_fn, batch_loss: as :meth:`padnet.PadModel.partition`.
    """

    def __init__(self, pad: PadModel, partition_data: Iterable | None = None, loss_fn: Callable | None = None,
                 batch_loss: Callable | None = None):
        self.pad, self.partition_data, self.loss_fn, self.batch_loss = pad, partition_data, loss_fn, batch_loss

    def on_train_begin(self, args, state, control, **kwargs):
        epochs = max(1.0, float(args.num_train_epochs))
        steps_per_epoch = max(1, round(state.max_steps / epochs)) if state.max_steps > 0 else None
        self.pad.start_training(steps_per_epoch=steps_per_epoch, total_steps=state.max_steps or None,
                                partition_data=self.partition_data, loss_fn=self.loss_fn,
                                batch_loss=self.batch_loss, step=state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.pad.before_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.pad.after_step()
