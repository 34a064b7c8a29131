"""Mixture-of-Experts and PAD-MoE for Hugging Face encoders: fine-tuning on GLUE, Rotten Tomatoes and your own
text files (conversion: `padnet.get_pad_model`; save / load: `padnet.save_pretrained` /
`padnet.load_pretrained`). Needs the `nlp` extra (transformers, accelerate) only for fine-tuning and
loading; conversion works on any `nn.Module`."""

from padnet.adapter.moe_convert import FFN_PATTERNS, find_ffns
from padnet.layers.moe import auxiliary_loss, moe_layers
from padnet.training.nlp.finetune import task_loss

__all__ = ["FFN_PATTERNS", "auxiliary_loss", "find_ffns", "moe_layers", "task_loss"]
