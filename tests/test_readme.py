"""The README's commands and Python example stay true."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).strip().splitlines()
    assert block == ["bash scripts/setup.sh && .venv/bin/padnet compare --out runs/compare",
                     ".venv/bin/python -m pytest"]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert block[1] in ci


def test_python_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes model.safetensors and model.onnx
    code = re.search(r"```python\n(.*?)```", README, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    model, report = namespace["model"], namespace["report"]
    assert report.dynamic == round(0.3 * report.total)
    out = capsys.readouterr().out
    assert "dynamic ratio 0.3000" in out
    assert model.fc.out_features == 10
    deployed, same, x = namespace["deployed"], namespace["same"], namespace["x"]
    with torch.no_grad():
        torch.testing.assert_close(same(x), deployed(x), rtol=0, atol=0)
    assert (tmp_path / "model.onnx").is_file()
