"""Timing helpers of ``padnet bench``: interleaved rounds, ratios with their spread, and the machine they ran on.

A ratio is measured once per round, from two timings of the same round, so a slow spell of the machine hits
both sides of it; the report gives the median over rounds and the spread (min–max).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def interleaved_rounds(fns: dict[str, Callable[[], object]], rounds: int, block: float = 0.3) -> dict[str, list]:
    """Seconds per call of each function in each of ``rounds`` rounds.

    Each function is called once first (warm-up, which also sizes its block); a round then times a block of about
    ``block`` seconds of calls of every function in turn. Returns {name: [seconds per call, one per round]}.
    """
    calls = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        calls[name] = max(1, math.ceil(block / (time.perf_counter() - start)))
    times: dict[str, list] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) / calls[name])
    return times


def best_of(fn: Callable[[], object], runs: int) -> float:
    """The shortest of ``runs`` timed calls of ``fn`` (seconds), after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def spread(values: Sequence[float]) -> dict[str, float]:
    """{"median", "min", "max"} of ``values`` (one per round)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio_spread(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """The spread of the per-round ratios ``numerators[r] / denominators[r]``."""
    return spread([a / b for a, b in zip(numerators, denominators, strict=True)])


def fmt(stats: dict[str, float], digits: int = 2) -> str:
    """``median (min–max)``, or the median alone when the rounds agree to ``digits``."""
    median, low, high = (format(stats[k], f".{digits}f") for k in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}–{high})"


def machine(threads: int) -> dict:
    """The CPU model, its logical CPUs, the threads used and the torch build, for the report."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "logical_cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__}
