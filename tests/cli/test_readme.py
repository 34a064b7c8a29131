"""The README's commands and Python example stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).strip().splitlines()
    assert block == [
        "bash scripts/setup.sh && .venv/bin/padnet compare --out runs/compare",
        ".venv/bin/python -m pytest",
    ]
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert block[1] in ci


@pytest.mark.slow
def test_quickstart_partitions_after_the_warm_up_and_merges_exactly(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quickstart writes my-pad/
    code = re.search(r"## Quickstart\n.*?```python\n(.*?)```", README, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    pad, deployed, batches = namespace["pad"], namespace["deployed"], namespace["batches"]
    report = pad.partition_report
    assert report.dynamic == round(0.3 * report.total) and pad.training_state.step == 2 * len(batches)
    assert pad.training_state.partitioned and "compact parameters" in capsys.readouterr().out
    pad.eval()
    x = batches[0][0]
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), pad(x), rtol=1e-4, atol=1e-4)
    assert (tmp_path / "my-pad" / "padnet_config.json").is_file()
