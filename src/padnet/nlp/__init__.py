"""Mixture-of-Experts and PAD-MoE for Hugging Face encoders: conversion with sparse upcycling, fine-tuning on
GLUE and Rotten Tomatoes, and save / load in the compact form. Needs the ``nlp`` extra (transformers,
accelerate) only for fine-tuning and loading; conversion works on any ``nn.Module``."""

from ..moe_convert import FFN_PATTERNS, auxiliary_loss, find_ffns, moe_layers
from .finetune import task_loss
from .pretrained import from_pretrained, save_pretrained

__all__ = ["FFN_PATTERNS", "auxiliary_loss", "find_ffns", "from_pretrained",
           "moe_layers", "save_pretrained", "task_loss"]
