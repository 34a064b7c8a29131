"""`padnet report`: the Params/FLOPs columns of PAD-Net Tables 1, 6 and 7 for ResNet-18 and MobileNetV2 ×1.0."""

from __future__ import annotations

import json

import pytest

from padnet.cli import main
from padnet.experiments import report

pytestmark = pytest.mark.slow  # end-to-end runs (see pyproject.toml's markers)

# measured by `padnet report --archs resnet18 mobilenetv2-1.0` (params in M, FLOPs in G / M MACs)
EXPECTED = {
    ("1", "resnet18"): [(11.690, 1.814), (89.823, 1.903), (45.471, 1.859), (22.040, 1.828)],
    ("1", "mobilenetv2-1.0"): [(3.505, 300.774), (18.954, 318.412), (12.401, 311.859), (7.804, 305.730)],
    ("6", "resnet18"): [(12.076, 1.849), (11.964, 1.849)],  # DCD with its latent BatchNorms (issue 26)
    ("6", "mobilenetv2-1.0"): [(5.119, 365.536), (4.630, 365.047)],
    ("7", "resnet18"): [(11.973, 1.814), (11.841, 1.814), (45.447, 1.859), (21.884, 1.828)],
    ("7", "mobilenetv2-1.0"): [(4.938, 302.181), (4.374, 301.617), (11.510, 310.942), (6.349, 304.249)],
}


@pytest.fixture(scope="module")
def rows():
    return report.compute_rows(archs=["resnet18", "mobilenetv2-1.0"])


def _row(rows, table, arch_id, column):
    label = report.ARCHS[arch_id][0]
    (row,) = [r for r in rows if r.table == table and r.arch == label and r.column == column]
    return row


def test_every_column_of_each_table_is_measured(rows):
    assert len(rows) == 2 * sum(len(c) for c in report.COLUMNS.values())
    assert {r.table for r in rows} == {"1", "6", "7"}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_measured_numbers(rows, key):
    table, arch_id = key
    for (column, _, _), (params, flops) in zip(report.COLUMNS[table], EXPECTED[key]):
        row = _row(rows, table, arch_id, column)
        assert row.params == pytest.approx(params, rel=2e-4), column
        assert row.flops == pytest.approx(flops, rel=3e-4), column


def test_static_and_odconv_rows_match_the_paper(rows):
    assert abs(_row(rows, "1", "mobilenetv2-1.0", "Static").params_diff) < 2
    for column in ("ODConv(×1)", "PAD-Net(×1)", "ODConv(×4)", "PAD-Net(×4)"):
        assert abs(_row(rows, "7", "resnet18", column).params_diff) < 2, column


def test_rows_within_tolerance_have_no_note_and_others_do(rows):
    for r in rows:
        off = abs(r.params_diff) > 100 * report.TOLERANCE or abs(r.flops_diff) > 100 * report.TOLERANCE
        assert bool(r.notes) == off, (r.table, r.arch, r.column, r.notes)


def test_notes_name_the_convention_that_reproduces_the_paper(rows):
    assert _row(rows, "1", "resnet18", "Static").notes == ["without the classifier: 11.18M (+0.7 %)"]
    assert _row(rows, "1", "mobilenetv2-1.0", "DY-Conv").notes == ["without the classifier: 11.12M (+0.2 %)"]
    condconv = _row(rows, "1", "mobilenetv2-1.0", "CondConv").notes
    assert condconv[0] == "classifier a CondConv layer too (k = 8): 27.93M (+1.6 %)"
    assert _row(rows, "1", "resnet18", "DY-Conv").notes[0].startswith("params not reproduced")


def test_markdown_has_one_table_per_paper_table(rows):
    text = report.report_markdown(rows, 1.0)
    assert text.count("## Table ") == 3
    assert "| ResNet-18 | DY-Conv | `dy` | 45.47M | 42.7M | +6.5 % |" in text


def test_cli_writes_markdown_and_json(tmp_path, capsys):
    assert main(["report", "--archs", "mobilenetv2-1.0", "--tables", "6", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["column"] for r in data["rows"]] == ["DCD", "PAD-Net (DCD)"]
    assert data["rows"][0]["paper_params"] == 5.7
    assert (tmp_path / "report.md").read_text() in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--archs", "resnet19"], "unknown architecture 'resnet19'; choose from resnet10"),
        (["--tables", "2"], "unknown table '2'; choose from 1, 6, 7"),
    ],
)
def test_cli_rejects_unknown_names(tmp_path, capsys, argv, message):
    assert main(["report", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "report.md").exists()
