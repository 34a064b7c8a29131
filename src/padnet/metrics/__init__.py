"""Accounting (parameters, FLOPs) and evaluation metrics."""

from .counting import count_flops, count_parameters, layer_table

__all__ = ["count_flops", "count_parameters", "layer_table"]
