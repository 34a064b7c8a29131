"""Timing helpers of `padnet bench`: interleaved rounds, ratios with their spread, and the machine they ran on.

A ratio is measured once per round, from two timings of the same round, so a slow spell of the machine hits
both sides of it; the report gives the median over rounds and the spread (min–max). On a GPU a block of calls is
timed with CUDA events recorded around it (the host waits for the end event), after a warm-up call.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def elapsed(fn: Callable[[], object], calls: int = 1, device: str = "cpu") -> float:
    """Seconds that `calls` calls of `fn` take: wall clock on the CPU, CUDA events on a GPU."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # milliseconds
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - begin


def interleaved_rounds(
    fns: dict[str, Callable[[], object]], rounds: int, block: float = 0.3, device: str = "cpu"
) -> dict[str, list]:
    """Seconds per call of each function in each of `rounds` rounds.

    Each function is called once first (warm-up, which also sizes its block); a round then times a block of about
    `block` seconds of calls of every function in turn. Returns {name: [seconds per call, one per round]}.
    """
    calls = {name: max(1, math.ceil(block / max(elapsed(fn, 1, device), 1e-9))) for name, fn in fns.items()}
    times: dict[str, list] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(elapsed(fn, calls[name], device) / calls[name])
    return times


def best_of(fn: Callable[[], object], runs: int, device: str = "cpu") -> float:
    """The shortest of `runs` timed calls of `fn` (seconds), after one warm-up call."""
    elapsed(fn, 1, device)
    return min(elapsed(fn, 1, device) for _ in range(runs))


def spread(values: Sequence[float]) -> dict[str, float]:
    """{"median", "min", "max"} of `values` (one per round)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio_spread(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """The spread of the per-round ratios `numerators[r] / denominators[r]`."""
    return spread([a / b for a, b in zip(numerators, denominators, strict=True)])


def fmt(stats: dict[str, float], digits: int = 2) -> str:
    """`median (min–max)`, or the median alone when the rounds agree to `digits`."""
    median, low, high = (format(stats[k], f".{digits}f") for k in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}–{high})"


def machine(threads: int, device: str = "cpu") -> dict:
    """The CPU model, its logical CPUs, the threads used, the GPU (on `"cuda"`) and the torch build."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model
            )
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "gpu": gpu,
        "torch": torch.__version__,
    }
