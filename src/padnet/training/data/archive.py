"""Safe extraction of downloaded tar archives."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from padnet.errors import DataError


def extract_tar(archive: str | os.PathLike, dest_parent: str | os.PathLike, top: str) -> Path:
    """Extract `archive` (any tar, e.g. `.tar.gz`) whose members all lie under folder `top`.

    Members are checked before anything is written: only regular files and folders, relative
    paths, no `..`, all inside `top`. The archive is unpacked into a temporary folder in
    `dest_parent` which is then renamed to `dest_parent/top`, so a failed extraction leaves no
    partial folder behind. An existing `dest_parent/top` is replaced.

    Returns:
        `Path(dest_parent) / top`.

    Raises:
        DataError: if the archive cannot be read or has an unsafe or unexpected member.
    """
    archive, dest_parent = Path(archive), Path(dest_parent)
    target = dest_parent / top
    dest_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{top}.", suffix=".tmp", dir=dest_parent))
    try:
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(archive, member, top)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # Python < 3.11.4: the checks above are the only guard
                    tar.extractall(staging, members=members)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot extract {archive}: {' '.join(str(exc).split())}") from exc
        if not (staging / top).is_dir():
            raise DataError(f"{archive} has no folder {top}/")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / top, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_member(archive: Path, member: tarfile.TarInfo, top: str) -> None:
    """Reject links, devices, absolute paths, `..` and anything outside `top`."""
    name = PurePosixPath(member.name)
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing to extract {member.name!r} (not a regular file or folder)")
    if name.is_absolute() or ".." in name.parts or "\\" in member.name:
        raise DataError(f"{archive}: refusing to extract unsafe path {member.name!r}")
    parts = [p for p in name.parts if p != "."]
    if not parts or parts[0] != top:
        raise DataError(f"{archive}: member {member.name!r} is outside the expected folder {top}/")
