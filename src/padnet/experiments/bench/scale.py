"""`padnet bench --parts compile`: what `torch.compile`, bfloat16 autocast and channels_last do to a training step.

CIFAR ResNet-18 (batch 64, 32×32 on the CPU; `--quick`: batch 32) in four variants — static, DY-Conv, PAD-Net
κ = 0.3 with shared masks, and filter-structured PAD-Net — each in a fresh process, one training step
(forward, backward, SGD step) in five forms on the same model:

* `eager` — float32, contiguous, eager;
* `compiled` — `torch.compile` (inductor) of the model, float32, as `padnet train --compile` compiles it
  ([`compile_model`][padnet.training.speed.compile_model]);
* `bf16` — eager inside `torch.autocast` bfloat16 (on a GPU also `compiled-bf16`);
* `channels-last` — the model and its input in channels_last, float32, eager.

The compiler runs during the warm-up calls, which are not timed. Every form is timed in each of `repeats`
rounds (about 0.3 s of calls each, in turn: [`interleaved_rounds`][padnet.experiments.bench.timing.interleaved_rounds]);
the ratios — compiled ÷ eager, bf16 ÷ fp32, channels_last ÷ contiguous, and each variant's compiled step ÷ the
compiled static model's — are medians over the rounds with their spread (min–max). Masks come from a random
local partition (speed does not depend on which elements are dynamic). Target (issue 28): compiled DY-Conv
training ≤ 1.8× the compiled static model.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from padnet.experiments.bench.timing import fmt, interleaved_rounds, ratio_spread
from padnet.training.speed import compile_model

VARIANTS = ("static", "dy", "pad", "pad-filter")  # names of padnet.experiments.bench.run.MODEL_VARIANTS
RATIOS = {  # name: (numerator form, denominator form)
    "compiled ÷ eager": ("compiled", "eager"),
    "bf16 ÷ fp32": ("bf16", "eager"),
    "channels_last ÷ contiguous": ("channels-last", "eager"),
}


def _step(
    forward: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None
) -> Callable[[], None]:
    optimizer = torch.optim.SGD(forward.parameters(), lr=0.01, momentum=0.9)
    device = x.device.type

    def step():
        optimizer.zero_grad(set_to_none=True)
        with contextlib.nullcontext() if autocast is None else torch.autocast(device, dtype=autocast):
            logits = forward(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()

    return step


def measure_forms(model: nn.Module, variant: str, repeats: int = 3, batch: int = 64, size: int = 32) -> dict:
    """Seconds per training step of one ResNet-18 variant (`model`, in training mode on its device) in every
    form, per round, in this process: `{"variant", "batch", "round_seconds": {form: [s, ...]}}`."""
    device = next(model.parameters()).device.type
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    compiled = compile_model(model)  # as padnet train --compile does
    steps = {
        "eager": _step(model, x, y, None),
        "compiled": _step(compiled, x, y, None),
        "bf16": _step(model, x, y, torch.bfloat16),
        "channels-last": _step(channels_last, x.contiguous(memory_format=torch.channels_last), y, None),
    }
    if torch.device(device).type == "cuda":
        steps["compiled-bf16"] = _step(compiled, x, y, torch.bfloat16)
    for step in steps.values():  # compiles (the first calls), fills allocator caches
        step()
        step()
    return {
        "variant": variant,
        "batch": batch,
        "round_seconds": interleaved_rounds(steps, repeats, device=device),
    }


def bench_compile(
    worker: Callable[[dict], dict], repeats: int = 3, quick: bool = False, progress=None, device: str = "cpu"
) -> list[dict]:
    """One fresh process per variant: `worker(spec)` runs [`measure_forms`][padnet.experiments.bench.scale.measure_forms]
    there (`padnet.experiments.bench.run`'s worker, tuned allocator). Rows: `variant`, `form`, `ms` (median),
    `ratio` (spread of the form's per-round ratio named by `RATIOS`, None for eager) and `vs_static` (spread of
    the per-round ratio to the static model in the same form)."""
    measured = {}
    for variant in VARIANTS:
        if progress:
            progress(f"resnet18 training {variant}: eager, compiled, bf16, channels_last")
        spec = {"part": "compile", "variant": variant, "repeats": repeats, "quick": quick, "device": device}
        measured[variant] = worker(spec)
    rows = []
    for variant, found in measured.items():
        times, static = found["round_seconds"], measured["static"]["round_seconds"]
        for form, seconds in times.items():
            base = next((den for num, den in RATIOS.values() if num == form), None)
            rows.append(
                {
                    "variant": variant,
                    "batch": found["batch"],
                    "form": form,
                    "ms": statistics.median(seconds) * 1e3,
                    "round_ms": [s * 1e3 for s in seconds],
                    "ratio": None if base is None else ratio_spread(seconds, times[base]),
                    "vs_static": ratio_spread(seconds, static[form]),
                }
            )
    return rows


def compile_summary(rows: list[dict]) -> dict:
    """The issue's ratios: per variant, compiled ÷ eager, bf16 ÷ fp32 and channels_last ÷ contiguous; compiled
    DY-Conv and PAD-Net against the compiled static model (target for DY-Conv: ≤ 1.8)."""
    get = {(r["variant"], r["form"]): r for r in rows}
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for name, (form, _) in RATIOS.items():
            out[f"ResNet-18 {variant} training {name}"] = get[(variant, form)]["ratio"]
    for variant in ("dy", "pad", "pad-filter"):
        out[f"compiled {variant} training × compiled static"] = get[(variant, "compiled")]["vs_static"]
    return out


def compile_markdown(rows: list[dict]) -> list[str]:
    """Markdown lines: one table of ms, the form's ratio and × static per variant and form."""
    lines = [
        f"## CIFAR ResNet-18 training step, batch {rows[0]['batch']}: compile, bf16, channels_last",
        "",
        "| Variant | Form | ms | Ratio | × static (same form) |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        label = next(
            (f"{fmt(r['ratio'])} ({name})" for name, (form, _) in RATIOS.items() if form == r["form"]), ""
        )
        lines.append(f"| {r['variant']} | {r['form']} | {r['ms']:.0f} | {label} | {fmt(r['vs_static'])} |")
    return [*lines, ""]
