"""Fashion-MNIST (Xiao et al., 2017): 60000 train / 10000 test grey 28x28 images, 10 classes."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from padnet.errors import DataError
from padnet.training.data.download import download as _download
from padnet.training.data.idx import read_idx
from padnet.training.data.images import ImageData, channel_stats
from padnet.training.data.paths import cache_root

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

#: Where the Debian package `dataset-fashion-mnist` installs the files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: SHA-256 of the official gzip files (identical to the Debian package's files).
SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_fashion_mnist(
    root: str | os.PathLike | None = None, download: bool = False
) -> tuple[ImageData, ImageData]:
    """Load Fashion-MNIST as `(train, test)`.

    Looks for the four IDX files (raw or `.gz`) in, in order: `root` (or `root/fashion-mnist`)
    when given — and nowhere else; otherwise [`DEBIAN_DIR`][padnet.training.data.fashion_mnist.DEBIAN_DIR], then `<cache>/fashion-mnist`
    (cache = `$PADNET_DATA` or `~/.cache/padnet`). If none holds them and `download` is true,
    the four `.gz` files are fetched from [`BASE_URL`][padnet.training.data.fashion_mnist.BASE_URL] into `root` (when given) or the cache
    and their SHA-256 checked.

    Returns:
        Two [`ImageData`][padnet.training.data.images.ImageData]: images uint8 (N, 1, 28, 28), labels int64 (N,), 10 classes named
            [`CLASSES`][padnet.training.data.fashion_mnist.CLASSES]; mean/std measured on train (about 0.286 / 0.353) and shared by test.

    Raises:
        DataError: if the files are not found and `download` is false, a download fails, or a file
            is malformed or the image and label counts differ.
    """
    folder = _locate(root, download)
    train_images, train_labels = _read_split(folder, "train")
    test_images, test_labels = _read_split(folder, "test")
    mean, std = channel_stats(train_images)
    train = ImageData(train_images, train_labels, 10, mean, std, list(CLASSES))
    test = ImageData(test_images, test_labels, 10, mean, std, list(CLASSES))
    return train, test


def _locate(root: str | os.PathLike | None, download: bool) -> Path:
    """The folder holding all four files, downloading them if allowed."""
    if root is not None:
        root = Path(root).expanduser()
        candidates = [root, root / "fashion-mnist"]
    else:
        candidates = [DEBIAN_DIR, cache_root() / "fashion-mnist"]
    for folder in candidates:
        if _complete(folder):
            return folder
    if not download:
        where = (
            f"in {root} (or {root / 'fashion-mnist'})"
            if root is not None
            else f"in {DEBIAN_DIR} or {candidates[1]}"
        )
        raise DataError(
            f"Fashion-MNIST files not found {where}; install the Debian package dataset-fashion-mnist, "
            "pass --data-root, or allow download"
        )
    target = root if root is not None else candidates[1]
    for name, digest in SHA256.items():
        _download(BASE_URL + name, target / name, digest)
    return target


def _complete(folder: Path) -> bool:
    """True if `folder` has every file, raw or gzip-compressed."""
    return all(_find(folder, stem) is not None for pair in _STEMS.values() for stem in pair)


def _find(folder: Path, stem: str) -> Path | None:
    """`folder/stem` or `folder/stem.gz`, whichever exists (raw first)."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 1, H, W) and labels int64 (N,) of one split, with consistency checks."""
    image_path, label_path = (_find(folder, stem) for stem in _STEMS[split])
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise DataError(
            f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise DataError(f"{label_path}: expected uint8 labels (N,), got {labels.dtype} {tuple(labels.shape)}")
    if images.numel() == 0:  # no images, or images of 0 pixels: nothing to train or test on
        raise DataError(f"{image_path}: no pixels to read, images of shape {tuple(images.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels"
        )
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{label_path}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    return images.unsqueeze(1).contiguous(), labels.to(torch.int64)
