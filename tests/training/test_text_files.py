"""Text classification from your own CSV / TSV / JSON Lines / parquet files (task "text")."""

from __future__ import annotations

import csv
import json

import pytest

from padnet.cli import main
from padnet.errors import DataError
from padnet.training.data.text_files import load_text_task

ROWS = [
    ("A gripping, moving film.", "pos"),
    ('He said "dull", and left.\nTwice.', "neg"),
    ("Fine acting, thin plot.", "pos"),
    ("Nothing works here.", "neg"),
] * 5


def _csv(path, rows=ROWS, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return path


def test_every_format_reads_the_same_examples_with_proper_quoting(tmp_path):
    _csv(tmp_path / "one.csv")
    pairs, task = load_text_task(tmp_path / "one.csv", "train", ["review"], "sentiment")
    assert task.num_labels == 2 and task.metrics == ("accuracy",)
    assert pairs.texts[1] == ('He said "dull", and left.\nTwice.',)  # quoted comma, quote and newline kept
    assert pairs.labels[:4] == [1, 0, 1, 0]  # "neg" < "pos" in sorted order
    assert (
        len(pairs),
        len(load_text_task(tmp_path / "one.csv", "validation", ["review"], "sentiment")[0]),
    ) == (18, 2)
    folder = tmp_path / "folder"
    folder.mkdir()
    _csv(folder / "train.tsv", delimiter="\t")
    (folder / "dev.jsonl").write_text(
        "".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in ROWS[:4])
    )
    train, _ = load_text_task(folder, "train", ["review"], "sentiment")
    validation, _ = load_text_task(folder, "validation", ["review"], "sentiment")
    assert train.texts[1] == pairs.texts[1] and len(train) == 20 and validation.labels == [1, 0, 1, 0]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"review": [t for t, _ in ROWS], "sentiment": [0, 1, 0, 1] * 5}), tmp_path / "p.parquet"
    )
    parquet, task = load_text_task(tmp_path / "p.parquet", "train", ["review"], "sentiment")
    assert parquet.labels[:2] == [0, 1] and task.num_labels == 2  # integer labels 0..K-1 kept as they are


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: _csv(p / "d.csv"), "has no column 'text'; its columns: review, sentiment"),
        (
            lambda p: (p / "d.jsonl").write_text('{"text": "a", "label": 0}\n{oops\n'),
            "line 2 is not valid JSON",
        ),
        (lambda p: (p / "d.csv").write_text("text,label\n" + "a,x\n" * 20), "hold a single class"),
        (lambda p: (p / "d.csv").write_text("text,label\n,1\nb,0\n"), "row 1 has an empty or missing text"),
        (lambda p: (p / "d.txt").write_text("x"), "is not a .csv, .tsv, .jsonl, .parquet file"),
    ],
)
def test_bad_text_files_give_one_line(tmp_path, setup, message):
    setup(tmp_path)
    path = next(p for p in tmp_path.iterdir())
    with pytest.raises(DataError) as info:
        load_text_task(path, "train")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_finetune_cli_on_a_csv_task(tiny_model, tmp_path, capsys):
    _csv(tmp_path / "reviews.csv")
    code = main(
        [
            "finetune",
            "--model",
            tiny_model,
            "--task",
            "text",
            "--data-root",
            str(tmp_path / "reviews.csv"),
            "--text-columns",
            "review",
            "--label-column",
            "sentiment",
            "--epochs",
            "1",
            "--batch-size",
            "6",
            "--progress",
            "false",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "text dense: validation accuracy" in captured.out
    code = main(
        ["finetune", "--model", tiny_model, "--label-column", "sentiment", "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "text_columns and label_column apply to task 'text' only" in capsys.readouterr().err
