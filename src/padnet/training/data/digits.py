"""scikit-learn's bundled 8x8 hand-written digits (1797 images, 10 classes): a tiny offline data set."""

from __future__ import annotations

import torch

from padnet.errors import DataError
from padnet.training.data.images import ImageData, channel_stats

#: Seed of the fixed train/test split; changing it changes every reported digits result.
SPLIT_SEED = 0
#: Fraction of each class that goes to the train split.
TRAIN_FRACTION = 0.8


def load_digits_data() -> tuple[ImageData, ImageData]:
    """Load the digits as `(train, test)` with a fixed, stratified 80 % / 20 % split.

    Pixel values 0..16 are scaled to uint8 by `v * 255 // 16` (0..255). For each class in turn
    (0..9) its sample indices are shuffled by `torch.randperm` from one `torch.Generator`
    seeded with [`SPLIT_SEED`][padnet.training.data.digits.SPLIT_SEED] (= 0); the first `round(0.8 * n_class)` go to train, the rest
    to test; both splits are kept in the original sample order. This gives 1438 train / 359 test.

    Returns:
        Two [`ImageData`][padnet.training.data.images.ImageData]: images uint8 (N, 1, 8, 8), labels int64 (N,), 10 classes named
            "0".."9"; mean/std from train, shared by test.

    Raises:
        DataError: if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    values = torch.as_tensor(bunch.data, dtype=torch.int64)
    images = (values * 255 // 16).to(torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    train_index, test_index = _split(labels)
    mean, std = channel_stats(images[train_index])
    classes = [str(d) for d in range(10)]
    # digits are not mirror-symmetric: no flipping (ImageData.flip)
    train = ImageData(images[train_index], labels[train_index], 10, mean, std, classes, flip=False)
    test = ImageData(images[test_index], labels[test_index], 10, mean, std, list(classes), flip=False)
    return train, test


def _split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted train and test indices, stratified per class (see [`load_digits_data`][padnet.training.data.digits.load_digits_data])."""
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    train, test = [], []
    for cls in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        cut = round(TRAIN_FRACTION * len(members))
        train.append(members[:cut])
        test.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values
