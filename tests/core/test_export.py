"""ONNX and TorchScript export with a dynamic batch dimension, and the deploy / bench commands."""

from __future__ import annotations

import pytest
import torch

from padnet import create_model, partition
from padnet.cli import main
from padnet.deployment.deploy import deploy
from padnet.deployment.export import export_onnx, export_torchscript
from padnet.errors import ConfigError

torch.set_num_threads(1)


def _model(conv="pad", **options):
    torch.manual_seed(0)
    model = create_model("resnet10", conv=conv, num_classes=10, stem="small", width=0.25, **options)
    if conv == "pad":
        partition(model, 0.3, "random", scope="local")
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()
        model(torch.randn(8, 3, 16, 16))
    return model.eval()


@pytest.mark.parametrize("deployed", [False, True], ids=["training-form", "deployed"])
def test_onnx_export_runs_at_two_batch_sizes(tmp_path, deployed):
    ort = pytest.importorskip("onnxruntime")
    model = _model(granularity="filter")
    model = deploy(model) if deployed else model
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, 16, 16))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # one file, no temporary side files
    session = ort.InferenceSession(str(path))
    for batch in (1, 5):  # neither is the export's batch size
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            expected = model(x)
        (out,) = session.run(None, {"x": x.numpy()})
        assert out.shape == (batch, 10)
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv", ["static", "dy", "pad"])
def test_torchscript_export_runs_at_two_batch_sizes(tmp_path, conv):
    model = _model(conv)
    path = export_torchscript(model, tmp_path / "m.pt", torch.randn(2, 3, 16, 16))
    loaded = torch.jit.load(str(path))
    for batch in (1, 4):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    if conv != "static":
        assert model.layer1[0].conv1.formulation == "auto"  # the layers' own setting is restored


def test_export_refuses_layers_with_batch_sized_groups(tmp_path):
    model = _model("odconv")
    with pytest.raises(ConfigError, match="freeze the batch size"):
        export_torchscript(model, tmp_path / "m.pt", torch.randn(2, 3, 16, 16))
    assert not (tmp_path / "m.pt").exists()


def test_bench_rejects_unknown_parts_in_one_line(tmp_path, capsys):
    assert main(["bench", "--parts", "gpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("padnet: error:") and "gpu" in err and "\n" not in err


def test_deploy_command_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert main(["deploy", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "d")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_deploy_onnx_prints_nothing_the_user_cannot_act_on(tmp_path):
    import os
    import subprocess
    import sys

    from padnet.training.config import TrainConfig
    from padnet.training.engine import save_checkpoint
    from padnet.training.engine.trainer import build_model

    pytest.importorskip("onnxscript")
    cfg = TrainConfig(dataset="digits", conv="pad", width=0.125).validate()
    model = build_model(cfg, 10, 1)
    partition(model, 0.3, "random")
    path = save_checkpoint(
        tmp_path / "model.safetensors", model, {"config": cfg.to_dict(), "epoch": 1, "step": 1}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "padnet", "deploy", str(path), "--out", str(tmp_path / "out"), "--onnx"],
        capture_output=True,
        text=True,
        env={**os.environ, "PADNET_ALLOCATOR": "0"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no exporter registration notices, no PyTorch-internal deprecation warnings
    assert "model.onnx (dynamic batch)" in proc.stdout
