"""The README's commands and Python example stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).strip().splitlines()
    assert block == ["bash scripts/setup.sh && .venv/bin/padnet compare --out runs/compare",
                     ".venv/bin/python -m pytest"]
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert block[1] in ci


@pytest.mark.slow
def test_python_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes pad-resnet18/
    code = re.search(r"```python\n(.*?)```", README, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    pad, deployed, x = namespace["pad"], namespace["deployed"], namespace["x"]
    report = pad.training_state.report
    assert report.dynamic == round(0.3 * report.total) and pad.training_state.step == 10
    assert "compact parameters" in capsys.readouterr().out
    pad.eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), pad(x), rtol=1e-4, atol=1e-4)
    assert (tmp_path / "pad-resnet18" / "padnet_config.json").is_file()

