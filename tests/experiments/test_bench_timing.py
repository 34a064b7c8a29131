"""The timing helpers of padnet bench: ratios per round, their spread, and the report's header."""

from __future__ import annotations

import pytest

from padnet.experiments.bench.run import QUICK_LEAVES_OUT, markdown
from padnet.experiments.bench.timing import fmt, interleaved_rounds, machine, ratio_spread, spread


def test_ratios_pair_the_timings_of_each_round():
    # round 2 is slow for both sides (a busy machine): its ratio stays 2, the median is 2
    stats = ratio_spread([2.0, 8.0, 2.2], [1.0, 4.0, 1.0])
    assert stats == {"median": 2.0, "min": 2.0, "max": pytest.approx(2.2)}
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    with pytest.raises(ValueError):
        ratio_spread([1.0, 2.0], [1.0])


def test_fmt_shows_the_spread_only_when_rounds_differ():
    assert fmt({"median": 2.181, "min": 2.1, "max": 2.25}) == "2.18 (2.10–2.25)"
    assert fmt({"median": 1.0, "min": 1.0, "max": 1.001}) == "1.00"


def test_interleaved_rounds_time_every_function_once_per_round():
    calls = {"a": 0, "b": 0}

    def count(name):
        def fn():
            calls[name] += 1

        return fn

    times = interleaved_rounds({"a": count("a"), "b": count("b")}, rounds=3, block=0.0)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert calls == {"a": 4, "b": 4}  # one warm-up call each, then one call per round (block 0)
    assert all(t >= 0 for v in times.values() for t in v)


def test_the_report_names_the_machine_the_rounds_and_what_quick_leaves_out():
    host = machine(2)
    assert host["threads"] == 2 and host["cpu"] and host["logical_cpus"] >= 1
    result = {
        "machine": host,
        "repeats": 3,
        "quick": True,
        "summary": {"dy_train_vs_static": {"median": 2.2, "min": 2.1, "max": 2.3}, "pad_file_vs_dy": 0.519},
    }
    text = markdown(result)
    assert host["cpu"] in text and "2 threads" in text and "median over 3 rounds" in text
    assert all(item in text for item in QUICK_LEAVES_OUT)
    assert "| dy_train_vs_static | 2.20 (2.10–2.30) |" in text and "| pad_file_vs_dy | 0.519 |" in text
