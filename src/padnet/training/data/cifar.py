"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) in the official *binary* format.

Each record is `label_bytes` label bytes followed by 3072 pixel bytes: 1024 red, 1024 green,
1024 blue, each a row-major 32x32 plane. CIFAR-10 has one label byte; CIFAR-100 has a coarse then
a fine label byte, and the fine label (100 classes) is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from padnet.errors import DataError
from padnet.training.data.archive import extract_tar
from padnet.training.data.download import download as _download
from padnet.training.data.images import ImageData, channel_stats
from padnet.training.data.paths import cache_root

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    """File layout and source of one CIFAR variant."""

    name: str
    folder: str  # folder inside the archive
    train_files: tuple[str, ...]
    test_file: str
    names_file: str
    label_bytes: int
    num_classes: int
    url: str
    sha256: str


# SHA-256 of the official archives. Not published by the CIFAR authors (they give MD5 only); the values
# are those listed independently by JuliaML/MLDatasets.jl and gomlx/gomlx (examples/cifar/cifar.go),
# and a third-party record pairs CIFAR-10's with the 170,052,171-byte archive of official MD5
# c32a1d4ab5d03f1284b67883e8d87530.
CIFAR10 = CifarSpec(
    name="CIFAR-10",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_file="test_batch.bin",
    names_file="batches.meta.txt",
    label_bytes=1,
    num_classes=10,
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
)
CIFAR100 = CifarSpec(
    name="CIFAR-100",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_file="test.bin",
    names_file="fine_label_names.txt",
    label_bytes=2,
    num_classes=100,
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    sha256="58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
)


def read_cifar_binary(path: str | os.PathLike, label_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR binary batch file.

    Args:
        path: e.g. `cifar-10-batches-bin/data_batch_1.bin` or `cifar-100-binary/train.bin`.
        label_bytes: label bytes per record, 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine); the
            LAST label byte is returned.

    Returns:
        `(images, labels)`: uint8 (N, 3, 32, 32) with channels R, G, B and int64 (N,).

    Raises:
        DataError: if the file is missing, empty, or its size is not a multiple of the record size.
    """
    path = Path(path)
    if label_bytes not in (1, 2):
        raise DataError(f"label_bytes must be 1 or 2, got {label_bytes}")
    record = label_bytes + _PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"CIFAR file not found: {path}") from exc
    except OSError as exc:
        raise DataError(f"cannot read CIFAR file {path}: {exc.strerror or exc}") from exc
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the {record}-byte record"
        )
    rows = raw.reshape(-1, record)
    labels = torch.from_numpy(rows[:, label_bytes - 1].astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(rows[:, label_bytes:]).reshape(-1, 3, 32, 32))
    return images, labels


def load_cifar(
    spec: CifarSpec, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[ImageData, ImageData]:
    """Load CIFAR-10 or CIFAR-100 (`spec` = [`CIFAR10`][padnet.training.data.cifar.CIFAR10] / [`CIFAR100`][padnet.training.data.cifar.CIFAR100]) as `(train, test)`.

    Looks for `spec.folder` (e.g. `cifar-10-batches-bin/`) as `root` itself or inside it when
    `root` is given — and nowhere else; otherwise inside the cache (`$PADNET_DATA` or
    `~/.cache/padnet`). If missing and `download` is true, the archive is fetched from
    `spec.url` into `root` (when given) or the cache, SHA-256 checked, safely extracted and deleted.

    Returns:
        Two [`ImageData`][padnet.training.data.images.ImageData]: images uint8 (N, 3, 32, 32) (50000 train / 10000 test for the
            official files), labels int64 (N,), class names from `spec.names_file` when present;
            per-channel mean/std measured on train and shared by test.

    Raises:
        DataError: if the files are not found and `download` is false, a download or extraction
            fails, a file is malformed, a label is out of range or the names file has the wrong length.
    """
    folder = _locate(spec, root, download)
    train_images, train_labels = _read_files(spec, [folder / f for f in spec.train_files])
    test_images, test_labels = _read_files(spec, [folder / spec.test_file])
    classes = _read_names(spec, folder / spec.names_file)
    mean, std = channel_stats(train_images)
    train = ImageData(train_images, train_labels, spec.num_classes, mean, std, classes)
    test = ImageData(test_images, test_labels, spec.num_classes, mean, std, classes and list(classes))
    return train, test


def _complete(spec: CifarSpec, folder: Path) -> bool:
    """True if `folder` holds every batch file of `spec`."""
    return all((folder / f).is_file() for f in (*spec.train_files, spec.test_file))


def _locate(spec: CifarSpec, root: str | os.PathLike | None, download: bool) -> Path:
    """The folder holding the batch files, downloading and extracting them if allowed."""
    parent = Path(root).expanduser() if root is not None else cache_root()
    candidates = [parent, parent / spec.folder] if root is not None else [parent / spec.folder]
    for folder in candidates:
        if _complete(spec, folder):
            return folder
    if not download:
        raise DataError(
            f"{spec.name} binary files not found in {' or '.join(str(c) for c in candidates)}; "
            f"pass --data-root to a folder holding {spec.folder}/ or allow download"
        )
    archive = _download(spec.url, parent / Path(spec.url).name, spec.sha256)
    folder = extract_tar(archive, parent, spec.folder)
    archive.unlink()
    if not _complete(spec, folder):
        raise DataError(f"{spec.url} did not contain the expected {spec.name} batch files")
    return folder


def _read_files(spec: CifarSpec, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated images and labels of several batch files, labels range-checked."""
    images, labels = [], []
    for path in paths:
        x, y = read_cifar_binary(path, spec.label_bytes)
        if int(y.max()) >= spec.num_classes:
            raise DataError(f"{path}: label {int(y.max())} out of range 0..{spec.num_classes - 1}")
        images.append(x)
        labels.append(y)
    if len(paths) == 1:
        return images[0], labels[0]
    return torch.cat(images), torch.cat(labels)


def _read_names(spec: CifarSpec, path: Path) -> list[str] | None:
    """Class names, one per non-blank line; None if the file is absent."""
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class names from {path}: {' '.join(str(exc).split())}") from exc
    if len(names) != spec.num_classes:
        raise DataError(f"{path}: {len(names)} class names, expected {spec.num_classes}")
    return names
