"""Mixture-of-Experts and PAD-MoE for Hugging Face encoders: fine-tuning on GLUE, Rotten Tomatoes and your own
text files (conversion: ``padnet.get_pad_model``; save / load: ``padnet.save_pretrained`` /
``padnet.load_pretrained``). Needs the ``nlp`` extra (transformers, accelerate) only for fine-tuning and
loading; conversion works on any ``nn.Module``."""

from ..moe_convert import FFN_PATTERNS, auxiliary_loss, find_ffns, moe_layers
from .finetune import task_loss

__all__ = ["FFN_PATTERNS", "auxiliary_loss", "find_ffns", "moe_layers", "task_loss"]
