"""Reader for the IDX format of (Fashion-)MNIST, raw or gzip-compressed.

Layout: two zero bytes, a dtype code, the number of dimensions `ndim`; then `ndim` big-endian
uint32 sizes; then the values, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from padnet.errors import DataError

# IDX dtype code -> (big-endian numpy dtype of the payload, native numpy dtype of the result).
_DTYPES = {
    0x08: (np.dtype(">u1"), np.dtype(np.uint8)),
    0x09: (np.dtype(">i1"), np.dtype(np.int8)),
    0x0B: (np.dtype(">i2"), np.dtype(np.int16)),
    0x0C: (np.dtype(">i4"), np.dtype(np.int32)),
    0x0D: (np.dtype(">f4"), np.dtype(np.float32)),
    0x0E: (np.dtype(">f8"), np.dtype(np.float64)),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (raw, or gzip when the name ends in `.gz` or the bytes start gzip's magic).

    Args:
        path: file path.

    Returns:
        A tensor with the file's shape `dims` and dtype uint8 (code 0x08), int8 (0x09),
            int16 (0x0B), int32 (0x0C), float32 (0x0D) or float64 (0x0E), in native byte order.

    Raises:
        DataError: naming the file, if it is missing or unreadable, not valid gzip, has a bad
            magic number or dtype code, or its payload is shorter or longer than prod(dims) values.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a valid gzip file ({' '.join(str(exc).split())})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    big, native = _DTYPES[code]
    expected = math.prod(dims) * big.itemsize
    actual = len(raw) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "oversized"
        raise DataError(f"{path}: {kind} IDX payload, {actual} bytes for shape {dims} (expected {expected})")
    values = np.frombuffer(raw, dtype=big, offset=header).reshape(dims).astype(native)
    return torch.from_numpy(values)


def _read_bytes(path: Path) -> bytes:
    """The whole file's bytes, or a DataError naming it."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"IDX file not found: {path}") from exc
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from exc
