"""Training engine: schedules, checkpoints and the image-classification trainer."""

from padnet.training.engine.checkpoint import (
    load_model_state,
    read_checkpoint,
    restore_training,
    save_checkpoint,
)
from padnet.training.engine.schedule import warmup_cosine
from padnet.training.engine.trainer import Trainer, build_model, evaluate

__all__ = [
    "Trainer",
    "build_model",
    "evaluate",
    "load_model_state",
    "read_checkpoint",
    "restore_training",
    "save_checkpoint",
    "warmup_cosine",
]
