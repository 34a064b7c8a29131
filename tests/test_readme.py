"""The README's commands and Python example stay true."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).strip().splitlines()
    assert block == ["bash scripts/setup.sh && .venv/bin/padnet compare --out runs/compare",
                     ".venv/bin/python -m pytest"]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert block[1] in ci


def test_python_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", README, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    model, report = namespace["model"], namespace["report"]
    assert report.dynamic == round(0.3 * report.total)
    out = capsys.readouterr().out
    assert "dynamic ratio 0.3000" in out
    assert model.fc.out_features == 10
