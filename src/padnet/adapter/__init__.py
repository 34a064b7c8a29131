"""One entry point for every method: `PadConfig` → `get_pad_model` → `PadModel` (convert, train with
`PadTraining` callbacks, partition, merge, save and load), for padnet's models and yours."""

from padnet.adapter.config import PadConfig
from padnet.adapter.methods import PadTraining
from padnet.adapter.model import PadModel, convert, get_pad_model, load_pretrained, save_pretrained

__all__ = [
    "PadConfig",
    "PadModel",
    "PadTraining",
    "convert",
    "get_pad_model",
    "load_pretrained",
    "save_pretrained",
]
