"""Data sets by name: [`DATASETS`][padnet.training.data.registry.DATASETS] and [`load_dataset`][padnet.training.data.registry.load_dataset]."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from padnet.errors import ConfigError, DataError, check_choice
from padnet.training.data.images import ImageData

DATASETS = ("fashion-mnist", "digits", "cifar10", "cifar100", "imagefolder", "arrays")
NORMALIZATIONS = ("auto", "imagenet", "data", "none")
IMAGE_OPTIONS = {"imagefolder": ("image_size", "channels", "normalization"), "arrays": ("image_size",)}
IMAGE_SIZES = (1, 4096)  # the side of an image read from a folder, or of flat arrays
CHANNELS = (1, 3)


def check_image_options(
    dataset: str, image_size: int | None = None, channels: int | None = None, normalization: str = "auto"
) -> None:
    """Check the image options of data set `dataset` (its canonical name).

    Raises:
        ConfigError: a value out of range, or an option the data set does not take (it would be ignored).
    """
    if image_size is not None and not (
        isinstance(image_size, int) and IMAGE_SIZES[0] <= image_size <= IMAGE_SIZES[1]
    ):
        raise ConfigError(f"image_size must be in [{IMAGE_SIZES[0]}, {IMAGE_SIZES[1]}], got {image_size!r}")
    if channels is not None and channels not in CHANNELS:
        raise ConfigError(f"channels must be {' or '.join(map(str, CHANNELS))}, got {channels!r}")
    check_choice("normalization", normalization, NORMALIZATIONS)
    given = {"image_size": image_size, "channels": channels, "normalization": normalization}
    for name, value in given.items():
        if value not in (None, "auto") and name not in IMAGE_OPTIONS.get(dataset, ()):
            raise ConfigError(
                f"{name} applies to datasets {', '.join(k for k, v in IMAGE_OPTIONS.items() if name in v)}"
                f", not {dataset!r}"
            )


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
    normalization: str = "auto",
) -> tuple[ImageData | Dataset, ImageData | Dataset]:
    """Load a data set as `(train, test)`.

    Args:
        name: one of [`DATASETS`][padnet.training.data.registry.DATASETS] (case-insensitive; `_` may stand for `-`).
        root: folder holding the files; for `fashion-mnist`/`cifar10`/`cifar100` it overrides
            the default search (Debian package folder, `$PADNET_DATA` or `~/.cache/padnet`);
            ignored by `digits`; required by `imagefolder` (`root/train/<class>/...` and
            `root/val/<class>/...`, `root/test` accepted when there is no `val`) and by `arrays`
            (an `.npz` file, [`padnet.training.data.arrays`][padnet.training.data.arrays]).
        download: fetch missing files (SHA-256 checked) into `root` or the cache.
        image_size: `imagefolder`: the side images are cropped to (default 224); `arrays`: the (square)
            size of flat (N, H·W) images.
        channels: `imagefolder`: 3 (RGB, default) or 1 (grey levels).
        normalization: `imagefolder`: `"auto"` (ImageNet statistics for 3 channels, the data's for 1),
            `"imagenet"`, `"data"` (statistics of up to 256 training images) or `"none"`.

    Returns:
        `(train, test)`: [`ImageData`][padnet.training.data.images.ImageData] (uint8 images in memory) for all but `imagefolder`,
            which gives two [`ImageFolder`][padnet.training.data.folder.ImageFolder] data sets (train augmented).

    Raises:
        ConfigError: unknown `name` (the message lists [`DATASETS`][padnet.training.data.registry.DATASETS]), `imagefolder` or `arrays`
            without `root`, image options out of range or for a data set that does not take them
            ([`check_image_options`][padnet.training.data.registry.check_image_options]).
        DataError: missing, corrupt or mismatching files.
    """
    key = name.strip().lower().replace("_", "-")
    check_image_options(key, image_size, channels, normalization)
    if key == "fashion-mnist":
        from padnet.training.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(root, download)
    if key == "digits":
        from padnet.training.data.digits import load_digits_data

        return load_digits_data()
    if key in ("cifar10", "cifar100"):
        from padnet.training.data.cifar import CIFAR10, CIFAR100, load_cifar

        return load_cifar(CIFAR10 if key == "cifar10" else CIFAR100, root, download)
    if key == "imagefolder":
        return _load_folder(root, image_size or 224, channels or 3, normalization)
    if key == "arrays":
        from padnet.training.data.arrays import load_arrays

        if root is None:
            raise ConfigError("dataset 'arrays' needs a data root (--data-root file.npz)")
        return load_arrays(root, image_size)
    raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _load_folder(
    root: str | os.PathLike | None, size: int = 224, channels: int = 3, normalization: str = "auto"
):
    """Train and val [`ImageFolder`][padnet.training.data.folder.ImageFolder] sets of `root`; val uses train's class list and statistics."""
    from padnet.training.data.folder import ImageFolder

    if root is None:
        raise ConfigError(
            "dataset 'imagefolder' needs a data root (--data-root) with train/ and val/ folders"
        )
    root = Path(root).expanduser()
    if normalization == "auto":
        normalization = "imagenet" if channels == 3 else "data"
    resize_to = max(size, round(size * 256 / 224))
    train = ImageFolder(
        root / "train",
        augment=True,
        size=size,
        resize_to=resize_to,
        channels=channels,
        normalization=normalization,
    )
    val_dir = root / "val"
    if not val_dir.is_dir() and (root / "test").is_dir():
        val_dir = root / "test"
    if not val_dir.is_dir():
        raise DataError(f"image folder not found: {root / 'val'}")
    return train, ImageFolder(
        val_dir,
        augment=False,
        size=size,
        resize_to=resize_to,
        classes=train.classes,
        channels=channels,
        normalization=(train.mean, train.std),
    )
