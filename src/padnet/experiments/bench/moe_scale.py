"""`padnet bench --parts moe-scale`: `padnet moe-compress` one decoder layer at a time on checkpoints larger than
the memory it may use, and the exported standard model's speed.

Mixtral-architecture checkpoints of random weights (H 1024, F 3584, 8 experts, top-2, float16 shards of one
decoder layer each, the experts stored as transformers stacks them) are written to disk at two depths. Each is
compressed (PAD, κ = 0.3, neuron masks, 2 IMP iterations, 4 calibration batches of 4 × 128 tokens) in a process of
its own, whose peak resident memory (`VmHWM`) is compared with the checkpoint's size and with a process that
only imports padnet and transformers and builds the model on the meta device. The goal (issue 29): peak memory
below one third of the checkpoint and growing with one layer, not with depth.

The shallower compressed model is also exported (`--export transformers`) and its forward pass in plain
transformers (float32, 512 tokens, inference) timed against the original Mixtral's in the same rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from padnet.experiments.bench.timing import fmt, interleaved_rounds, ratio_spread
from padnet.training.allocator import ALLOCATOR_ENV

HIDDEN, INTER, EXPERTS, TOP_K, HEADS = 1024, 3584, 8, 2, 8
DEPTHS = (8, 32)  # decoder layers of the two checkpoints
KAPPA = 0.3
BLOCK, BATCH, CALIBRATION_BATCHES, HELDOUT_BLOCKS = 128, 4, 4, 4
DTYPE = torch.float16


def _config(layers: int, vocab: int):
    import transformers

    return transformers.MixtralConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS // 4,
        num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        max_position_embeddings=BLOCK,
        tie_word_embeddings=False,
        dtype="float16",
    )


def write_checkpoint(folder: Path, layers: int, tokenizer) -> int:
    """A Mixtral checkpoint of random weights (std 0.02; norms 1) in float16 shards, one per decoder layer and one
    for the embeddings, norm and head, with `tokenizer`; returns its bytes. Never holds more than one layer."""
    from safetensors.torch import save_file

    config = _config(layers, len(tokenizer))
    with torch.device("meta"):
        import transformers

        skeleton = transformers.MixtralForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True)
    groups: dict[str, dict[str, tuple]] = {}
    for key, tensor in skeleton.state_dict().items():
        parts = key.split(".")
        group = f"layer{int(parts[2]):03d}" if parts[1] == "layers" else "outer"
        groups.setdefault(group, {})[key] = tuple(tensor.shape)
    weight_map, size = {}, 0
    for index, (_, shapes) in enumerate(sorted(groups.items())):
        tensors = {
            key: torch.ones(shape, dtype=DTYPE)
            if key.endswith("norm.weight")
            else (torch.randn(shape, generator=generator) * 0.02).to(DTYPE)
            for key, shape in shapes.items()
        }
        name = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        size += (folder / name).stat().st_size
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return size


def _child(code: str) -> dict:
    """Run `code` in a fresh Python; the JSON object its last line of output prints, with the child's own peak
    resident memory in bytes as `peak_bytes`: `VmHWM` of /proc/self/status, which belongs to the process's memory
    map since its exec (`ru_maxrss` would count the parent's resident memory at the fork)."""
    code += (
        "\nimport json as _j, re as _re\n"
        "_peak = int(_re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "print(_j.dumps({**RESULT, 'peak_bytes': _peak}))\n"
    )
    # glibc's default allocator, as `padnet moe-compress` runs (padnet.training.allocator.MEMORY_BOUND_COMMANDS)
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"the benchmark's child process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _baseline_code(folder: Path) -> str:
    return (
        "import padnet.training.nlp.compress as c\n"
        f"c.meta_skeleton(__import__('pathlib').Path({str(folder)!r}))\n"
        "RESULT = {}"
    )


def _compress_code(folder: Path, text: Path, out: Path, export: str) -> str:
    return (
        "from padnet.training.nlp.compress import CompressConfig, compress_folder\n"
        f"cfg = CompressConfig(kappa={KAPPA}, granularity='neuron', partition_iterations=2, block_size={BLOCK}, "
        f"batch_size={BATCH}, calibration_batches={CALIBRATION_BATCHES}, heldout={HELDOUT_BLOCKS / 24!r}, "
        f"export={export!r}, progress=False)\n"
        f"r = compress_folder({str(folder)!r}, {str(text)!r}, {str(out)!r}, cfg)\n"
        "RESULT = {'seconds_per_layer': r['seconds_per_layer'], 'seconds': r['seconds'], "
        "'bytes_ratio': r['bytes_ratio'], 'expected_bytes_ratio': r['expected_bytes_ratio']}"
    )


def _calibration_text(path: Path, tokenizer) -> None:
    """24 blocks of `BLOCK` tokens of review text (4 held out), one review per line."""
    from padnet.experiments.studies.compression import review_texts

    lines, tokens = [], 0
    for review in review_texts()[1]:
        lines.append(review)
        tokens += len(tokenizer(review)["input_ids"]) + 1
        if tokens > 25 * BLOCK:
            break
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _forward_ratio(original: Path, exported: Path, repeats: int) -> dict:
    import transformers

    models = {
        name: transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True
        ).eval()
        for name, folder in (("original", original), ("exported", exported))
    }
    ids = torch.randint(
        0, models["original"].config.vocab_size, (1, 4 * BLOCK), generator=torch.Generator().manual_seed(0)
    )

    def call(model):
        def run():
            with torch.no_grad():
                return model(input_ids=ids).logits

        return run

    times = interleaved_rounds({name: call(m) for name, m in models.items()}, repeats)
    return {
        "ms": {name: statistics.median(t) * 1e3 for name, t in times.items()},
        "ratio": ratio_spread(times["exported"], times["original"]),
        "classes": {name: type(m).__name__ for name, m in models.items()},
    }


def bench_moe_scale(work: Path, repeats: int = 3, progress=None) -> dict:
    """Write the checkpoints under `work` (deleted afterwards), compress each in a child process, time the export.
    Returns `runs` (per depth: checkpoint bytes, peak and baseline memory, seconds per layer) and `forward`."""
    from padnet.experiments.studies.compression import build_tokenizer, review_texts

    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        tokenizer = build_tokenizer(review_texts()[0][:2000], work / "tokenizer", 4096)
        text = work / "calibration.txt"
        _calibration_text(text, tokenizer)
        runs = []
        for layers in DEPTHS:
            if progress:
                progress(f"moe-scale: writing a {layers}-layer float16 Mixtral checkpoint")
            folder = work / f"mixtral-{layers}"
            size = write_checkpoint(folder, layers, tokenizer)
            baseline = _child(_baseline_code(folder))["peak_bytes"]
            if progress:
                progress(f"moe-scale: compressing it layer by layer ({size / 2**30:.2f} GiB)")
            measured = _child(_compress_code(folder, text, work / f"out-{layers}", "padnet"))
            runs.append(
                {"layers": layers, "checkpoint_bytes": size, "baseline_peak_bytes": baseline, **measured}
            )
            shutil.rmtree(work / f"out-{layers}")
            if layers != DEPTHS[0]:
                shutil.rmtree(folder)
        if progress:
            progress("moe-scale: exporting the shallow model and timing both in transformers")
        shallow = work / f"mixtral-{DEPTHS[0]}"
        exported = _child(_compress_code(shallow, text, work / "export", "transformers"))
        forward = {**_forward_ratio(shallow, work / "export" / "model", repeats), "export": exported}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"runs": runs, "forward": forward}


def moe_scale_summary(result: dict) -> dict:
    """The issue's targets: peak memory ÷ checkpoint (< 1/3) at each depth, and the exported forward ratio."""
    out = {
        f"layer-by-layer compression, {r['layers']} layers: peak memory ÷ checkpoint (< 0.33)": {
            "median": r["peak_bytes"] / r["checkpoint_bytes"],
            "min": r["peak_bytes"] / r["checkpoint_bytes"],
            "max": r["peak_bytes"] / r["checkpoint_bytes"],
        }
        for r in result["runs"]
    }
    out["exported Qwen2-MoE (neuron masks κ = 0.3): forward × original Mixtral in transformers"] = result[
        "forward"
    ]["ratio"]
    return out


def moe_scale_markdown(result: dict) -> list[str]:
    lines = [
        "",
        f"### Layer-by-layer compression from disk (H {HIDDEN}, F {INTER}, {EXPERTS} experts, float16 shards, "
        f"κ = {KAPPA:g}, neuron masks)",
        "",
        "| Layers | Checkpoint (GiB) | Peak RSS (GiB) | ÷ checkpoint | Import + skeleton (GiB) | Above it (GiB) "
        "| s / layer (median) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['layers']} | {r['checkpoint_bytes'] / 2**30:.2f} | {r['peak_bytes'] / 2**30:.2f} | "
            f"{r['peak_bytes'] / r['checkpoint_bytes']:.3f} | {r['baseline_peak_bytes'] / 2**30:.2f} | "
            f"{(r['peak_bytes'] - r['baseline_peak_bytes']) / 2**30:.2f} | "
            f"{statistics.median(r['seconds_per_layer']):.1f} |"
        )
    f = result["forward"]
    lines += [
        "",
        f"Exported model ({f['classes']['exported']}) forward, {4 * BLOCK} tokens, float32, in plain transformers: "
        f"{f['ms']['exported']:.0f} ms against the original {f['classes']['original']}'s {f['ms']['original']:.0f} "
        f"ms, {fmt(f['ratio'])}× (expert bytes {f['export']['bytes_ratio']:.3f} of the original).",
    ]
    return lines


def moe_scale_figure(result: dict, path: Path) -> None:
    """Bars of the checkpoint's size, the compressing process's peak memory and what importing padnet and
    transformers costs, per depth, in GiB."""
    from padnet.experiments.studies.common import figure
    from padnet.saving.fileio import atomic_path

    fig, (ax,) = figure(1, 5.0)
    runs = result["runs"]
    x = range(len(runs))
    for offset, key, label in (
        (-0.27, "checkpoint_bytes", "checkpoint (float16)"),
        (0.0, "peak_bytes", "peak resident memory"),
        (0.27, "baseline_peak_bytes", "import + meta skeleton"),
    ):
        ax.bar([i + offset for i in x], [r[key] / 2**30 for r in runs], width=0.27, label=label)
    ax.set_xticks(list(x), [f"{r['layers']} layers" for r in runs])
    ax.set_ylabel("GiB")
    ax.set_title("padnet moe-compress, one decoder layer at a time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
