"""A text-classification task from your own files: CSV, TSV, JSON Lines or parquet, with named columns.

`root` is either a folder holding `train.<ext>` and `validation.<ext>` (`val` / `dev` / `test` are
accepted for the evaluation split), or one file, whose rows are split as Rotten Tomatoes is (row i goes to
validation when i % 10 == 9). `text_columns` name one or two text columns (a sentence pair), `label_column`
the label: integers 0…K−1 are used as they are; any other labels (strings, or integers that are not 0…K−1)
become ids in sorted order of the training split's values. CSV quoting follows RFC 4180 (Python's `csv`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from padnet.errors import ConfigError, DataError
from padnet.saving.fileio import parse_json
from padnet.training.data.glue import GlueTask, TextPairs

FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
EVAL_NAMES = ("validation", "val", "dev", "test")


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV / TSV (header line first), JSON Lines or parquet file as dicts.

    Raises:
        DataError: an unreadable or malformed file (naming the line of a bad JSON row), or pyarrow missing for
            parquet.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError("reading parquet files needs pyarrow (pip install pyarrow)") from None
            return pq.read_table(str(path)).to_pylist()
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a byte-order mark is not part of a name
            if suffix == ".jsonl":
                rows = []
                for number, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            row = parse_json(line)
                        except ValueError:
                            raise DataError(f"{path}: line {number} is not valid JSON") from None
                        if not isinstance(row, dict):
                            raise DataError(f"{path}: line {number} is not a JSON object")
                        rows.append(row)
                return rows
            return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read {path}: {reason}") from None


def _files(root: Path) -> tuple[Path, Path | None]:
    """(train file, evaluation file or None for a single file)."""
    if root.is_file():
        if root.suffix.lower() not in FORMATS:
            raise DataError(f"{root} is not a {', '.join(FORMATS)} file")
        return root, None
    if not root.is_dir():
        raise DataError(f"text data not found: {root}")
    found = {p.stem.lower(): p for p in sorted(root.iterdir()) if p.suffix.lower() in FORMATS}
    if "train" not in found:
        raise DataError(f"{root} has no train file ({', '.join('train' + f for f in FORMATS)})")
    evaluation = next((found[n] for n in EVAL_NAMES if n in found), None)
    if evaluation is None:
        raise DataError(
            f"{root} has no evaluation file (validation, val, dev or test with {', '.join(FORMATS)})"
        )
    return found["train"], evaluation


def _examples(rows: list[dict], path: Path, text_columns: tuple[str, ...], label_column: str):
    if not rows:
        raise DataError(f"{path} has no rows")
    missing = [c for c in (*text_columns, label_column) if c not in rows[0]]
    if missing:
        raise DataError(f"{path} has no column {missing[0]!r}; its columns: {', '.join(map(str, rows[0]))}")
    texts, labels = [], []
    for i, row in enumerate(rows):
        values = tuple(row.get(c) for c in text_columns)
        if any(not isinstance(v, str) or not v.strip() for v in values):
            raise DataError(f"{path}: row {i + 1} has an empty or missing text in {', '.join(text_columns)}")
        label = row.get(label_column)
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{path}: row {i + 1} has no label in {label_column!r}")
        if not isinstance(label, (str, int, float)) or isinstance(label, bool):
            raise DataError(f"{path}: row {i + 1} has a label that is not a string or a number: {label!r}")
        texts.append(values)
        labels.append(label.strip() if isinstance(label, str) else label)
    return texts, labels


def _label_ids(labels: list) -> dict:
    """Label value -> id: integers 0…K−1 kept, anything else numbered in sorted order."""
    values = set(labels)
    as_ints = {}
    for v in values:
        try:
            as_ints[v] = int(v) if not isinstance(v, float) or v.is_integer() else None
        except (TypeError, ValueError):
            as_ints[v] = None
    if all(i is not None for i in as_ints.values()) and sorted(set(as_ints.values())) == list(
        range(len(set(as_ints.values())))
    ):
        return as_ints
    return {v: i for i, v in enumerate(sorted(values, key=str))}


def load_text_task(
    root: str | os.PathLike,
    split: str,
    text_columns=("text",),
    label_column: str = "label",
) -> tuple[TextPairs, GlueTask]:
    """One split (`"train"` or `"validation"`) of a text-classification task, and its task description
    (accuracy as the metric, the number of labels from the training split).

    Raises:
        ConfigError: another split, no or more than two text columns.
        DataError: missing files or columns, empty texts, missing labels, an evaluation label absent from
            training, fewer than two classes.
    """
    if split not in ("train", "validation"):
        raise ConfigError(f"unknown split {split!r} of a text task; choose from train, validation")
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2 or not all(isinstance(c, str) and c for c in text_columns):
        raise ConfigError(f"text_columns must name one or two columns, got {list(text_columns)}")
    train_path, eval_path = _files(Path(root).expanduser())
    texts, labels = _examples(read_rows(train_path), train_path, text_columns, label_column)
    if eval_path is None:  # one file: every tenth row is validation
        chosen = [i for i in range(len(texts)) if (i % 10 == 9) == (split == "validation")]
        train_labels = [labels[i] for i in range(len(texts)) if i % 10 != 9]
        texts, labels = [texts[i] for i in chosen], [labels[i] for i in chosen]
    else:
        train_labels = labels
        if split == "validation":
            texts, labels = _examples(read_rows(eval_path), eval_path, text_columns, label_column)
    ids = _label_ids(train_labels)
    if len(ids) < 2:
        raise DataError(
            f"{train_path}: the labels in {label_column!r} hold a single class; classification needs 2"
        )
    unknown = next((v for v in labels if v not in ids), None)
    if unknown is not None:
        raise DataError(f"label {unknown!r} of the {split} split does not occur in the training split")
    if not texts:
        raise DataError(f"{train_path} gives no {split} rows")
    task = GlueTask("text", text_columns, len(set(ids.values())), ("accuracy",), ("validation",))
    return TextPairs(texts, [ids[v] for v in labels]), task
