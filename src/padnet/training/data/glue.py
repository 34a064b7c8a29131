"""Readers for the eight GLUE tasks (Wang et al., 2019) from the two usual on-disk layouts.

GLUE is described in "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language
Understanding" (Wang et al., 2019). Two layouts are read:

* the official TSV layout written by the GLUE download script: `<root>/<TaskDir>/train.tsv`,
  `dev.tsv` (MNLI: `dev_matched.tsv`, `dev_mismatched.tsv`), with TaskDir one of CoLA, SST-2,
  MRPC, STS-B, QQP, MNLI, QNLI, RTE;
* the Hugging Face `nyu-mll/glue` parquet layout: `<root>/<task>/<split>-*.parquet` with task one
  of cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte (several shards are concatenated in name order).

Both give the same [`TextPairs`][padnet.training.data.glue.TextPairs]; string labels of the TSV files are mapped to the Hugging Face
ids (MNLI entailment 0, neutral 1, contradiction 2; QNLI and RTE entailment 0, not_entailment 1).
Only labelled splits are read: the GLUE test sets have no public labels.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from padnet.errors import ConfigError, DataError, check_choice


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    Attributes:
        name: Hugging Face config name (`cola`, `sst2`, ...).
        text_keys: one or two text column names of the Hugging Face layout, in model input order.
        num_labels: number of classes; 1 for the STS-B regression.
        metrics: metric names reported for the task (see [`padnet.training.nlp.glue_metrics.glue_metrics`][padnet.training.nlp.glue_metrics.glue_metrics]).
        eval_splits: labelled evaluation splits (`("validation",)`; MNLI matched and mismatched).
    """

    name: str
    text_keys: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...]


@dataclass
class TextPairs:
    """Examples of one split.

    Attributes:
        texts: one tuple per example holding one (single-sentence tasks) or two strings.
        labels: one label per example: class ids (int) or, for STS-B, similarity scores (float in 0-5).
    """

    texts: list[tuple[str, ...]]
    labels: list[int] | list[float]

    def __len__(self) -> int:
        return len(self.texts)


_VAL = ("validation",)
_MNLI_VAL = ("validation_matched", "validation_mismatched")

GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("cola", ("sentence",), 2, ("matthews_correlation",), _VAL),
    "sst2": GlueTask("sst2", ("sentence",), 2, ("accuracy",), _VAL),
    "mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), _VAL),
    "stsb": GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"), _VAL),
    "qqp": GlueTask("qqp", ("question1", "question2"), 2, ("accuracy", "f1"), _VAL),
    "mnli": GlueTask("mnli", ("premise", "hypothesis"), 3, ("accuracy",), _MNLI_VAL),
    "qnli": GlueTask("qnli", ("question", "sentence"), 2, ("accuracy",), _VAL),
    "rte": GlueTask("rte", ("sentence1", "sentence2"), 2, ("accuracy",), _VAL),
}

_TEST_SPLITS = ("test", "test_matched", "test_mismatched")
_TSV_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}

_BINARY = {"0": 0, "1": 1}
_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_NLI2 = {"entailment": 0, "not_entailment": 1}


@dataclass(frozen=True)
class _TsvSpec:
    """Where the texts and label of a task sit in its GLUE TSV files."""

    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: dict[str, int] | None  # string label -> id; None: a float score
    header: tuple[str, ...] | None = None  # column names of a header-less file


_TSV: dict[str, _TsvSpec] = {
    "cola": _TsvSpec("CoLA", ("sentence",), "label", _BINARY, ("source", "label", "mark", "sentence")),
    "sst2": _TsvSpec("SST-2", ("sentence",), "label", _BINARY),
    "mrpc": _TsvSpec("MRPC", ("#1 String", "#2 String"), "Quality", _BINARY),
    "stsb": _TsvSpec("STS-B", ("sentence1", "sentence2"), "score", None),
    "qqp": _TsvSpec("QQP", ("question1", "question2"), "is_duplicate", _BINARY),
    "mnli": _TsvSpec("MNLI", ("sentence1", "sentence2"), "gold_label", _NLI3),
    "qnli": _TsvSpec("QNLI", ("question", "sentence"), "label", _NLI2),
    "rte": _TsvSpec("RTE", ("sentence1", "sentence2"), "label", _NLI2),
}


# ----------------------------------------------------------------------------------------- public API


def glue_task(task: str) -> GlueTask:
    """Return the [`GlueTask`][padnet.training.data.glue.GlueTask] named `task`; ConfigError listing the eight names if unknown."""
    check_choice("GLUE task", task, tuple(GLUE_TASKS))
    return GLUE_TASKS[task]


def glue_splits(task: str) -> tuple[str, ...]:
    """Labelled split names of `task` (Hugging Face names): `train` then its evaluation splits."""
    return ("train", *glue_task(task).eval_splits)


def load_glue(task: str, split: str, root: str | os.PathLike) -> TextPairs:
    """Read one labelled split of a GLUE task (Wang et al., 2019) from TSV or parquet files.

    Args:
        task: `cola`, `sst2`, `mrpc`, `stsb`, `qqp`, `mnli`, `qnli` or `rte`.
        split: Hugging Face split name: `train`, `validation` (MNLI: `validation_matched`,
            `validation_mismatched`). TSV files used: train.tsv, dev.tsv, dev_matched.tsv,
            dev_mismatched.tsv.
        root: folder holding `<task>/` (Hugging Face `nyu-mll/glue` parquet layout) or `<TaskDir>/`
            (GLUE TSV layout, e.g. `SST-2`), or that task folder itself.

    Returns:
        [`TextPairs`][padnet.training.data.glue.TextPairs] with N examples: `texts` N tuples of 1 or 2 str (order of
            `GLUE_TASKS[task].text_keys`), `labels` N ints in `[0, num_labels)` or, for STS-B, N floats.
            Both layouts give the same ids.

    Raises:
        ConfigError: unknown task or split, or a test split (no public labels).
        DataError: no data file for the split in either layout, a missing column, an unparseable or
            out-of-range label, a row with the wrong number of fields, an empty or unreadable file,
            or pyarrow missing for parquet files.
    """
    spec = glue_task(task)
    _check_split(spec, split)
    layout, files = _locate(spec, split, Path(root))
    if layout == "parquet":
        return _read_parquet(spec, files)
    return _read_tsv(spec, files[0])


# ------------------------------------------------------------------------------------------- locating


def _check_split(spec: GlueTask, split: str) -> None:
    splits = ("train", *spec.eval_splits)
    if split in _TEST_SPLITS:
        choices = ", ".join(splits)
        raise ConfigError(f"GLUE {spec.name} split {split!r} has no public labels; choose from {choices}")
    check_choice(f"GLUE {spec.name} split", split, splits)


def _candidate_folders(spec: GlueTask, root: Path) -> list[Path]:
    """`<root>/<task>`, `<root>/<TaskDir>` and, when its name is the task's, `root` itself."""
    tsv_folder = _TSV[spec.name].folder
    folders = [root / spec.name, root / tsv_folder]
    if root.name.lower() in (spec.name, tsv_folder.lower()):
        folders.append(root)
    return folders


def _locate(spec: GlueTask, split: str, root: Path) -> tuple[str, list[Path]]:
    """Find the files of one split: `("parquet", shards)` or `("tsv", [file])`."""
    if not root.is_dir():
        raise DataError(f"GLUE data folder {root} does not exist or is not a folder")
    for folder in _candidate_folders(spec, root):
        shards = sorted(folder.glob(f"{split}-*.parquet"), key=lambda p: p.name)
        if shards:
            return "parquet", shards
        tsv = folder / _TSV_FILES[split]
        if tsv.is_file():
            return "tsv", [tsv]
    parquet_wanted = root / spec.name / f"{split}-*.parquet"
    tsv_wanted = root / _TSV[spec.name].folder / _TSV_FILES[split]
    raise DataError(
        f"no GLUE {spec.name} {split} data under {root}: looked for {parquet_wanted} "
        f"(Hugging Face parquet layout) and {tsv_wanted} (GLUE TSV layout)"
    )


# ------------------------------------------------------------------------------------------------ TSV


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, quoting disabled (sentences hold quote marks)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                if row and any(row):
                    yield reader.line_num, row
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as UTF-8 TSV: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _column_index(header: list[str] | tuple[str, ...], name: str, path: Path) -> int:
    if name not in header:
        raise DataError(f"column {name!r} missing from {path} (header: {' | '.join(header)})")
    return header.index(name)


def _parse_label(raw: str, labels: dict[str, int] | None, where: str) -> int | float:
    """Map a TSV label string to its id, or parse an STS-B score."""
    if labels is not None:
        if raw not in labels:
            raise DataError(f"unparseable label {raw!r} at {where}; expected one of {', '.join(labels)}")
        return labels[raw]
    try:
        score = float(raw)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise DataError(f"unparseable score {raw!r} at {where}; expected a number")
    return _check_score(score, where)


def _check_score(score: float, where: str) -> float:
    """An STS-B similarity score, which lies in [0, 5]; DataError otherwise."""
    if not 0.0 <= score <= 5.0:
        raise DataError(f"STS-B score {score:g} at {where} is outside [0, 5]")
    return score


def _read_tsv(spec: GlueTask, path: Path) -> TextPairs:
    """Read one GLUE TSV file, finding columns by header name (CoLA: fixed header-less columns)."""
    tsv = _TSV[spec.name]
    rows = _tsv_rows(path)
    header: list[str] | tuple[str, ...] | None = tsv.header
    if header is None:
        first = next(rows, None)
        if first is None:
            raise DataError(f"GLUE file {path} is empty")
        header = first[1]
    text_index = [_column_index(header, name, path) for name in tsv.text_columns]
    label_index = _column_index(header, tsv.label_column, path)
    texts: list[tuple[str, ...]] = []
    labels: list = []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path} line {line} has {len(row)} tab-separated fields, expected {len(header)}")
        texts.append(tuple(row[i] for i in text_index))
        labels.append(_parse_label(row[label_index], tsv.labels, f"{path} line {line}"))
    if not texts:
        raise DataError(f"GLUE file {path} is empty (no examples)")
    return TextPairs(texts, labels)


# -------------------------------------------------------------------------------------------- parquet


def _read_shard(path: Path, columns: list[str]) -> dict[str, list]:
    """Columns of one parquet file as Python lists."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        names = pq.read_schema(path).names
        for name in columns:
            if name not in names:
                raise DataError(f"column {name!r} missing from {path} (columns: {', '.join(names)})")
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read parquet file {path}: {exc}".replace("\n", " ")) from None
    return {name: _column_values(table.column(name)) for name in columns}


def _column_values(column) -> list:
    """Python values of an arrow column; float32 (the Hugging Face STS-B label type) as its shortest
    decimal, so 3.8 reads 3.8 (as in the TSV file), not 3.799999952316284."""
    import pyarrow as pa

    values = column.to_pylist()
    if pa.types.is_float32(column.type):
        values = [None if v is None else float(str(np.float32(v))) for v in values]
    return values


def _check_texts(values: list, name: str, path: Path) -> None:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"column {name!r} of {path} row {i} holds {value!r}, expected a string")


def _parquet_label(value, spec: GlueTask, where: str) -> int | float:
    """Check one Hugging Face label: an int id in range, or a finite float for STS-B."""
    if spec.num_labels == 1:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return _check_score(float(value), where)
        raise DataError(f"unparseable score {value!r} at {where}; expected a number")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < spec.num_labels:
        return value
    raise DataError(f"unparseable label {value!r} at {where}; expected an int in 0..{spec.num_labels - 1}")


def _read_parquet(spec: GlueTask, shards: list[Path]) -> TextPairs:
    """Read and concatenate the parquet shards of one split."""
    texts: list[tuple[str, ...]] = []
    labels: list = []
    for path in shards:
        data = _read_shard(path, [*spec.text_keys, "label"])
        for name in spec.text_keys:
            _check_texts(data[name], name, path)
        texts.extend(zip(*(data[name] for name in spec.text_keys)))
        labels.extend(_parquet_label(v, spec, f"{path} row {i}") for i, v in enumerate(data["label"]))
    if not texts:
        raise DataError(f"GLUE parquet files {', '.join(str(p) for p in shards)} are empty (no examples)")
    return TextPairs(texts, labels)
