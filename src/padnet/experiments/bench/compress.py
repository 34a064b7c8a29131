"""`padnet bench --parts compress`: a PAD-compressed pretrained MoE block against the original.

transformers' `MixtralSparseMoeBlock` (H 512, F 1024, 8 experts, top-2, router weights drawn so tokens spread)
on `tokens` tokens, inference (`no_grad`), every ratio within one run against the original block:

* deployed PAD compression at κ = 0.3 with element masks (every expert merged once: dense experts), and with
  neuron masks (the static neurons one shared FFN, weighted by the summed top-k weights; the dynamic neurons
  narrower experts);
* the bytes the experts take in the saved folder, against ((1 − κ) + κ·E)/E of the original's (the target: within
  5 %, plus the mask bits; the zero bias rows padnet's experts carry are counted too).

Targets (issue 20): the deployed compressed block's forward at most 1.1× the original's at the same top-k.
"""

from __future__ import annotations

import copy
import statistics

import torch

from padnet.adapter.moe_convert import compress_experts
from padnet.deployment.deploy import deploy
from padnet.experiments.bench.timing import fmt, interleaved_rounds, ratio_spread, spread
from padnet.partitioning import partition
from padnet.training.nlp.compress import bank_bytes

HIDDEN, INTER, EXPERTS, TOP_K, KAPPA = 512, 1024, 8, 2, 0.3


def _blocks() -> dict[str, torch.nn.Module]:
    import transformers
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        hidden_size=HIDDEN, intermediate_size=INTER, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K
    )
    original = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        original.gate.weight.normal_(std=0.1)
        original.experts.gate_up_proj.normal_(std=0.02)
        original.experts.down_proj.normal_(std=0.02)
    blocks = {"original": original}
    for granularity in ("element", "neuron"):
        block = copy.deepcopy(original)
        compress_experts(block, "pad", granularity)
        partition(block, KAPPA, "random")  # speed does not depend on which elements are dynamic
        blocks[f"pad-{granularity}"] = block
        blocks[f"pad-{granularity}-deployed"] = deploy(block)
    return blocks


def bench_compress(tokens: int = 2048, repeats: int = 3, progress=None, device: str = "cpu") -> dict:
    """`rows` (variant, `ms` median, `round_ms`, `ratio` to the original) and `bytes` (original,
    compressed by granularity, the expected ratio)."""
    if progress:
        progress("compress: Mixtral block")
    blocks = {name: block.to(device) for name, block in _blocks().items()}
    x = torch.randn(1, tokens, HIDDEN, device=device)

    def call(block):
        def run():
            with torch.no_grad():
                return block(x)

        return run

    variants = ("original", "pad-element-deployed", "pad-neuron-deployed")
    times = interleaved_rounds({v: call(blocks[v]) for v in variants}, repeats, device=device)
    rows = [
        {
            "variant": v,
            "tokens": tokens,
            "ms": statistics.median(t) * 1e3,
            "round_ms": [s * 1e3 for s in t],
            "ratio": ratio_spread(t, times["original"]),
        }
        for v, t in times.items()
    ]
    original = bank_bytes(blocks["original"])
    sizes = {g: bank_bytes(blocks[f"pad-{g}"]) for g in ("element", "neuron")}
    expected = ((1 - KAPPA) + KAPPA * EXPERTS) / EXPERTS
    return {
        "rows": rows,
        "bytes": {
            "original": original,
            **sizes,
            "expected_ratio": expected,
            "ratios": {g: b / original for g, b in sizes.items()},
        },
    }


def compress_summary(result: dict) -> dict:
    """The issue's targets: forward ratios and byte ratios."""
    ms = {r["variant"]: r["round_ms"] for r in result["rows"]}
    out = {
        f"deployed PAD compression κ={KAPPA:g}, {g} masks: forward × original (≤ 1.1)": ratio_spread(
            ms[f"pad-{g}-deployed"], ms["original"]
        )
        for g in ("element", "neuron")
    }
    b = result["bytes"]
    for g in ("element", "neuron"):
        out[f"PAD compression κ={KAPPA:g}, {g} masks: expert bytes ÷ expected {b['expected_ratio']:.4f}"] = (
            spread([b["ratios"][g] / b["expected_ratio"]])
        )  # one value: bytes do not vary
    return out


def compress_markdown(result: dict) -> list[str]:
    title = (
        f"### PAD compression of a Mixtral MoE block (H {HIDDEN}, F {INTER}, {EXPERTS} experts, top-{TOP_K}, "
        f"κ = {KAPPA:g}, inference, {result['rows'][0]['tokens']} tokens)"
    )
    lines = ["", title, "", "| Variant | ms | × original |", "| --- | ---: | ---: |"]
    lines += [f"| {r['variant']} | {r['ms']:.1f} | {fmt(r['ratio'])} |" for r in result["rows"]]
    b = result["bytes"]
    sizes = (
        f"Expert bytes: original {b['original'] / 2**20:.2f} MiB; element masks "
        f"{b['element'] / 2**20:.2f} MiB ({b['ratios']['element']:.4f}); neuron masks "
        f"{b['neuron'] / 2**20:.2f} MiB ({b['ratios']['neuron']:.4f}); ((1 − κ) + κ·E)/E = "
        f"{b['expected_ratio']:.4f}."
    )
    lines += ["", sizes]
    return lines
