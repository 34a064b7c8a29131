"""Command line: one-line errors with exit status 2 for user mistakes, and nothing half-written."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import padnet
from padnet.cli import main
from padnet.layers import DeployedConv2d
from padnet.models import create_model
from padnet.training.engine.checkpoint import save_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("padnet: error:")
    for fragment in fragments:
        assert fragment in lines[0]


def write_idx(path: Path, array: np.ndarray, truncate: int = 0) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(payload[: len(payload) - truncate])


def fake_fashion_mnist(root: Path, truncate: int = 0) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("t10k", 32)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), truncate)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return root


TINY = ["--width", "0.125", "--epochs", "1", "--batch-size", "16", "--progress", "false"]
PARTITION = ["--partition-batches", "1", "--partition-iterations", "1"]  # for PAD-Net forms only


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train", "--model", "resnet99"], ["unknown model", "resnet18"]),
        (["train", "--dataset", "mnist-x"], ["unknown dataset", "fashion-mnist"]),
        (["train", "--conv", "wavelet"], ["unknown conv type"]),
        (["train", "--kappa", "0"], ["kappa", "(0, 1]"]),
        (["train", "--kappa", "1.5"], ["kappa", "(0, 1]"]),
        (["train", "--kappa", "abc"], ["kappa"]),
        (["train", "--epochs", "-1"], ["epochs"]),
        (["train", "--partition", "lottery"], ["partition method"]),
        (["count", "--model", "vgg16"], ["unknown model"]),
        (["count", "--width", "inf"], ["width"]),
        (["count", "--input", "0", "8", "8"], ["--input"]),
        (["train", "--threads", "-1"], ["threads"]),
        (["train", "--train-subset", "2.5"], ["train_subset"]),
        (["train", "--granularity", "row"], ["granularity"]),
        (["train", "--scale-mode", "free"], ["scale-factor mode"]),
        (["compare", "--convs", "static", "foo"], ["unknown conv type 'foo'"]),
        (["compare", "--kappa", "2"], ["kappa"]),
        (["train", "--conv", "sdconv", "--sparsity", "1.2"], ["sparsity must be in [0, 1)"]),
        (["train", "--conv", "sdconv", "--mask-strategy", "mixed"], ["unknown mask strategy 'mixed'"]),
        (["train", "--conv", "sdconv", "--threshold-lr", "0"], ["threshold_lr"]),
        (["sdconv", "all", "--budget-weight", "-1"], ["budget_weight"]),
    ],
)
def test_bad_arguments_give_one_line_error(capsys, tmp_path, argv, fragments):
    code, _, err = (
        run_cli(capsys, *argv, "--out", str(tmp_path / "run"))
        if argv[0] != "count"
        else run_cli(capsys, *argv)
    )
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("epochs: .inf\n", "epochs"),
        ("model: 18\n", "model must be a name"),
        ("conv: [pad]\n", "conv must be a name"),
        ("data_root: 5\n", "data_root must be a path"),
        ("seed: null\n", "seed needs a value"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_config_values(capsys, tmp_path, text, fragment):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()


def test_unwritable_out_is_one_line(capsys, tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "train", "--data-root", str(root), "--out", str(blocker / "run"), *TINY)
    assert_one_line_error(code, err, str(blocker))


def test_train_subset_and_image_options_for_image_folders(capsys, tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 10), (40 * i, 200 if cls == "a" else 20, 90)).save(folder / f"{i}.png")
    code, _out, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tmp_path / "imgs"),
        "--train-subset",
        "4",
        "--image-size",
        "8",
        "--channels",
        "1",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--width",
        "0.125",
        "--progress",
        "false",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--image-size", "8", "--out", str(tmp_path / "run2"))
    assert_one_line_error(
        code, err, "image_size applies to datasets imagefolder, arrays, not 'fashion-mnist'"
    )


def test_conv_names_are_canonical(capsys, tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    out = tmp_path / "run"
    code, _, _ = run_cli(
        capsys, "train", "--data-root", str(root), "--conv", "PAD-Net", "--out", str(out), *TINY, *PARTITION
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["conv"] == "pad" and results["partition"]["dynamic_ratio"] == pytest.approx(0.3, abs=1e-4)
    code, by_alias, _ = run_cli(capsys, "count", "--model", "resnet10", "--conv", "padnet")
    code, by_name, _ = run_cli(capsys, "count", "--model", "resnet10", "--conv", "pad")
    assert by_alias.splitlines()[1] == by_name.splitlines()[1] and "kappa=0.3" in by_alias


def test_partition_command_is_reproducible(capsys, tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    reports = []
    for i in range(2):
        path = tmp_path / f"r{i}.json"
        code, _, _ = run_cli(
            capsys,
            "partition",
            "--data-root",
            str(root),
            "--seed",
            "3",
            "--out",
            str(path),
            *TINY,
            *PARTITION,
        )
        assert code == 0
        reports.append(json.loads(path.read_text())["layers"])
    assert reports[0] == reports[1]


def test_flags_are_not_abbreviated(capsys):
    code, _, err = run_cli(capsys, "compare", "--seed", "3")
    assert_one_line_error(code, err, "unrecognized arguments")


def test_unknown_flag_is_one_line(capsys):
    code, _, err = run_cli(capsys, "train", "--no-such-flag", "1")
    assert_one_line_error(code, err, "unrecognized arguments")


def test_missing_data_root(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "train", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")
    )
    assert_one_line_error(code, err)
    assert not (tmp_path / "r").exists()


def test_truncated_data_file(capsys, tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm", truncate=100)
    code, _, err = run_cli(capsys, "train", "--data-root", str(root), "--out", str(tmp_path / "r"), *TINY)
    assert_one_line_error(code, err, "images-idx3-ubyte")
    assert not (tmp_path / "r").exists()


def test_config_file_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "missing.yaml"))
    assert_one_line_error(code, err, "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [resnet10\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert_one_line_error(code, err, "not valid YAML")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modle: resnet10\n")
    code, _, err = run_cli(capsys, "train", "--config", str(unknown))
    assert_one_line_error(code, err, "modle")


def test_sd_conv_trains_reports_its_sparsity_and_deploys(capsys, tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "train",
        "--data-root",
        str(root),
        "--conv",
        "sdconv",
        "--sparsity",
        "0.3",
        "--pruning-iterations",
        "0",
        "--out",
        str(out),
        *TINY,
    )
    assert code == 0 and "sparsity" in stdout and "kernel" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["sparsity"]["sparsity"] > 0 and len(results["sparsity"]["layers"]) == 11
    code, stdout, _ = run_cli(
        capsys,
        "deploy",
        str(out / "model.safetensors"),
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "deployed"),
    )
    assert code == 0 and float(stdout.split("max |difference| ")[1].split()[0]) < 1e-4


def test_train_writes_run_and_refuses_to_overwrite(capsys, tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys, "train", "--data-root", str(root), "--conv", "pad", "--out", str(out), *TINY, *PARTITION
    )
    assert code == 0 and "top-1" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "model.safetensors", "results.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    results = json.loads((out / "results.json").read_text())
    assert results["partition"]["dynamic_ratio"] == pytest.approx(0.3, abs=1e-4)
    code, _, err = run_cli(capsys, "train", "--data-root", str(root), "--out", str(out), *TINY)
    assert_one_line_error(code, err, "already holds a run")
    # evaluate the saved model, then a corrupt and a wrong-architecture checkpoint
    code, stdout, _ = run_cli(capsys, "evaluate", str(out / "model.safetensors"), "--data-root", str(root))
    assert code == 0 and "top-1" in stdout
    # deploy it: compact file, loadable, equal to the training form on test images
    code, stdout, _ = run_cli(
        capsys,
        "deploy",
        str(out / "model.safetensors"),
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "deployed"),
        "--torchscript",
    )
    assert code == 0, stdout
    difference = float(stdout.split("max |difference| ")[1].split()[0])
    assert difference < 1e-4
    assert (tmp_path / "deployed" / "model.pt").is_file()
    deployed = padnet.load_pretrained(tmp_path / "deployed")  # the folder rebuilds its architecture
    assert not deployed.training and any(isinstance(m, DeployedConv2d) for m in deployed.modules())
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((out / "model.safetensors").read_bytes()[:300])
    code, _, err = run_cli(capsys, "evaluate", str(corrupt))
    assert_one_line_error(code, err, "not a readable padnet checkpoint")
    pickle = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, pickle)
    code, _, err = run_cli(capsys, "evaluate", str(pickle))
    assert_one_line_error(code, err, "never unpickles a file")
    wrong = tmp_path / "wrong.safetensors"
    meta = {"config": {**results_config(out), "width": 0.25}}
    save_checkpoint(
        wrong,
        create_model(
            "resnet10", conv="pad", num_classes=10, in_chans=1, width=0.125, stem="small", num_kernels=2
        ),
        meta,
    )
    code, _, err = run_cli(capsys, "evaluate", str(wrong), "--data-root", str(root))
    assert_one_line_error(code, err, "does not match")


def results_config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_console_has_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(SRC), "PADNET_ALLOCATOR": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "padnet", "train", "--kappa", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "padnet: error: dynamic ratio kappa must be in (0, 1], got 7.0"
    ]


def test_count_command(capsys):
    code, out, _ = run_cli(capsys, "count", "--model", "resnet18", "--conv", "dy")
    assert code == 0
    assert "GMACs" in out and "params" in out


def test_partition_command(capsys, tmp_path):
    root = fake_fashion_mnist(tmp_path / "fm")
    report = tmp_path / "report.json"
    code, out, _ = run_cli(
        capsys, "partition", "--data-root", str(root), "--kappa", "0.5", "--out", str(report), *TINY
    )
    assert code == 0 and "dynamic ratio 0.5000" in out
    assert json.loads(report.read_text())["dynamic_ratio"] == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("conv,masked", [("pad-odconv", ".attention.channel"), ("pad-dcd", ".fusion")])
def test_partition_command_partitions_the_chosen_pad_form(capsys, tmp_path, conv, masked):
    root = fake_fashion_mnist(tmp_path / "fm")
    report = tmp_path / "report.json"
    code, _, _ = run_cli(
        capsys, "partition", "--data-root", str(root), "--conv", conv, "--out", str(report), *TINY, *PARTITION
    )
    assert code == 0
    names = [layer["name"] for layer in json.loads(report.read_text())["layers"]]
    assert any(name.endswith(masked) for name in names)


@pytest.mark.parametrize("command, re_executed", [("train", True), ("moe-compress", False)])
def test_the_allocator_settings_are_set_except_for_memory_bound_commands(monkeypatch, command, re_executed):
    import padnet.cli as cli
    from padnet.training.allocator import ALLOCATOR_ENV

    for key in (*ALLOCATOR_ENV, "PADNET_ALLOCATOR"):
        monkeypatch.delenv(key, raising=False)
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda path, argv, env: calls.append(env))
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(cli.sys, "argv", ["padnet", command, "--help"])
    monkeypatch.setattr(cli.sys, "platform", "linux")
    with pytest.raises(SystemExit):
        cli.console()
    assert bool(calls) == re_executed
    if re_executed:
        assert all(calls[0][k] == v for k, v in ALLOCATOR_ENV.items())
