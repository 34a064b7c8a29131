"""Atomic file writes: write to a temporary file in the target directory, sync it, then rename.

A reader sees the old file or the complete new one, never a partial one, also after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from safetensors import SafetensorError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can sync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: str | Path, path: Path) -> None:
    """Give `tmp` the usual file mode, make it durable, rename it onto `path` and sync the directory."""
    os.chmod(tmp, _umask_mode())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success rename it over `path`.

    If the body raises, the temporary file is removed and `path` is left untouched, so a reader
    never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
        _commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` for libraries that write by file name; rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _commit(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(
            exc, SafetensorError
        ):  # e.g. a full disk while safetensors writes: an OSError for callers
            raise OSError(
                f"cannot write {path} ({str(exc).splitlines()[0] if str(exc) else 'safetensors error'})"
            ) from None
        raise


# the temporary files of atomic_write / atomic_path: ".<target>.<8 random characters of mkstemp>.tmp"
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def sweep_temporary_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in `directory` (a process killed while it
    wrote a checkpoint leaves one as large as the checkpoint); returns what was deleted. Call it when a run
    starts or resumes, before anything is written there."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if path.is_file() and TEMPORARY.match(path.name):
            with contextlib.suppress(FileNotFoundError):  # another process of the run removed it first
                path.unlink()
                removed.append(path)
    return removed


def parse_json(text: str):
    """`json.loads` for text read from disk: input nested too deep for the parser (a RecursionError) is a
    ValueError like any other malformed JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` atomically."""
    with atomic_write(path) as fh:
        fh.write(text)
