"""ImageNet-style class folders (`<split>/<class>/<image>`) read lazily with PIL."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from padnet.errors import ConfigError, DataError
from padnet.training.data.images import channel_stats
from padnet.training.data.transforms import center_crop, normalize, random_resized_crop, resize_shorter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})


class ImageFolder(Dataset):
    """Images in `folder/<class name>/` files, classes indexed in sorted-name order.

    Item `i` is `(x, y)`: x float32 (channels, size, size) normalised with [`IMAGENET_MEAN`][padnet.training.data.folder.IMAGENET_MEAN] /
    [`IMAGENET_STD`][padnet.training.data.folder.IMAGENET_STD] (`normalization="imagenet"`, 3 channels), with per-channel statistics of up to 256
    training images (`"data"`) or not at all (`"none"`, values in [0, 1]); y an int label. With `augment` the image goes through a random
    resized crop (area 8-100 %, aspect 3/4-4/3) to `size` and a left-right flip with probability
    0.5 (when `flip`, the default), using torch's global generator (which a seeded `DataLoader` seeds per worker); without,
    its shorter side is resized to `resize_to` and the centre `size` x `size` is kept.

    Attributes:
        classes: class names; `num_classes`; `mean`/`std`; `input_shape` (3, size, size); `flip`;
        samples: list of `(path, label)`.

    Args:
        folder: the split folder, e.g. `root/train`.
        augment: training-time augmentation on/off.
        size: output side in pixels (224).
        resize_to: shorter side before the centre crop in evaluation (256).
        classes: class names to use (e.g. the train split's for the val split); default: the
            sorted sub-folder names.
        channels: 3 (RGB) or 1 (grey levels).
        normalization: `"imagenet"` (3 channels only), `"data"` or `"none"`; or explicit `(mean, std)`.

    Raises:
        DataError: if the folder is missing, has no class folders or no images, or has a class
            folder not in `classes`.
        ConfigError: a size < 1, channels other than 1 or 3, ImageNet statistics for 1 channel.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        augment: bool,
        size: int = 224,
        resize_to: int = 256,
        classes: list[str] | None = None,
        channels: int = 3,
        normalization="imagenet",
    ) -> None:
        if not (isinstance(size, int) and size >= 1 and isinstance(resize_to, int) and resize_to >= size):
            raise ConfigError(f"image size must be an integer >= 1 (resize {resize_to} >= size), got {size}")
        if channels not in (1, 3):
            raise ConfigError(f"image channels must be 1 or 3, got {channels!r}")
        if normalization == "imagenet" and channels != 3:
            raise ConfigError("ImageNet normalisation needs 3 channels; use normalization 'data' or 'none'")
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"image folder not found: {self.folder}")
        found = sorted(p.name for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DataError(f"{self.folder} has no class sub-folders")
        self.classes = list(classes) if classes is not None else found
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = [name for name in found if name not in index]
        if unknown:
            raise DataError(
                f"{self.folder} has class folders absent from the train split: {', '.join(unknown[:5])}"
            )
        self.samples = [
            (path, index[name])
            for name in found
            for path in sorted((self.folder / name).rglob("*"))
            if path.suffix.lower() in EXTENSIONS and path.is_file()
        ]
        if not self.samples:
            raise DataError(f"{self.folder} contains no images ({', '.join(sorted(EXTENSIONS))})")
        if classes is None and len(found) < 2:
            raise DataError(
                f"{self.folder} has one class folder ({found[0]}); classification needs at least 2"
            )
        self.augment = augment
        self.flip = True  # image folders hold natural images (with_augment(flip=False) for others)
        self.size = size
        self.resize_to = resize_to
        self.channels = channels
        if isinstance(normalization, tuple):
            self.mean, self.std = normalization
        elif normalization == "imagenet":
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        elif normalization == "none":
            self.mean, self.std = (0.0,) * channels, (1.0,) * channels
        elif normalization == "data":
            self.mean, self.std = self._statistics()
        else:
            raise ConfigError(f"unknown normalization {normalization!r}; choose from imagenet, data, none")

    def _statistics(self, count: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std (in [0, 1] units) of up to `count` images, centre-cropped, evenly spaced."""
        step = max(1, len(self.samples) // count)
        images = (
            torch.stack(
                [
                    center_crop(resize_shorter(self._load(self.samples[i][0]), self.resize_to), self.size)
                    for i in range(0, len(self.samples), step)[:count]
                ]
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
        mean, std = channel_stats(images)
        return mean, tuple(s if s > 0 else 1.0 for s in std)

    def _load(self, path: Path) -> torch.Tensor:
        img = _load_rgb(path)
        if self.channels == 1:  # ITU-R 601-2 luma, as PIL's "L" mode
            img = (img.float() * torch.tensor([0.299, 0.587, 0.114]).reshape(3, 1, 1)).sum(0, keepdim=True)
            img = img.round().clamp(0, 255).to(torch.uint8)
        return img

    def check_images(self, progress: bool = False) -> None:
        """Decode every image once (what `padnet data` does for folders); DataError names the first that fails."""
        from tqdm.auto import tqdm

        for path, _ in tqdm(
            self.samples,
            desc=f"checking {self.folder.name}",
            disable=None if progress else True,
            leave=False,
            unit="image",
        ):
            self._load(path)

    def subset(self, n: int, seed: int) -> ImageFolder:
        """A deterministic random subset of `n` images (all when `n` >= the size), sharing the statistics."""
        if n < 1:
            raise ConfigError(f"subset size must be >= 1, got {n}")
        clone = copy.copy(self)
        if n < len(self.samples):
            keep = torch.randperm(len(self.samples), generator=torch.Generator().manual_seed(int(seed)))[:n]
            clone.samples = [self.samples[i] for i in sorted(keep.tolist())]
        return clone

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape (channels, size, size) of one item's image."""
        return (self.channels, self.size, self.size)

    def with_augment(self, augment: bool, flip: bool | None = None) -> ImageFolder:
        """A shallow copy with augmentation switched on or off, and the left-right flip too when `flip` is
        given (the sample list is shared)."""
        clone = copy.copy(self)
        clone.augment = augment
        if flip is not None:
            clone.flip = bool(flip)
        return clone

    def __len__(self) -> int:
        """Number of images."""
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Image `i` transformed and normalised, float32 (channels, size, size), and its label."""
        path, label = self.samples[i]
        img = self._load(path)
        if self.augment:
            x = random_resized_crop(img, self.size)
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        else:
            x = center_crop(resize_shorter(img, self.resize_to), self.size)
        return normalize(x, self.mean, self.std), label


def _load_rgb(path: Path) -> torch.Tensor:
    """An image file as uint8 (3, H, W) RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except MemoryError:
        raise
    except (
        Exception
    ) as exc:  # a damaged file can fail anywhere in PIL's decoders (SyntaxError, struct.error, ...)
        raise DataError(f"cannot read image {path}: {' '.join(str(exc).split())}") from exc
    if array.size == 0:
        raise DataError(f"cannot read image {path}: it has size {array.shape[1]}x{array.shape[0]}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1)
