"""The official GLUE metrics (Wang et al., 2019), computed with scikit-learn and scipy.

From "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding"
(Wang et al., 2019): Matthews correlation for CoLA; accuracy for SST-2, MNLI, QNLI and RTE; accuracy
and F1 (positive class 1) for MRPC and QQP; Pearson and Spearman correlation for STS-B. A task's
`score` is the mean of its metrics, as on the GLUE leaderboard. Values are plain floats (not x100).
"""

from __future__ import annotations

from collections.abc import Sequence

from padnet.errors import ConfigError, check_choice


def _accuracy(predictions: Sequence, references: Sequence) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(references, predictions))


def _f1(predictions: Sequence, references: Sequence) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0))


def _matthews(predictions: Sequence, references: Sequence) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(references, predictions))


def _pearson(predictions: Sequence, references: Sequence) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr([float(p) for p in predictions], [float(r) for r in references])[0])


def _spearman(predictions: Sequence, references: Sequence) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr([float(p) for p in predictions], [float(r) for r in references])[0])


_METRIC_FUNCTIONS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": _pearson,
    "spearmanr": _spearman,
}


def _as_list(values, name: str) -> list:
    """A plain list from a list, tuple, numpy array or 1-D tensor (`tolist` where there is one)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    try:
        return list(values)
    except TypeError:
        raise ConfigError(f"GLUE {name} must be a sequence, got {type(values).__name__}") from None


def glue_metrics(task: str, predictions, references) -> dict[str, float]:
    """Official GLUE metrics of one task (Wang et al., 2019).

    Args:
        task: `cola`, `sst2`, `mrpc`, `stsb`, `qqp`, `mnli`, `qnli` or `rte`.
        predictions: N predicted class ids (ints), or N floats for `stsb`; list, tuple, numpy array or
            1-D tensor.
        references: N gold labels, same kinds.

    Returns:
        `{metric: value}` with the task's metrics (cola `matthews_correlation`; sst2, mnli, qnli, rte
            `accuracy`; mrpc, qqp `accuracy` and `f1` of class 1; stsb `pearson` and `spearmanr`)
            plus `score`, their mean. Plain floats in [-1, 1] (correlations) or [0, 1]; a correlation is
            nan when either side is constant.

    Raises:
        ConfigError: unknown task, predictions and references of different lengths or empty, or
            scikit-learn / scipy missing.
    """
    from padnet.training.data.glue import GLUE_TASKS

    check_choice("GLUE task", task, tuple(GLUE_TASKS))
    return task_metrics(GLUE_TASKS[task].metrics, predictions, references, f"GLUE {task}")


def task_metrics(metrics, predictions, references, what: str = "metrics") -> dict[str, float]:
    """The named `metrics` (keys of the GLUE metric table: `accuracy`, `f1`, `matthews_correlation`,
    `pearson`, `spearmanr`) plus `score`, their mean, for any task scored like a GLUE task.

    Raises:
        ConfigError: as [`glue_metrics`][padnet.training.nlp.glue_metrics.glue_metrics] (`what` names the
            task in the messages).
    """
    preds = _as_list(predictions, "predictions")
    refs = _as_list(references, "references")
    if len(preds) != len(refs):
        raise ConfigError(f"{what}: {len(preds)} predictions but {len(refs)} references; lengths must match")
    if not preds:
        raise ConfigError(f"{what}: no predictions to score (empty inputs)")
    try:
        values = {name: _METRIC_FUNCTIONS[name](preds, refs) for name in metrics}
    except ImportError as exc:
        missing = f"GLUE metrics need scikit-learn and scipy: pip install 'padnet[nlp]' ({exc})"
        raise ConfigError(missing) from None
    values["score"] = sum(values.values()) / len(values)
    return values
