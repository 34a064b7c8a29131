"""Accounting (parameters, FLOPs) in the papers' conventions."""

from padnet.metrics.counting import count_flops, count_parameters

__all__ = ["count_flops", "count_parameters"]
