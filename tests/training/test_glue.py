"""Tests of padnet.training.data.glue (TSV and parquet GLUE readers) and padnet.training.nlp.glue_metrics. Offline and small.

Every test writes its own tiny files of the GLUE TSV layout and of the Hugging Face ``nyu-mll/glue``
parquet layout into ``tmp_path``; metric values are checked against numbers computed by hand.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from padnet.errors import ConfigError, DataError
from padnet.training.data.glue import GLUE_TASKS, GlueTask, TextPairs, glue_splits, load_glue
from padnet.training.nlp.glue_metrics import glue_metrics

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# ------------------------------------------------------------------------------------------ fixtures

TASK_DIRS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
}

# Hugging Face label -> string written in the TSV files.
NLI3 = ["entailment", "neutral", "contradiction"]
NLI2 = ["entailment", "not_entailment"]

QUOTED = 'He said "it\'s 6\'2"" and left.'
LEADING_QUOTE = '"Quoted start, no closing quote'

# (texts, HF label) of a few examples per task; quotes in several places.
EXAMPLES: dict[str, list[tuple[tuple[str, ...], int | float]]] = {
    "cola": [(("The cat sat.",), 1), (("Cat the sat.",), 0), ((QUOTED,), 1)],
    "sst2": [(("a gripping , funny film ",), 1), ((LEADING_QUOTE,), 0)],
    "mrpc": [(("He left.", "He went away."), 1), ((QUOTED, "No."), 0), (("A b.", LEADING_QUOTE), 1)],
    "stsb": [
        (("A man plays.", "A man is playing."), 3.8),
        (("X.", 'Y "z".'), 0.0),
        (("P.", "Q."), 5.0),
        (("R.", "S."), 2.75),
    ],
    "qqp": [(("How do I learn?", "What is the way to learn?"), 1), ((QUOTED, "Why?"), 0)],
    "qnli": [(("Who wrote it?", "It was written by Ann."), 0), (("When?", QUOTED), 1)],
    "rte": [(("Ann is tall.", "Ann is not short."), 0), ((LEADING_QUOTE, "Bob ran."), 1)],
}
MNLI_EXAMPLES = {
    "train": [(("P1.", "H1."), 0), (("P2.", "H2."), 1), (("P3.", QUOTED), 2)],
    "validation_matched": [(("P4.", "H4."), 2), (("P5.", "H5."), 0)],
    "validation_mismatched": [(("P6.", "H6."), 1), ((LEADING_QUOTE, "H7."), 2), (("P8.", "H8."), 0)],
}

STSB_HEADER = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]
MNLI_TRAIN_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]

TSV_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
HF_COLUMNS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}


def examples(task: str, split: str) -> list[tuple[tuple[str, ...], int | float]]:
    if task == "mnli":
        return MNLI_EXAMPLES[split]
    rows = EXAMPLES[task]
    return rows if split == "train" else rows[::-1]


def expected(task: str, split: str) -> TextPairs:
    rows = examples(task, split)
    return TextPairs([texts for texts, _ in rows], [label for _, label in rows])


def tsv_line(task: str, split: str, i: int, texts: tuple[str, ...], label: float) -> list[str]:
    """Fields of one row of the official GLUE TSV file."""
    if task == "cola":
        return ["gj04", str(label), "" if label else "*", texts[0]]
    if task == "sst2":
        return [texts[0], str(label)]
    if task == "mrpc":
        return [str(label), str(100 + i), str(200 + i), *texts]
    if task == "stsb":
        return [
            str(i),
            "main-captions",
            "MSRvid",
            "2012test",
            f"{i:04d}",
            "none",
            "none",
            *texts,
            f"{label:.3f}",
        ]
    if task == "qqp":
        return [str(i), str(2 * i), str(2 * i + 1), *texts, str(label)]
    if task == "mnli":
        extra = [NLI3[label]] * (1 if split == "train" else 5)
        return [
            str(i),
            "31193",
            f"{i}n",
            "government",
            "( ( P ) . )",
            "( H . )",
            "(ROOT (S))",
            "(ROOT (S))",
            *texts,
            *extra,
            NLI3[label],
        ]
    return [str(i), *texts, NLI2[label]]  # qnli, rte


def tsv_header(task: str, split: str) -> list[str] | None:
    headers = {
        "cola": None,
        "sst2": ["sentence", "label"],
        "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "stsb": STSB_HEADER,
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "mnli": MNLI_TRAIN_HEADER if split == "train" else MNLI_DEV_HEADER,
        "qnli": ["index", "question", "sentence", "label"],
        "rte": ["index", "sentence1", "sentence2", "label"],
    }
    return headers[task]


def write_tsv(root: Path, task: str, split: str, rows=None) -> Path:
    """Write ``<root>/<TaskDir>/<file>.tsv`` as the GLUE download script lays it out."""
    rows = examples(task, split) if rows is None else rows
    lines = [] if tsv_header(task, split) is None else ["\t".join(tsv_header(task, split))]
    lines += ["\t".join(tsv_line(task, split, i, texts, label)) for i, (texts, label) in enumerate(rows)]
    path = root / TASK_DIRS[task] / TSV_FILES[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def hf_table(task: str, rows) -> pa.Table:
    columns = {name: [texts[k] for texts, _ in rows] for k, name in enumerate(HF_COLUMNS[task])}
    label_type = pa.float32() if task == "stsb" else pa.int64()  # the Hugging Face feature types
    columns["label"] = pa.array([label for _, label in rows], type=label_type)
    columns["idx"] = pa.array(range(len(rows)), type=pa.int32())
    return pa.table(columns)


def write_parquet(root: Path, task: str, split: str, rows=None, shard: str = "00000-of-00001") -> Path:
    """Write ``<root>/<task>/<split>-<shard>.parquet`` as in the ``nyu-mll/glue`` repository."""
    rows = examples(task, split) if rows is None else rows
    path = root / task / f"{split}-{shard}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(hf_table(task, rows), path)
    return path


ALL_SPLITS = [(task, split) for task in GLUE_TASKS for split in glue_splits(task)]


# ---------------------------------------------------------------------------------------- task table


def test_task_table():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    assert GLUE_TASKS["stsb"] == GlueTask(
        "stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"), ("validation",)
    )
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["cola"].metrics == ("matthews_correlation",)
    assert GLUE_TASKS["mrpc"].metrics == GLUE_TASKS["qqp"].metrics == ("accuracy", "f1")
    for name, task in GLUE_TASKS.items():
        assert task.name == name and task.text_keys == HF_COLUMNS[name]
        if name not in ("stsb", "mnli"):
            assert task.num_labels == 2 and task.eval_splits == ("validation",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        GLUE_TASKS["rte"].num_labels = 3


# ------------------------------------------------------------------------------------- reading back


@pytest.mark.parametrize(("task", "split"), ALL_SPLITS)
def test_tsv_reads_back(tmp_path, task, split):
    write_tsv(tmp_path, task, split)
    got = load_glue(task, split, tmp_path)
    assert got == expected(task, split)
    assert len(got) == len(examples(task, split))
    assert all(type(label) is (float if task == "stsb" else int) for label in got.labels)


@pytest.mark.parametrize(("task", "split"), ALL_SPLITS)
def test_parquet_reads_back(tmp_path, task, split):
    write_parquet(tmp_path, task, split)
    got = load_glue(task, split, str(tmp_path))  # str root works too
    assert got == expected(task, split)
    assert all(type(label) is (float if task == "stsb" else int) for label in got.labels)


@pytest.mark.parametrize(("task", "split"), ALL_SPLITS)
def test_layouts_agree(tmp_path, task, split):
    write_tsv(tmp_path / "tsv", task, split)
    write_parquet(tmp_path / "hf", task, split)
    assert load_glue(task, split, tmp_path / "tsv") == load_glue(task, split, tmp_path / "hf")


def test_mnli_string_labels_map_to_hf_ids(tmp_path):
    rows = [(("p", "h"), 0), (("p", "h"), 1), (("p", "h"), 2)]
    path = write_tsv(tmp_path, "mnli", "validation_mismatched", rows)
    assert [line.rsplit("\t", 1)[1] for line in path.read_text().splitlines()[1:]] == NLI3
    assert load_glue("mnli", "validation_mismatched", tmp_path).labels == [0, 1, 2]
    path = write_tsv(tmp_path, "rte", "validation", [(("a", "b"), 1), (("c", "d"), 0)])
    assert path.read_text().splitlines()[1].endswith("\tnot_entailment")
    assert load_glue("rte", "validation", tmp_path).labels == [1, 0]


def test_quotes_survive_tsv(tmp_path):
    path = write_tsv(tmp_path, "sst2", "train", [((QUOTED,), 1), ((LEADING_QUOTE,), 0), (('""',), 1)])
    assert '"it\'s 6\'2""' in path.read_text()
    assert load_glue("sst2", "train", tmp_path).texts == [(QUOTED,), (LEADING_QUOTE,), ('""',)]


def test_stsb_float32_parquet_reads_decimal(tmp_path):
    write_parquet(tmp_path, "stsb", "validation", [(("a", "b"), 3.8), (("c", "d"), 1.2)])
    assert load_glue("stsb", "validation", tmp_path).labels == [3.8, 1.2]


def test_mrpc_byte_order_mark(tmp_path):
    path = write_tsv(tmp_path, "mrpc", "train")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_glue("mrpc", "train", tmp_path) == expected("mrpc", "train")


def test_root_may_be_the_task_folder(tmp_path):
    write_tsv(tmp_path, "qnli", "train")
    write_parquet(tmp_path, "qqp", "validation")
    assert load_glue("qnli", "train", tmp_path / "QNLI") == expected("qnli", "train")
    assert load_glue("qqp", "validation", tmp_path / "qqp") == expected("qqp", "validation")


def test_parquet_shards_concatenate_in_name_order(tmp_path):
    rows = EXAMPLES["stsb"]
    write_parquet(tmp_path, "stsb", "train", rows[2:], shard="00001-of-00002")
    write_parquet(tmp_path, "stsb", "train", rows[:2], shard="00000-of-00002")
    assert load_glue("stsb", "train", tmp_path) == expected("stsb", "train")


def test_mnli_split_files_do_not_mix(tmp_path):
    for split in glue_splits("mnli"):
        write_parquet(tmp_path, "mnli", split)
    for split in glue_splits("mnli"):
        assert load_glue("mnli", split, tmp_path) == expected("mnli", split)


def test_blank_trailing_lines_ignored(tmp_path):
    path = write_tsv(tmp_path, "cola", "validation")
    path.write_text(path.read_text() + "\n\n")
    assert load_glue("cola", "validation", tmp_path) == expected("cola", "validation")


# ---------------------------------------------------------------------------------------------- errors


def raises(error: type[Exception], match: str, task: str, split: str, root: Path) -> str:
    with pytest.raises(error, match=match) as info:
        load_glue(task, split, root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_task_and_split(tmp_path):
    raises(
        ConfigError,
        r"unknown GLUE task 'wnli'; choose from cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte",
        "wnli",
        "train",
        tmp_path,
    )
    raises(
        ConfigError,
        r"unknown GLUE mnli split 'validation'; choose from train, validation_matched, "
        r"validation_mismatched",
        "mnli",
        "validation",
        tmp_path,
    )
    raises(
        ConfigError, r"unknown GLUE rte split 'dev'; choose from train, validation", "rte", "dev", tmp_path
    )
    raises(
        ConfigError, r"'test' has no public labels; choose from train, validation", "cola", "test", tmp_path
    )
    raises(ConfigError, r"'test_matched' has no public labels", "mnli", "test_matched", tmp_path)


def test_missing_folder_and_file(tmp_path):
    raises(DataError, r"nowhere does not exist", "cola", "train", tmp_path / "nowhere")
    message = raises(DataError, r"no GLUE mrpc validation data under", "mrpc", "validation", tmp_path)
    assert str(tmp_path / "mrpc" / "validation-*.parquet") in message and "parquet layout" in message
    assert str(tmp_path / "MRPC" / "dev.tsv") in message and "TSV layout" in message
    write_tsv(tmp_path, "mrpc", "train")  # the folder exists, the dev file does not
    raises(DataError, r"MRPC/dev\.tsv \(GLUE TSV layout\)", "mrpc", "validation", tmp_path)


def test_missing_column(tmp_path):
    path = write_tsv(tmp_path, "sst2", "train")
    path.write_text(path.read_text().replace("sentence\tlabel", "text\tlabel", 1))
    raises(DataError, r"column 'sentence' missing from .*SST-2/train\.tsv", "sst2", "train", tmp_path)
    path = write_tsv(tmp_path, "mnli", "validation_matched")
    path.write_text(path.read_text().replace("\tgold_label", "\tlabel", 1))
    raises(
        DataError,
        r"column 'gold_label' missing from .*dev_matched\.tsv",
        "mnli",
        "validation_matched",
        tmp_path,
    )
    table = hf_table("qnli", examples("qnli", "train")).drop_columns(["question"])
    (tmp_path / "qnli").mkdir()
    pq.write_table(table, tmp_path / "qnli" / "train-00000-of-00001.parquet")
    raises(
        DataError,
        r"column 'question' missing from .*qnli/train-00000-of-00001\.parquet",
        "qnli",
        "train",
        tmp_path,
    )


@pytest.mark.parametrize(
    ("task", "old", "new", "match"),
    [
        ("rte", "\tnot_entailment", "\tmaybe", r"unparseable label 'maybe' at .*RTE/train\.tsv line 3"),
        ("cola", "gj04\t0", "gj04\tx", r"unparseable label 'x' at .*CoLA/train\.tsv line 2"),
        ("stsb", "\t3.800", "\tabc", r"unparseable score 'abc' at .*STS-B/train\.tsv line 2"),
        ("stsb", "\t3.800", "\tnan", r"unparseable score 'nan'"),
        ("qqp", "\t0\n", "\t2\n", r"unparseable label '2' .*expected one of 0, 1"),
    ],
)
def test_unparseable_tsv_label(tmp_path, task, old, new, match):
    path = write_tsv(tmp_path, task, "train")
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    raises(DataError, match, task, "train", tmp_path)


@pytest.mark.parametrize(
    ("task", "label", "match"),
    [
        ("mnli", 3, r"unparseable label 3 at .*row 1; expected an int in 0\.\.2"),
        ("rte", -1, r"unparseable label -1 at"),
        ("sst2", None, r"unparseable label None at"),
    ],
)
def test_bad_parquet_label(tmp_path, task, label, match):
    split = glue_splits(task)[-1]
    rows = examples(task, split)[:1] + [(examples(task, split)[0][0], label)]
    write_parquet(tmp_path, task, split, rows)
    raises(DataError, match, task, split, tmp_path)


def test_null_parquet_text(tmp_path):
    write_parquet(tmp_path, "cola", "train", [((None,), 1)])
    raises(
        DataError, r"column 'sentence' of .* row 0 holds None, expected a string", "cola", "train", tmp_path
    )


@pytest.mark.parametrize(("task", "fields"), [("rte", 3), ("rte", 5), ("cola", 3), ("mnli", 11)])
def test_wrong_field_count(tmp_path, task, fields):
    path = write_tsv(tmp_path, task, "train")
    lines = path.read_text().splitlines()
    bad = 1 if task == "cola" else 2  # 0-based index of the second data row
    lines[bad] = "\t".join((lines[bad].split("\t") + ["extra"])[:fields])
    path.write_text("\n".join(lines) + "\n")
    expected_fields = {"rte": 4, "cola": 4, "mnli": 12}[task]
    raises(
        DataError,
        rf"line {bad + 1} has {fields} tab-separated fields, expected {expected_fields}",
        task,
        "train",
        tmp_path,
    )


@pytest.mark.parametrize(
    ("task", "content"),
    [("qnli", ""), ("qnli", "index\tquestion\tsentence\tlabel\n"), ("cola", ""), ("cola", "\n\n")],
)
def test_empty_tsv(tmp_path, task, content):
    path = write_tsv(tmp_path, task, "validation")
    path.write_text(content)
    raises(DataError, r"GLUE file .*dev\.tsv is empty", task, "validation", tmp_path)


def test_empty_and_corrupt_parquet(tmp_path):
    write_parquet(tmp_path, "mrpc", "train", [])
    raises(
        DataError, r"GLUE parquet files .*train-00000-of-00001\.parquet are empty", "mrpc", "train", tmp_path
    )
    path = write_parquet(tmp_path, "mrpc", "validation")
    path.write_bytes(b"not a parquet file at all")
    raises(
        DataError,
        r"cannot read parquet file .*validation-00000-of-00001\.parquet",
        "mrpc",
        "validation",
        tmp_path,
    )


def test_undecodable_tsv(tmp_path):
    path = write_tsv(tmp_path, "sst2", "validation")
    path.write_bytes(path.read_bytes() + b"caf\xe9\t1\n")
    raises(DataError, r"cannot read .*SST-2/dev\.tsv as UTF-8 TSV", "sst2", "validation", tmp_path)


# --------------------------------------------------------------------------------------------- metrics


def confusion(preds: list[int], refs: list[int]) -> tuple[int, int, int, int]:
    """(tp, tn, fp, fn) of class 1, counted by hand."""
    tp = sum(p == 1 and r == 1 for p, r in zip(preds, refs))
    tn = sum(p == 0 and r == 0 for p, r in zip(preds, refs))
    fp = sum(p == 1 and r == 0 for p, r in zip(preds, refs))
    fn = sum(p == 0 and r == 1 for p, r in zip(preds, refs))
    return tp, tn, fp, fn


def test_matthews_by_hand():
    preds = [1, 1, 0, 0, 1, 0, 1, 1, 0, 1]
    refs = [1, 0, 0, 1, 1, 0, 1, 0, 0, 1]
    tp, tn, fp, fn = confusion(preds, refs)
    assert (tp, tn, fp, fn) == (4, 3, 2, 1)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # 10 / sqrt(600)
    got = glue_metrics("cola", preds, refs)
    assert got == pytest.approx({"matthews_correlation": 10 / math.sqrt(600), "score": mcc})
    assert glue_metrics("cola", [1, 0, 1], [0, 1, 0])["matthews_correlation"] == pytest.approx(-1.0)


@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "rte"])
def test_accuracy_tasks(task):
    preds = [0, 1, 2, 1, 0, 0, 1, 2] if task == "mnli" else [0, 1, 1, 1, 0, 0, 1, 0]
    refs = [0, 1, 1, 1, 2, 0, 0, 2] if task == "mnli" else [0, 1, 0, 1, 1, 0, 0, 0]
    got = glue_metrics(task, preds, refs)
    assert set(got) == {"accuracy", "score"}
    assert got["accuracy"] == pytest.approx(5 / 8) and got["score"] == got["accuracy"]


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_f1_by_counts(task):
    preds = [1, 1, 1, 0, 0, 1, 0, 1, 1]
    refs = [1, 0, 1, 1, 0, 1, 0, 0, 1]
    tp, tn, fp, fn = confusion(preds, refs)
    assert (tp, tn, fp, fn) == (4, 2, 2, 1)
    f1 = 2 * tp / (2 * tp + fp + fn)  # 8 / 11
    accuracy = (tp + tn) / len(preds)  # 6 / 9
    got = glue_metrics(task, np.array(preds), np.array(refs))
    assert got == pytest.approx({"accuracy": 6 / 9, "f1": 8 / 11, "score": (accuracy + f1) / 2})
    assert all(type(value) is float for value in got.values())
    assert glue_metrics(task, [0, 0], [0, 0])["f1"] == 0.0  # no positive class anywhere


def pearson_by_formula(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_stsb_pearson_and_spearman():
    preds = [0.5, 2.0, 1.0, 4.5, 3.0]
    refs = [1.0, 1.5, 2.0, 5.0, 3.2]
    # ranks: preds 1, 3, 2, 5, 4; refs 1, 2, 3, 5, 4 -> sum d^2 = 2, rho = 1 - 6*2 / (5 * 24) = 0.9
    spearman = 1 - 6 * 2 / (5 * (5**2 - 1))
    pearson = pearson_by_formula(preds, refs)
    got = glue_metrics("stsb", preds, refs)
    assert got == pytest.approx({"pearson": pearson, "spearmanr": 0.9, "score": (pearson + spearman) / 2})
    assert -1.0 <= got["pearson"] <= 1.0


def test_stsb_spearman_with_ties():
    # preds ranks with the tie averaged: 1, 2.5, 2.5, 4; refs ranks 1, 2, 3, 4.
    got = glue_metrics("stsb", [0.1, 0.7, 0.7, 0.9], [1.0, 2.0, 3.0, 4.0])
    assert got["spearmanr"] == pytest.approx(pearson_by_formula([1, 2.5, 2.5, 4], [1, 2, 3, 4]))
    assert glue_metrics("stsb", [3.0, 1.0, 2.0], [0.0, 2.0, 1.0])["spearmanr"] == pytest.approx(-1.0)


def test_metric_names_match_task_table():
    for name, task in GLUE_TASKS.items():
        preds, refs = ([0.0, 1.0, 2.5], [0.5, 1.0, 2.0]) if name == "stsb" else ([0, 1, 1], [0, 1, 0])
        assert tuple(glue_metrics(name, preds, refs)) == (*task.metrics, "score")


def test_metric_errors():
    with pytest.raises(ConfigError, match=r"unknown GLUE task 'glue'; choose from cola, sst2"):
        glue_metrics("glue", [1], [1])
    with pytest.raises(ConfigError, match=r"GLUE rte: 3 predictions but 2 references; lengths must match"):
        glue_metrics("rte", [1, 0, 1], [1, 0])
    with pytest.raises(ConfigError, match=r"GLUE stsb: no predictions to score"):
        glue_metrics("stsb", [], [])
