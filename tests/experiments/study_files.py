"""What every study writes, checked the same way for `padnet pad` and `padnet pad-moe`."""

from pathlib import Path


def assert_study_files(out: Path, studies) -> None:
    """Each study folder holds a Markdown page with a title and a PNG figure."""
    for name in studies:
        assert (out / name / "results.md").read_text().startswith("# "), name
        assert (out / name / "results.png").read_bytes()[:4] == b"\x89PNG", name
