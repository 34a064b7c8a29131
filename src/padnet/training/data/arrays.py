"""Image classification data from arrays: numpy or torch, in memory or in an `.npz` / `.npy` file.

Images may be uint8 (0–255) or float (0–1), shaped (N, H, W), (N, C, H, W) or (N, H·W) with an explicit
`image_size`; labels are integers (N,). `.npz` files hold `x_train`, `y_train`, `x_test`, `y_test`
(the layout Keras uses for MNIST) or `images` and `labels` (then a seeded 1/6 becomes the test split); a pair
of `.npy` files is given as `images.npy` with `labels.npy` beside it. Files are read with
`allow_pickle=False`: nothing is unpickled.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from padnet.errors import DataError, first_line
from padnet.training.data.images import ImageData, channel_stats

NPZ_SPLITS = ("x_train", "y_train", "x_test", "y_test")


def _tensor(values, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} is not an array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{what} must be numbers, got numpy dtype {array.dtype}; convert with "
            "np.asarray(values, dtype=np.uint8) (or float32)"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def image_tensor(images, image_size: tuple[int, int] | int | None = None) -> torch.Tensor:
    """Images as uint8 (N, C, H, W).

    Raises:
        DataError: saying what was expected and how to convert, for: another number of dimensions, a flat
            (N, H·W) array without `image_size` (or one that does not match it), channels last, more than 4
            channels, floats outside [0, 1], non-finite values, or a dtype that is not an image type.
    """
    x = _tensor(images, "images")
    if x.dtype == torch.bool or x.is_complex() or (not x.is_floating_point() and x.dtype != torch.uint8):
        if (
            x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)
            and x.numel()
            and int(x.min()) >= 0
            and int(x.max()) <= 255
        ):
            x = x.to(torch.uint8)
        else:
            raise DataError(
                f"images must be uint8 (0-255) or float (0-1), got {x.dtype}; convert with "
                "x.astype('uint8') for 0-255 values"
            )
    if image_size is not None and x.dim() != 2:
        raise DataError(f"image_size applies to flat (N, H*W) images; these are {tuple(x.shape)}")
    if x.dim() == 2:
        if image_size is None:
            side = math.isqrt(x.shape[1]) if math.isqrt(x.shape[1]) ** 2 == x.shape[1] else "SIDE"
            raise DataError(
                f"flat images {tuple(x.shape)} need an image size: --image-size {side} on the "
                f"command line, image_size={side} in Python"
            )
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(n, int) and n >= 1 for n in size):
            raise DataError(f"image_size must be a positive integer or a pair of them, got {image_size!r}")
        h, w = size
        if x.shape[1] % (h * w) or not 1 <= x.shape[1] // (h * w) <= 4:
            raise DataError(
                f"flat images of {x.shape[1]} values do not fit image size {h}x{w} with 1-4 channels"
            )
        x = x.reshape(x.shape[0], x.shape[1] // (h * w), h, w)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4:
        if x.shape[1] > 4 and x.shape[3] <= 4:
            raise DataError(
                f"images {tuple(x.shape)} look channels-last (N, H, W, C); convert with "
                "x.transpose(0, 3, 1, 2) (numpy) or x.permute(0, 3, 1, 2) (torch)"
            )
        if x.shape[1] > 4:
            raise DataError(
                f"images {tuple(x.shape)} have {x.shape[1]} channels; expected 1-4 in (N, C, H, W)"
            )
    else:
        raise DataError(f"images must be (N, H, W), (N, C, H, W) or (N, H*W), got shape {tuple(x.shape)}")
    if x.numel() == 0:  # no images, no channels or no pixels
        raise DataError(f"images {tuple(x.shape)} are empty")
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise DataError("images hold NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise DataError(
                f"float images must lie in [0, 1], found {low:g}..{high:g}; divide 0-255 values by "
                "255 or pass them as uint8"
            )
        x = (x * 255).round().to(torch.uint8)
    return x.contiguous()


def label_tensor(labels, count: int) -> torch.Tensor:
    """Integer labels (N,) as int64; DataError for another shape, length, or non-integer values."""
    y = _tensor(labels, "labels")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.shape[0] != count:
        raise DataError(f"labels must be (N,) with N = {count} images, got shape {tuple(y.shape)}")
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise DataError("labels must be integer class indices, got fractional values")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataError(f"labels must be integer class indices, got {y.dtype}")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise DataError(f"labels must be >= 0, found {int(y.min())}")
    return y


def from_arrays(
    train_images,
    train_labels,
    test_images=None,
    test_labels=None,
    image_size: tuple[int, int] | int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> tuple[ImageData, ImageData]:
    """`(train, test)` [`ImageData`][padnet.training.data.images.ImageData] from arrays; without a test split a
    seeded 1/6 of the data is held out.

    `num_classes` defaults to the largest label + 1 over both splits; mean and std come from the train split.

    Raises:
        DataError: (what was expected and how to convert) a shape, dtype or label problem, or fewer than two
            classes (a one-class set would report 100 %).
    """
    x = image_tensor(train_images, image_size)
    y = label_tensor(train_labels, x.shape[0])
    if (test_images is None) != (test_labels is None):
        raise DataError("give both test images and test labels, or neither")
    if test_images is None:
        if x.shape[0] < 2:
            raise DataError("at least 2 images are needed to hold out a test split")
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        held = max(1, x.shape[0] // 6)
        test_idx, train_idx = order[:held].sort().values, order[held:].sort().values
        x, y, xt, yt = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    else:
        xt = image_tensor(test_images, image_size)
        yt = label_tensor(test_labels, xt.shape[0])
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(
                f"test images {tuple(xt.shape[1:])} differ in shape from train images {tuple(x.shape[1:])}"
            )
    largest = max(int(y.max()), int(yt.max()))
    classes = num_classes if num_classes is not None else largest + 1
    if classes <= largest:
        raise DataError(f"num_classes {classes} is too small for the largest label {largest}")
    if classes < 2:
        raise DataError("the labels hold a single class; classification needs at least 2")
    mean, std = channel_stats(x)
    std = tuple(s if s > 0 else 1.0 for s in std)  # a constant channel: leave it unscaled
    # unknown content (digits or characters, perhaps): no flipping unless asked (TrainConfig.flip)
    return ImageData(x, y, classes, mean, std, flip=False), ImageData(xt, yt, classes, mean, std, flip=False)


def load_arrays(
    path: str | os.PathLike, image_size: tuple[int, int] | int | None = None, seed: int = 0
) -> tuple[ImageData, ImageData]:
    """`(train, test)` from an `.npz` file or an `images.npy` with `labels.npy` beside it.

    Raises:
        DataError: a missing or unreadable file, a file holding pickled objects, missing keys, or arrays
            [`from_arrays`][padnet.training.data.arrays.from_arrays] refuses.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"array file not found: {path}")
    try:
        if path.suffix == ".npy":
            labels = path.with_name("labels.npy")
            if not labels.is_file():
                raise DataError(f"{path} needs labels.npy beside it (or use one .npz file)")
            return from_arrays(
                np.load(path, allow_pickle=False),
                np.load(labels, allow_pickle=False),
                image_size=image_size,
                seed=seed,
            )
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if set(NPZ_SPLITS) <= keys:
                return from_arrays(*(npz[k] for k in NPZ_SPLITS), image_size=image_size, seed=seed)
            if {"images", "labels"} <= keys:
                return from_arrays(npz["images"], npz["labels"], image_size=image_size, seed=seed)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = first_line(exc)
        raise DataError(f"{path} is not a readable numpy array file ({reason})") from None
    raise DataError(
        f"{path} holds {', '.join(sorted(keys)) or 'no arrays'}; expected x_train, y_train, x_test, "
        "y_test (or images and labels)"
    )
