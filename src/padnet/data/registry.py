"""Data sets by name: :data:`DATASETS` and :func:`load_dataset`."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from padnet.data.images import ImageData
from padnet.errors import ConfigError, DataError

DATASETS = ("fashion-mnist", "digits", "cifar10", "cifar100", "imagefolder")


def load_dataset(
    name: str, root: str | os.PathLike | None = None, download: bool = False
) -> tuple[ImageData | Dataset, ImageData | Dataset]:
    """Load a data set as ``(train, test)``.

    Args:
        name: one of :data:`DATASETS` (case-insensitive; ``_`` may stand for ``-``).
        root: folder holding the files; for ``fashion-mnist``/``cifar10``/``cifar100`` it overrides
            the default search (Debian package folder, ``$PADNET_DATA`` or ``~/.cache/padnet``);
            ignored by ``digits``; required by ``imagefolder`` (``root/train/<class>/...`` and
            ``root/val/<class>/...``, ``root/test`` accepted when there is no ``val``).
        download: fetch missing files (SHA-256 checked) into ``root`` or the cache.

    Returns:
        ``(train, test)``: :class:`ImageData` (uint8 images in memory) for all but ``imagefolder``,
        which gives two :class:`~padnet.data.folder.ImageFolder` data sets (train augmented).

    Raises:
        ConfigError: unknown ``name`` (the message lists :data:`DATASETS`), or ``imagefolder``
            without ``root``.
        DataError: missing, corrupt or mismatching files.
    """
    key = name.strip().lower().replace("_", "-")
    if key == "fashion-mnist":
        from padnet.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(root, download)
    if key == "digits":
        from padnet.data.digits import load_digits_data

        return load_digits_data()
    if key in ("cifar10", "cifar100"):
        from padnet.data.cifar import CIFAR10, CIFAR100, load_cifar

        return load_cifar(CIFAR10 if key == "cifar10" else CIFAR100, root, download)
    if key == "imagefolder":
        return _load_folder(root)
    raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _load_folder(root: str | os.PathLike | None):
    """Train and val :class:`ImageFolder` sets of ``root``; val uses train's class list."""
    from padnet.data.folder import ImageFolder

    if root is None:
        raise ConfigError(
            "dataset 'imagefolder' needs a data root (--data-root) with train/ and val/ folders"
        )
    root = Path(root).expanduser()
    train = ImageFolder(root / "train", augment=True)
    val_dir = root / "val"
    if not val_dir.is_dir() and (root / "test").is_dir():
        val_dir = root / "test"
    if not val_dir.is_dir():
        raise DataError(f"image folder not found: {root / 'val'}")
    return train, ImageFolder(val_dir, augment=False, classes=train.classes)
