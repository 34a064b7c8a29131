"""Analyses of trained models: aggregated-kernel statistics and magnitude pruning (SD-Conv §3.1),
robustness to input noise (SD-Conv Table 3) and transfer by fine-tuning (SD-Conv Fig. 4)."""

from padnet.experiments.analysis.kernels import aggregated_kernel_stats, magnitude_prune
from padnet.experiments.analysis.robustness import noise_accuracy
from padnet.experiments.analysis.transfer import fine_tune

__all__ = ["aggregated_kernel_stats", "fine_tune", "magnitude_prune", "noise_accuracy"]
