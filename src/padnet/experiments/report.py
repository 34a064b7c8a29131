"""The Params and FLOPs columns of PAD-Net's Table 1 (and appendix Tables 6–7), measured next to the paper's.

One convention per column (docs/accounting.md):

* **Params** — every stored parameter, classifier and BatchNorm affine parameters included; every
  convolution but the stem is of the row's type, 1×1 shortcuts included; PAD-Net forms count their compact
  form ([`padnet.metrics.counting.count_parameters`][padnet.metrics.counting.count_parameters]) after a partition that keeps κ = 0.3 of every masked
  tensor dynamic (local scope, so the count does not depend on which elements are kept).
* **FLOPs** — multiply-adds of one 224×224 image, kernel aggregation included
  ([`padnet.metrics.counting.count_flops`][padnet.metrics.counting.count_flops]).

A row more than `TOLERANCE` away from the paper is explained by re-counting it under the conventions the
source papers used instead (classifier left out; 1×1 shortcuts left static): the note says which one
reproduces the paper's number, or that none does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from padnet.adapter.model import convert
from padnet.layers.registry import CONDCONV, is_partial
from padnet.metrics.counting import count_flops, count_parameters
from padnet.models import create_model
from padnet.partitioning import DEFAULT_KAPPA, partition

TOLERANCE = 0.02
KAPPA = DEFAULT_KAPPA["conv"]
INPUT = (3, 224, 224)

# id -> (label, model name, width)
ARCHS = {
    "resnet10": ("ResNet-10", "resnet10", 1.0),
    "resnet18": ("ResNet-18", "resnet18", 1.0),
    "resnet50": ("ResNet-50", "resnet50", 1.0),
    "mobilenetv2-0.5": ("MobileNetV2 ×0.5", "mobilenetv2", 0.5),
    "mobilenetv2-0.75": ("MobileNetV2 ×0.75", "mobilenetv2", 0.75),
    "mobilenetv2-1.0": ("MobileNetV2 ×1.0", "mobilenetv2", 1.0),
}

# table id ("1": Table 1, "6": Table 6, "7": Table 7) -> [(column label, conv type, num_kernels or None for the type's default)]
COLUMNS = {
    "1": [
        ("Static", "static", None),
        ("CondConv", "condconv", None),
        ("DY-Conv", "dy", None),
        ("PAD-Net", "pad", None),
    ],
    "6": [("DCD", "dcd", None), ("PAD-Net (DCD)", "pad-dcd", None)],
    "7": [
        ("ODConv(×1)", "odconv", 1),
        ("PAD-Net(×1)", "pad-odconv", 1),
        ("ODConv(×4)", "odconv", 4),
        ("PAD-Net(×4)", "pad-odconv", 4),
    ],
}

# PAD-Net paper 001: (Params in millions, FLOPs in GMACs for ResNets / MMACs for MobileNetV2), per column,
# keyed by table id and architecture id
PAPER = {
    "1": {
        "resnet10": [(5.2, 0.89), (36.7, 0.92), (18.6, 0.91), (6.9, 0.90)],
        "resnet18": [(11.1, 1.81), (81.4, 1.89), (42.7, 1.86), (15.1, 1.83)],
        "resnet50": [(23.5, 3.86), (129.9, 3.98), (100.9, 3.97), (33.8, 3.90)],
        "mobilenetv2-0.5": [(2.0, 97.0), (15.5, 113.0), (4.0, 101.4), (2.7, 98.3)],
        "mobilenetv2-0.75": [(2.64, 209.1), (17.51, 233.9), (7.95, 220.1), (5.2, 212.4)],
        "mobilenetv2-1.0": [(3.5, 300.8), (27.5, 329.0), (11.1, 312.9), (6.1, 304.4)],
    },
    "6": {
        "resnet10": [(6.4, 0.96), (5.6, 0.95)],
        "resnet18": [(14.7, 1.84), (12.2, 1.82)],
        "resnet50": [(29.8, 3.94), (26.8, 3.91)],
        "mobilenetv2-0.5": [(3.1, 105.6), (2.3, 99.7)],
        "mobilenetv2-0.75": [(4.1, 222.9), (3.1, 213.2)],
        "mobilenetv2-1.0": [(5.7, 318.4), (4.2, 306.1)],
    },
    "7": {
        "resnet10": [(5.5, 0.90), (5.4, 0.89), (19.7, 0.93), (9.7, 0.92)],
        "resnet18": [(11.9, 1.84), (11.8, 1.82), (44.9, 1.92), (21.7, 1.85)],
        "resnet50": [(28.6, 3.92), (26.5, 3.89), (90.7, 4.08), (44.2, 3.93)],
        "mobilenetv2-0.5": [(2.4, 101.8), (2.1, 98.5), (4.4, 106.4), (2.7, 99.9)],
        "mobilenetv2-0.75": [(3.5, 217.1), (2.9, 211.5), (7.5, 226.3), (4.1, 214.3)],
        "mobilenetv2-1.0": [(4.9, 311.8), (3.9, 304.1), (11.5, 327.1), (5.9, 308.7)],
    },
}

SHORTCUTS = ("*.shortcut.*",)


@dataclass
class Row:
    """One model of the report: measured and paper counts (params in M, FLOPs in the paper's unit)."""

    table: str
    arch: str
    column: str
    conv: str
    num_kernels: int | None
    params: float
    flops: float
    paper_params: float
    paper_flops: float
    flops_unit: str
    notes: list[str] = field(default_factory=list)

    @property
    def params_diff(self) -> float:
        return 100 * (self.params - self.paper_params) / self.paper_params

    @property
    def flops_diff(self) -> float:
        return 100 * (self.flops - self.paper_flops) / self.paper_flops

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "params_diff_pct": round(self.params_diff, 2),
            "flops_diff_pct": round(self.flops_diff, 2),
        }


def build(
    arch: str,
    width: float,
    conv: str,
    num_kernels: int | None = None,
    exclude: tuple[str, ...] = (),
    kappa: float = KAPPA,
) -> torch.nn.Module:
    """The row's model: a static model converted to `conv` (stem and `exclude` left static), partitioned to
    κ per masked tensor when `conv` is a PAD-Net form."""
    torch.manual_seed(0)
    model = create_model(arch, width=width)
    if conv != "static":
        options = {} if num_kernels is None else {"num_kernels": num_kernels}
        convert(model, conv, init_from_pretrained=False, exclude_modules=list(exclude), **options)
    if is_partial(conv):
        partition(model, kappa, "random", scope="local", seed=0)
    return model


def measure(model: torch.nn.Module) -> dict[str, int]:
    """Parameters (with and without the classifier) and MACs at 224×224."""
    params = count_parameters(model)
    classifier = sum(p.numel() for p in model.get_classifier().parameters())
    return {"params": params, "params_no_classifier": params - classifier, "flops": count_flops(model, INPUT)}


def _explain(row: Row, arch: str, width: float, model: torch.nn.Module, counts: dict[str, int]) -> None:
    """Add notes for a row whose params or FLOPs are off by more than the tolerance."""
    if abs(row.params_diff) > 100 * TOLERANCE:
        row.notes.append(_explain_params(row, arch, width, model, counts))
    if abs(row.flops_diff) > 100 * TOLERANCE:
        row.notes.append(f"FLOPs {row.flops_diff:+.1f} %: not reproduced (see docs/accounting.md)")


def _explain_params(row: Row, arch: str, width: float, model: torch.nn.Module, counts: dict[str, int]) -> str:
    """The first alternative convention that brings the params within the tolerance, or all of them."""
    alternatives = [("without the classifier", counts["params_no_classifier"])]
    if arch.startswith("resnet") and row.conv != "static":
        shortcut = measure(build(arch, width, row.conv, row.num_kernels, SHORTCUTS))
        alternatives += [
            ("1×1 shortcuts static", shortcut["params"]),
            ("1×1 shortcuts static, without the classifier", shortcut["params_no_classifier"]),
        ]
    if row.conv == "condconv":  # the CondConv paper also makes the classifier a CondConv layer
        fc = model.get_classifier()
        k = row.num_kernels or CONDCONV["num_kernels"]
        extra = (
            (k - 1) * (fc.weight.numel() + fc.bias.numel()) + fc.in_features * k + k
        )  # k kernels + routing
        alternatives.append((f"classifier a CondConv layer too (k = {k})", counts["params"] + extra))
    for name, value in alternatives:
        diff = 100 * (value / 1e6 - row.paper_params) / row.paper_params
        if abs(diff) <= 100 * TOLERANCE:
            return f"{name}: {value / 1e6:.2f}M ({diff:+.1f} %)"
    return "params not reproduced (" + "; ".join(f"{n}: {v / 1e6:.2f}M" for n, v in alternatives) + ")"


def compute_rows(
    archs: Iterable[str] | None = None,
    tables: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Measure every (table, architecture, column) requested (default: all of them).

    Raises:
        KeyError: an architecture or table name not in `ARCHS` / `COLUMNS` (the CLI checks names first).
    """
    rows = []
    for table in tables or COLUMNS:
        for arch_id in archs or ARCHS:
            arch_label, arch, width = ARCHS[arch_id]
            unit, scale = ("M", 1e6) if arch == "mobilenetv2" else ("G", 1e9)
            for (column, conv, k), (p_params, p_flops) in zip(COLUMNS[table], PAPER[table][arch_id]):
                if progress:
                    progress(f"Table {table} {arch_label} {column}")
                model = build(arch, width, conv, k)
                counts = measure(model)
                row = Row(
                    table,
                    arch_label,
                    column,
                    conv,
                    k,
                    counts["params"] / 1e6,
                    counts["flops"] / scale,
                    p_params,
                    p_flops,
                    unit,
                )
                _explain(row, arch, width, model, counts)
                rows.append(row)
    return rows


def report_markdown(rows: list[Row], seconds: float) -> str:
    """The rows as one Markdown table per paper table."""
    lines = ["# Params and FLOPs against the PAD-Net paper (224×224)", ""]
    for table in dict.fromkeys(r.table for r in rows):
        lines += [
            f"## Table {table}",
            "",
            "| Model | Column | padnet conv | Params | Paper | Δ | FLOPs | Paper | Δ | Note |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in (r for r in rows if r.table == table):
            conv = f"`{r.conv}`" + ("" if r.num_kernels is None else f" k={r.num_kernels}")
            lines.append(
                f"| {r.arch} | {r.column} | {conv} | {r.params:.2f}M | {r.paper_params:g}M | {r.params_diff:+.1f} % | "
                f"{r.flops:.2f}{r.flops_unit} | {r.paper_flops:g}{r.flops_unit} | {r.flops_diff:+.1f} % | "
                f"{'; '.join(r.notes)} |"
            )
        lines.append("")
    lines += [
        (
            f"Params: every stored parameter, classifier included; every convolution but the stem converted, 1×1 "
            f"shortcuts included; PAD-Net forms in their compact form at κ = {KAPPA} of every masked tensor. FLOPs: "
            f"multiply-adds of one 224×224 image, kernel aggregation included. A note re-counts a row more than "
            f"{100 * TOLERANCE:g} % off under the source paper's convention. See docs/accounting.md."
        ),
        f"Measured in {seconds:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def run_report(archs=None, tables=None, progress=None) -> tuple[list[Row], float]:
    """`compute_rows` and its wall time in seconds."""
    start = time.perf_counter()
    rows = compute_rows(archs, tables, progress)
    return rows, time.perf_counter() - start
