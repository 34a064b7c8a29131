"""Mode partition (PAD-Net eq. 5–9): scores and the iterative schedule."""

from padnet.partitioning.imp import (
    DEFAULT_KAPPA,
    MAX_ALIGN,
    METHODS,
    SCOPES,
    PartitionReport,
    apply_partition,
    check_dynamic_elements,
    check_kappa,
    make_report,
    partition,
)
from padnet.partitioning.scores import magnitude_scores, masked_tensors, random_scores, snip_scores

__all__ = [
    "DEFAULT_KAPPA",
    "MAX_ALIGN",
    "METHODS",
    "SCOPES",
    "PartitionReport",
    "apply_partition",
    "check_dynamic_elements",
    "check_kappa",
    "magnitude_scores",
    "make_report",
    "masked_tensors",
    "partition",
    "random_scores",
    "snip_scores",
]
