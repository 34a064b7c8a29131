"""`padnet bench --parts moe`: MoE feed-forward layers against the dense FFN they replace.

At the MiniLM (H 384, F 1536) and BERT-base (H 768, F 3072) sizes, on `tokens` tokens (default 2,048,
e.g. 16 sequences of 128), 8 experts top-2; every ratio divides two numbers of the same run:

* training step (forward + backward): dense FFN, MoE, PAD-MoE (element masks, κ = 0.5), structured
  PAD-MoE (neuron masks, κ = 0.5);
* inference (`no_grad`): dense FFN, MoE, deployed PAD-MoE (experts merged once), structured PAD-MoE
  (training form and deployed), and the matmuls alone: the dense FFN's two and structured PAD-MoE's (two
  on every token at width F/2, two per expert on 2N/E tokens at width F/2), which bounds the structured
  ratio from below on this machine's BLAS.

A round times about 0.3 s of calls of every variant in turn; each ratio is reported as its median over
`repeats` rounds with the spread ([`padnet.experiments.bench.timing`][padnet.experiments.bench.timing]).

Masks come from a random partition at κ = 0.5 (speed does not depend on which elements are dynamic).
Targets (issue 6): MoE training ≤ 2.2× dense; deployed PAD-MoE inference at least MoE's throughput
(ratio ≤ 1); structured PAD-MoE κ = 0.5 forward ≤ 1.6× dense.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn

from padnet.experiments.bench.timing import fmt, interleaved_rounds, ratio_spread
from padnet.layers.moe import DeployedMoE, MoEFeedForward
from padnet.partitioning import partition

SIZES = {"MiniLM": (384, 1536), "BERT-base": (768, 3072)}
KAPPA = 0.5


def _layers(hidden: int, inter: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    up, down = nn.Linear(hidden, inter), nn.Linear(inter, hidden)
    dense = nn.Sequential(up, nn.GELU(), down)
    layers: dict[str, nn.Module] = {"dense": dense}
    for name, mode, granularity in (
        ("moe", "dynamic", "element"),
        ("pad", "pad", "element"),
        ("pad-neuron", "pad", "neuron"),
    ):
        layer = MoEFeedForward.from_linears(up, down, nn.GELU(), mode=mode, granularity=granularity)
        with torch.no_grad():  # a trained router spreads tokens over the experts
            layer.router.weight.normal_(std=0.1)
        if mode == "pad":
            partition(layer, KAPPA, "random")
        layers[name] = layer
    layers["pad-deployed"] = DeployedMoE.from_layer(layers["pad"].eval())
    layers["pad-neuron-deployed"] = DeployedMoE.from_layer(layers["pad-neuron"].eval())
    return layers


def _matmuls(
    hidden: int, inter: int, tokens: int, experts: int = 8, top_k: int = 2, device: str = "cpu"
) -> dict[str, Callable]:
    """The matmuls of the dense FFN and of structured PAD-MoE at κ = 0.5 on evenly loaded experts, each
    expert with its own weights and tokens, with no routing, activation or bias."""
    half = inter // 2

    def rand(*shape):
        return torch.randn(*shape, device=device)

    x, rows = rand(tokens, hidden), rand(experts, tokens * top_k // experts, hidden)
    up, down = rand(hidden, inter), rand(inter, hidden)
    up_half, down_half = rand(hidden, half), rand(half, hidden)
    expert_up, expert_down = rand(experts, hidden, half), rand(experts, half, hidden)

    def dense():
        return (x @ up) @ down

    def structured():
        out = (x @ up_half) @ down_half
        for e in range(experts):
            (rows[e] @ expert_up[e]) @ expert_down[e]
        return out

    return {"dense-matmuls": dense, "pad-neuron-matmuls": structured}


def _step(layer: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], object]:
    if train:
        xg = x.clone().requires_grad_(True)

        def step():  # as in training: gradients set to None before each backward (no accumulation)
            layer.zero_grad(set_to_none=True)
            xg.grad = None
            layer(xg).sum().backward()

        return step

    def infer():
        with torch.no_grad():
            return layer(x)

    return infer


def bench_moe(
    tokens: int = 2048, repeats: int = 3, sizes=tuple(SIZES), progress=None, device: str = "cpu"
) -> list[dict]:
    """One row per (size, mode, variant): `ms` (median over rounds), `round_ms` and `ratio` (spread of the
    per-round ratios to the dense FFN of the same size and mode)."""
    rows = []
    plan = {
        "train": ("dense", "moe", "pad", "pad-neuron"),
        "inference": ("dense", "moe", "pad-deployed", "pad-neuron", "pad-neuron-deployed"),
    }
    for size in sizes:
        hidden, inter = SIZES[size]
        layers = {name: layer.to(device) for name, layer in _layers(hidden, inter).items()}
        x = torch.randn(tokens, hidden, device=device)
        for mode, variants in plan.items():
            if progress:
                progress(f"moe {size} {mode}")
            fns = {v: _step(layers[v].train(mode == "train"), x, mode == "train") for v in variants}
            if mode == "inference":
                fns.update(_matmuls(hidden, inter, tokens, device=device))
            times = interleaved_rounds(fns, repeats, device=device)
            rows += [
                {
                    "size": size,
                    "hidden": hidden,
                    "intermediate": inter,
                    "tokens": tokens,
                    "mode": mode,
                    "variant": v,
                    "ms": statistics.median(t) * 1e3,
                    "round_ms": [s * 1e3 for s in t],
                    "ratio": ratio_spread(t, times["dense"]),
                }
                for v, t in times.items()
            ]
    return rows


def moe_summary(rows: list[dict]) -> dict[str, float]:
    """The issue's target ratios, per size."""
    out = {}
    for size in dict.fromkeys(r["size"] for r in rows):
        ms = {(r["mode"], r["variant"]): r["round_ms"] for r in rows if r["size"] == size}
        for key, (mode, a, b) in {
            "MoE fwd+bwd × dense FFN (≤ 2.2)": ("train", "moe", "dense"),
            "deployed PAD-MoE inference × MoE (≤ 1)": ("inference", "pad-deployed", "moe"),
            "structured PAD-MoE κ=0.5 forward × dense FFN (≤ 1.6)": ("inference", "pad-neuron", "dense"),
            "structured PAD-MoE κ=0.5 deployed forward × dense FFN": (
                "inference",
                "pad-neuron-deployed",
                "dense",
            ),
            "structured PAD-MoE κ=0.5 matmuls alone × dense FFN matmuls (floor)": (
                "inference",
                "pad-neuron-matmuls",
                "dense-matmuls",
            ),
        }.items():
            out[f"{size} {key}"] = ratio_spread(ms[(mode, a)], ms[(mode, b)])
    return out


def moe_markdown(rows: list[dict]) -> list[str]:
    """Markdown lines: one table of ms and × dense per size and mode."""
    lines = [
        f"## MoE feed-forward layers, {rows[0]['tokens']} tokens, 8 experts top-2, κ = {KAPPA}",
        "",
        "| Size | Mode | Variant | ms | × dense FFN |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    lines += [
        f"| {r['size']} ({r['hidden']}→{r['intermediate']}) | {r['mode']} | {r['variant']} | {r['ms']:.1f} | "
        f"{fmt(r['ratio'])} |"
        for r in rows
    ]
    return [*lines, ""]
