"""`padnet bench`: speed, memory and file-size ratios of dynamic convolution against the static one.

Every ratio divides two numbers measured in the same run. The parts:

* `layers` — one 3×3 convolution at the CIFAR ResNet-18 shapes (64 ch 32×32, 128 ch 16×16, 256 ch 8×8,
  512 ch 4×4), batch 1 and 64, inference (`no_grad`) and training (forward + backward): the static
  convolution, DY-Conv in each formulation and with the automatic choice, PAD-Net κ = 0.3 (unstructured and
  filter-structured, training and deployed form).
* `models` — CIFAR ResNet-18 (batch 64, 32×32): a training step (forward, backward, SGD step) and inference,
  with peak memory (growth of the process's peak RSS while running), each variant in a fresh process, once
  with glibc's default allocator settings and once with the settings of `ALLOCATOR_ENV`.
* `files` — deployed ImageNet ResNet-50 safetensors file sizes: DY-Conv vs PAD-Net κ = 0.3.
* `moe` — MoE, PAD-MoE and structured PAD-MoE feed-forward layers against the dense FFN at the MiniLM
  and BERT-base sizes (`padnet.experiments.bench.moe`; `--quick`: MiniLM only).
* `compress` — MoE compression ([`padnet.experiments.bench.compress`][padnet.experiments.bench.compress]).
* `compile` — ResNet-18 training steps compiled, in bfloat16 autocast and in channels_last against eager float32
  ([`padnet.experiments.bench.scale`][padnet.experiments.bench.scale]; `--quick`: batch 32).

PAD-Net masks come from a random local partition at κ = 0.3 (speed does not depend on which elements are
dynamic); filter-structured layers keep a multiple of `ALIGN` dynamic filters (`partition(align=16)`).

Every ratio is measured once per round (`repeats` rounds) from two timings of that round, and reported as
the median over rounds with its spread (min–max) ([`padnet.experiments.bench.timing`][padnet.experiments.bench.timing]): layers and MoE layers time every
variant in turn within a round; whole models run each variant in a fresh process per round, timing the best of
`MODEL_STEPS` steps after a warm-up step. The report names the CPU model and the threads. `device="cuda"`
runs the layers, models and MoE parts on the GPU, timed with CUDA events, peak memory from
`torch.cuda.max_memory_allocated`. Not part of the tests.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from padnet.errors import ConfigError
from padnet.experiments.bench.timing import best_of, fmt, interleaved_rounds, machine, ratio_spread
from padnet.training.allocator import ALLOCATOR_ENV

LAYER_SHAPES = ((64, 32), (128, 16), (256, 8), (512, 4))
PARTS = ("layers", "models", "files", "moe", "compress", "compile")  # the default run
AT_SIZE_PARTS = ("moe-scale",)  # run only when named: multi-GB checkpoints, about 8 minutes here
DEVICES = ("cpu", "cuda")
KAPPA = 0.3
ALIGN = 16  # dynamic filters per filter-structured layer: a multiple of 16 (partition(..., align=16))
MODEL_VARIANTS = {  # name: (conv, options, partition granularity or None, deployed, formulation override)
    "static": ("static", {}, None, False, None),
    "dy-grouped": ("dy", {}, None, False, "grouped"),
    "dy": ("dy", {}, None, False, None),
    "dy-autotune": ("dy", {}, None, False, "autotune"),
    "pad": ("pad", {}, "shared", False, None),
    "pad-filter": ("pad", {"granularity": "filter"}, "filter", False, None),
    "dy-deployed": ("dy", {}, None, True, None),
    "pad-deployed": ("pad", {}, "shared", True, None),
    "pad-filter-deployed": ("pad", {"granularity": "filter"}, "filter", True, None),
    "sdconv": ("sdconv", {}, None, False, None),
    "sdconv-deployed": ("sdconv", {}, None, True, None),
    "sdconv-same-deployed": ("sdconv", {"mask_strategy": "same"}, None, True, None),
}
SPARSITY = 0.5  # SD-Conv variants: each layer's threshold at the median of its scores
TRAIN_VARIANTS = ("static", "dy-grouped", "dy", "dy-autotune", "pad", "pad-filter")
MODEL_STEPS = 2  # timed steps per whole-model process (after a warm-up step); the shortest counts
QUICK_LEAVES_OUT = (
    "layers: 2 of the 4 shapes (128 ch 16×16 and 256 ch 8×8 left out)",
    "models: the default allocator (the tuned one only)",
    "moe: the BERT-base size (MiniLM only)",
    "compile: batch 32 (64)",
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ layers


def _layer_variants(channels: int) -> dict[str, nn.Module]:
    from padnet.deployment.deploy import deploy
    from padnet.layers import DynamicConv2d, PADConv2d
    from padnet.partitioning import partition

    torch.manual_seed(0)
    layers = {"static": nn.Conv2d(channels, channels, 3, padding=1, bias=False)}
    for form in ("grouped", "per_sample", "batched", "auto"):
        layers[f"dy-{form}"] = DynamicConv2d(channels, channels, 3, padding=1, formulation=form)
    for gran in ("shared", "filter"):
        pad = PADConv2d(channels, channels, 3, padding=1, granularity=gran)
        partition(nn.Sequential(pad), KAPPA, "random", scope="local", align=ALIGN if gran == "filter" else 1)
        name = "pad" if gran == "shared" else "pad-filter"
        layers[name] = pad
        layers[f"{name}-deployed"] = deploy(nn.Sequential(pad), fold_bn=False)[0]
    return layers


def bench_layers(
    batches=(1, 64), shapes=LAYER_SHAPES, repeats: int = 3, progress=None, device: str = "cpu"
) -> list[dict]:
    """Rows {channels, size, batch, mode, variant, ms (median), ratio (spread over rounds, × the static conv of
    the same round)}; the variants of a row are timed in turn in each of `repeats` rounds."""
    rows = []
    for channels, size in shapes:
        layers = {name: layer.to(device) for name, layer in _layer_variants(channels).items()}
        for batch in batches:
            x = torch.randn(batch, channels, size, size, device=device)
            for mode in ("inference", "training"):
                if progress:
                    progress(f"layer {channels}ch {size}px b{batch} {mode}")
                train = mode == "training"
                fns = {
                    name: _layer_step(layer.train(train), x, train)
                    for name, layer in layers.items()
                    if not (train and name.endswith("deployed"))
                }
                times = interleaved_rounds(fns, repeats, device=device)
                rows += [
                    {
                        "channels": channels,
                        "size": size,
                        "batch": batch,
                        "mode": mode,
                        "variant": n,
                        "ms": statistics.median(t) * 1e3,
                        "ratio": ratio_spread(t, times["static"]),
                    }
                    for n, t in times.items()
                ]
    return rows


def _layer_step(layer: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], object]:
    if not train:

        def infer():
            with torch.no_grad():
                return layer(x)

        return infer
    xg = x.clone().requires_grad_(True)
    params = [p for p in layer.parameters() if p.requires_grad]

    def step():
        return torch.autograd.grad(layer(xg).sum(), [xg, *params], allow_unused=True)

    return step


# ------------------------------------------------------------------------------------------ models


def _element_ratio(model: nn.Module) -> float:
    """Dynamic fraction of all masked elements (a filter counts as its elements)."""
    from padnet.layers.modes import partial_modes

    masks = [mode.element_mask() for _, mode in partial_modes(model)]
    return float(sum(m.sum() for m in masks) / sum(m.numel() for m in masks))


@torch.no_grad()
def _sparsify(model: nn.Module, sparsity: float) -> None:
    """Set every SD-Conv threshold to the `sparsity` quantile of its layer's scores (|W|, or their mean over
    the k kernels for the same mask), as a trained model at that sparsity would have."""
    from padnet.layers.sdconv import sparse_layers

    for _, layer in sparse_layers(model):
        scores = layer.weight.abs()
        scores = scores.mean(0) if layer.weight_mode.strategy == "same" else scores
        layer.weight_mode.threshold.fill_(float(torch.quantile(scores.flatten(), sparsity)))


def _build_model(variant: str, batch: int, size: int, train: bool, device: str = "cpu") -> nn.Module:
    from padnet.deployment.deploy import deploy
    from padnet.layers.autotune import autotune
    from padnet.layers.formulations import FormulationChoice
    from padnet.models import create_model
    from padnet.partitioning import partition

    conv, options, granularity, deployed, formulation = MODEL_VARIANTS[variant]
    torch.manual_seed(0)
    model = create_model("resnet18", conv=conv, num_classes=10, stem="small", **options)
    model.dynamic_ratio = 1.0 if conv == "dy" else None
    if conv == "sdconv":
        _sparsify(model, SPARSITY)
    if granularity:
        align = ALIGN if granularity == "filter" else 1
        partition(model, KAPPA, "random", scope="local", align=align)
        model.dynamic_ratio = _element_ratio(model)
    if deployed:
        model = deploy(model)
    model = model.to(device).train(train)
    if formulation == "autotune":
        autotune(model, torch.randn(batch, 3, size, size, device=device), train=train)
    elif formulation:
        for m in model.modules():
            if isinstance(m, FormulationChoice):
                m.formulation = formulation
    return model


def measure_model(
    variant: str, mode: str, batch: int = 64, size: int = 32, steps: int = MODEL_STEPS, device: str = "cpu"
) -> dict:
    """Seconds per step (the shortest of `steps` after a warm-up step) and peak-memory growth (MB: of the
    process's peak RSS, or of the GPU's allocated memory) of one ResNet-18 variant, in this process."""
    train = mode == "training"
    model = _build_model(variant, batch, size, train, device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gpu = torch.device(device).type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**20 if gpu else _peak_rss_mb()

    def step():
        if not train:
            with torch.no_grad():
                return model(x)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    seconds = best_of(step, steps, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else _peak_rss_mb()
    return {
        "variant": variant,
        "mode": mode,
        "seconds": seconds,
        "peak_mb": peak - before,
        "params": sum(p.numel() for p in model.parameters()),
        "dynamic_ratio": model.dynamic_ratio,
    }


def _worker(spec: dict, allocator: bool, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    if allocator:
        env.update(ALLOCATOR_ENV)
    env["PADNET_BENCH_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-m", "padnet.experiments.bench.run", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"benchmark worker failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_models(
    threads: int, repeats: int = 3, allocators=(False, True), progress=None, device: str = "cpu"
) -> list[dict]:
    """One fresh process per (allocator setting, mode, variant) in each of `repeats` rounds. Rows: `seconds`
    (median over rounds) and `round_seconds`, `ratio_static` (spread of the per-round ratios to the static
    model), `peak_mb` (largest over rounds), `params`, `dynamic_ratio`."""
    rows = []
    for allocator in allocators:
        name = "tuned" if allocator else "default"
        for mode in ("training", "inference"):
            variants = TRAIN_VARIANTS if mode == "training" else tuple(MODEL_VARIANTS)
            runs: dict[str, list] = {v: [] for v in variants}
            for r in range(repeats):
                for variant in variants:
                    if progress:
                        progress(f"resnet18 {mode} {variant} ({name} allocator), round {r + 1}/{repeats}")
                    runs[variant].append(
                        _worker({"variant": variant, "mode": mode, "device": device}, allocator, threads)
                    )
            static = [run["seconds"] for run in runs["static"]]
            for found in runs.values():
                seconds = [run["seconds"] for run in found]
                rows.append(
                    {
                        **found[0],
                        "allocator": name,
                        "seconds": statistics.median(seconds),
                        "round_seconds": seconds,
                        "ratio_static": ratio_spread(seconds, static),
                        "peak_mb": max(run["peak_mb"] for run in found),
                    }
                )
    return rows


# ------------------------------------------------------------------------------------------- files


def bench_files(progress=None) -> list[dict]:
    """Deployed ImageNet ResNet-50 file sizes (bytes): DY-Conv, PAD-Net κ = 0.3 (shared, filter masks) and
    SD-Conv at 50 % sparsity (different, same masks)."""
    from padnet.adapter.model import save_pretrained
    from padnet.deployment.deploy import deploy
    from padnet.metrics import count_parameters
    from padnet.models import create_model
    from padnet.partitioning import partition
    from padnet.saving.folder import WEIGHTS_FILE

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, conv, options in (
            ("dy", "dy", {}),
            ("pad", "pad", {}),
            ("pad-filter", "pad", {"granularity": "filter"}),
            ("sdconv", "sdconv", {}),
            ("sdconv-same", "sdconv", {"mask_strategy": "same"}),
        ):
            if progress:
                progress(f"resnet50 file {name}")
            torch.manual_seed(0)
            model = create_model("resnet50", conv=conv, **options)
            if conv == "pad":
                align = ALIGN if options else 1
                partition(model, KAPPA, "random", scope="local", align=align)
            if conv == "sdconv":
                _sparsify(model, SPARSITY)
            params = count_parameters(model)
            folder = save_pretrained(deploy(model, inplace=True), Path(tmp) / name)
            rows.append(
                {"variant": name, "bytes": (folder / WEIGHTS_FILE).stat().st_size, "compact_params": params}
            )
            del model
    dy = rows[0]["bytes"]
    return [{**r, "ratio_dy": r["bytes"] / dy} for r in rows]


# ------------------------------------------------------------------------------------------ report


def summary(result: dict) -> dict:
    """The issue's target ratios from the measured rows (None where a part was not run)."""
    out = {}
    models = [r for r in result.get("models", []) if r["allocator"] == "tuned"]
    get = {(r["mode"], r["variant"]): r["round_seconds"] for r in models}
    if models:
        for key, (mode, a, b) in {
            "dy_train_vs_static": ("training", "dy", "static"),
            "dy_usual_train_vs_static": ("training", "dy-grouped", "static"),
            "dy_autotune_train_vs_static": ("training", "dy-autotune", "static"),
            "pad_infer_vs_dy": ("inference", "pad-deployed", "dy"),
            "pad_train_form_infer_vs_dy": ("inference", "pad", "dy"),
            "pad_filter_infer_vs_static": ("inference", "pad-filter-deployed", "static"),
            "sdconv_deployed_infer_vs_dy": ("inference", "sdconv-deployed", "dy"),
            "sdconv_deployed_infer_vs_training_form": ("inference", "sdconv-deployed", "sdconv"),
            "sdconv_same_deployed_infer_vs_dy": ("inference", "sdconv-same-deployed", "dy"),
        }.items():
            out[key] = ratio_spread(get[(mode, a)], get[(mode, b)])
    files = {r["variant"]: r["ratio_dy"] for r in result.get("files", [])}
    if files:
        out["pad_file_vs_dy"] = files["pad"]
        out["pad_filter_file_vs_dy"] = files["pad-filter"]
        out["sdconv_file_vs_dy"] = files["sdconv"]
    if result.get("moe"):
        from padnet.experiments.bench.moe import moe_summary

        out.update(moe_summary(result["moe"]))
    if result.get("compress"):
        from padnet.experiments.bench.compress import compress_summary

        out.update(compress_summary(result["compress"]))
    if result.get("compile"):
        from padnet.experiments.bench.scale import compile_summary

        out.update(compile_summary(result["compile"]))
    if result.get("moe-scale"):
        from padnet.experiments.bench.moe_scale import moe_scale_summary

        out.update(moe_scale_summary(result["moe-scale"]))
    return out


def markdown(result: dict) -> str:
    host = result["machine"]
    gpu = f", GPU {host['gpu']}" if host.get("gpu") else ""
    title = (
        f"# padnet bench: {host['cpu']} ({host['logical_cpus']} logical CPUs), {host['threads']} threads"
        f"{gpu}, torch {host['torch']}"
    )
    lines = [title, "", f"Ratios: median over {result['repeats']} rounds (min–max over the rounds).", ""]
    if result.get("quick"):
        lines += ["`--quick` leaves out: " + "; ".join(QUICK_LEAVES_OUT) + ".", ""]
    if result.get("summary"):
        lines += ["| Target ratio | Measured |", "| --- | ---: |"]
        lines += [
            f"| {k} | {fmt(v) if isinstance(v, dict) else format(v, '.3f')} |"
            for k, v in result["summary"].items()
        ] + [""]
    if result.get("models"):
        lines += [
            "## CIFAR ResNet-18, batch 64",
            "",
            "| Allocator | Mode | Variant | Dynamic ratio | ms | × static | Peak MB | Params |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['allocator']} | {r['mode']} | {r['variant']} | "
            f"{'–' if r['dynamic_ratio'] is None else format(r['dynamic_ratio'], '.3f')} | "
            f"{r['seconds'] * 1e3:.0f} | {fmt(r['ratio_static'])} | {r['peak_mb']:.0f} | {r['params'] / 1e6:.2f}M |"
            for r in result["models"]
        ]
        lines.append("")
    if result.get("layers"):
        lines += ["## One 3×3 convolution (× static, same row)", ""]
        variants = list(dict.fromkeys(r["variant"] for r in result["layers"]))
        lines += [
            "| Shape | Batch | Mode | static ms | " + " | ".join(variants[1:]) + " |",
            "| --- | ---: | --- | ---: |" + " ---: |" * (len(variants) - 1),
        ]
        keys = dict.fromkeys((r["channels"], r["size"], r["batch"], r["mode"]) for r in result["layers"])
        for c, s, b, mode in keys:
            row = {
                r["variant"]: r
                for r in result["layers"]
                if (r["channels"], r["size"], r["batch"], r["mode"]) == (c, s, b, mode)
            }
            cells = [fmt(row[v]["ratio"]) if v in row else "–" for v in variants[1:]]
            lines.append(
                f"| {c} ch {s}×{s} | {b} | {mode} | {row['static']['ms']:.1f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    if result.get("files"):
        lines += [
            "## Deployed ImageNet ResNet-50 files",
            "",
            "| Variant | MB | × DY-Conv | Compact params |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['variant']} | {r['bytes'] / 2**20:.1f} | {r['ratio_dy']:.3f} | {r['compact_params'] / 1e6:.2f}M |"
            for r in result["files"]
        ]
        lines.append("")
    if result.get("moe"):
        from padnet.experiments.bench.moe import moe_markdown

        lines += moe_markdown(result["moe"])
    if result.get("compress"):
        from padnet.experiments.bench.compress import compress_markdown

        lines += compress_markdown(result["compress"])
    if result.get("compile"):
        from padnet.experiments.bench.scale import compile_markdown

        lines += compile_markdown(result["compile"])
    if result.get("moe-scale"):
        from padnet.experiments.bench.moe_scale import moe_scale_markdown

        lines += moe_scale_markdown(result["moe-scale"])
    return "\n".join(lines) + "\n"


def check_bench_options(threads: int, repeats: int, device: str) -> None:
    """ConfigError unless 1 <= threads <= 256, repeats >= 1 and `device` is usable here."""
    from padnet.training.config import MAX_THREADS

    if not (isinstance(threads, int) and 1 <= threads <= MAX_THREADS):
        raise ConfigError(f"threads must be in [1, {MAX_THREADS}], got {threads!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here")


def run_bench(
    out: Path,
    parts=PARTS,
    threads: int = 2,
    repeats: int = 3,
    quick: bool = False,
    progress=None,
    device: str = "cpu",
) -> dict:
    """Run the chosen parts on `device` (`"cpu"` or `"cuda"`), write `bench.json` and `bench.md` into
    `out` and return the result.

    Raises:
        ConfigError: unknown parts or device, `"cuda"` without a GPU, or `threads` / `repeats` out of range
            ([`check_bench_options`][padnet.experiments.bench.run.check_bench_options]).
    """
    from padnet.saving.fileio import write_json, write_text

    unknown = sorted(set(parts) - set(PARTS + AT_SIZE_PARTS))
    if unknown:
        raise ConfigError(
            f"unknown benchmark part(s) {', '.join(unknown)}; choose from {', '.join(PARTS + AT_SIZE_PARTS)}"
        )
    check_bench_options(threads, repeats, device)
    if quick and progress:
        progress("--quick leaves out: " + "; ".join(QUICK_LEAVES_OUT))
    torch.set_num_threads(threads)
    result: dict = {"machine": machine(threads, device), "repeats": repeats, "quick": quick, "device": device}
    start = time.perf_counter()
    if "layers" in parts:
        spec = {"part": "layers", "repeats": repeats, "quick": quick, "device": device}
        result["layers"] = _worker(spec, True, threads)["rows"]
    if "models" in parts:  # glibc's allocator settings matter on the CPU only
        allocators = (True,) if quick or device == "cuda" else (False, True)
        result["models"] = bench_models(threads, repeats, allocators, progress, device)
    if "files" in parts:
        result["files"] = bench_files(progress)
    if "moe" in parts:
        from padnet.experiments.bench.moe import bench_moe

        result["moe"] = bench_moe(
            repeats=repeats,
            sizes=("MiniLM",) if quick else ("MiniLM", "BERT-base"),
            progress=progress,
            device=device,
        )
    if "compress" in parts:
        from padnet.experiments.bench.compress import bench_compress

        result["compress"] = bench_compress(repeats=repeats, progress=progress, device=device)
    if "compile" in parts:
        from padnet.experiments.bench.scale import bench_compile

        result["compile"] = bench_compile(
            lambda spec: _worker(spec, True, threads), repeats, quick, progress, device
        )
    if "moe-scale" in parts:
        from padnet.experiments.bench.moe_scale import bench_moe_scale, moe_scale_figure

        result["moe-scale"] = bench_moe_scale(out / "moe-scale-work", repeats, progress)
        moe_scale_figure(result["moe-scale"], out / "moe-scale.png")
    result["summary"] = summary(result)
    result["seconds"] = time.perf_counter() - start
    write_json(out / "bench.json", result)
    write_text(out / "bench.md", markdown(result))
    return result


def _main(spec: dict) -> None:
    torch.set_num_threads(int(os.environ.get("PADNET_BENCH_THREADS", "2")))
    if spec.get("part") == "layers":
        shapes = LAYER_SHAPES[::3] if spec["quick"] else LAYER_SHAPES
        print(
            json.dumps({"rows": bench_layers(shapes=shapes, repeats=spec["repeats"], device=spec["device"])})
        )
    elif spec.get("part") == "compile":
        from padnet.experiments.bench.scale import measure_forms

        batch = 32 if spec["quick"] else 64
        model = _build_model(spec["variant"], batch, 32, True, spec["device"])
        print(json.dumps(measure_forms(model, spec["variant"], spec["repeats"], batch)))
    else:
        print(json.dumps(measure_model(spec["variant"], spec["mode"], device=spec["device"])))


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
