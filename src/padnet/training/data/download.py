"""Checked downloads: fetch a URL to a file atomically and verify its SHA-256."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from padnet.errors import DataError
from padnet.saving.fileio import atomic_path

_BLOCK = 1 << 20  # bytes read per step, 1 MiB
_TIMEOUT_S = 60.0  # socket timeout of each network operation, seconds


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes as 64 lower-case hex digits.

    Raises:
        DataError: if the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {_one_line(exc)}") from exc
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str, progress: bool = True) -> Path:
    """Download `url` to `dest` unless a file with the expected SHA-256 is already there.

    The bytes go to a temporary file next to `dest` ([`padnet.saving.fileio.atomic_path`][padnet.saving.fileio.atomic_path]), which is
    renamed onto `dest` only after its SHA-256 matched, so `dest` is never partial or wrong.

    Args:
        url: any URL `urllib` opens (`https://`, `http://`, `file://`).
        dest: target file path; parent folders are created.
        sha256: expected SHA-256, 64 hex digits (case-insensitive).
        progress: show a tqdm progress bar on stderr when tqdm is installed.

    Returns:
        `Path(dest)`.

    Raises:
        DataError: on a network or file-system error, or a SHA-256 mismatch (the download is
            deleted and an existing `dest` is left as it was).
    """
    dest = Path(dest)
    expected = sha256.strip().lower()
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    with atomic_path(dest) as tmp:
        _fetch(url, tmp, progress, dest.name)
        actual = sha256_file(tmp)
        if actual != expected:
            raise DataError(
                f"SHA-256 mismatch for {url}: expected {expected}, got {actual}; the download was discarded"
            )
    return dest


def _fetch(url: str, target: Path, progress: bool, label: str) -> None:
    """Copy the body of `url` into `target`; every failure becomes a one-line DataError."""
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length") if response.headers else None
            bar = _progress_bar(progress, int(length) if length and length.isdigit() else None, label)
            try:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DataError(f"could not download {url}: {_one_line(exc)}") from exc


def _progress_bar(enabled: bool, total: int | None, label: str):
    """A tqdm bar counting bytes, or None when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)


def _one_line(exc: BaseException) -> str:
    """An exception's text collapsed onto one line."""
    text = " ".join(str(getattr(exc, "reason", None) or exc).split())
    return text or type(exc).__name__
