"""Mini-batch iteration with reproducible shuffling and augmentation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from padnet.errors import ConfigError
from padnet.training.data.folder import ImageFolder
from padnet.training.data.images import ImageData
from padnet.training.data.transforms import normalize, random_crop_pad, random_hflip

#: Worker processes used for folder (on-disk) data sets.
FOLDER_WORKERS = 2


def epoch_seed(seed: int, epoch: int, batch: int | None = None) -> int:
    """A 63-bit generator seed derived from (seed, epoch[, batch]) by SHA-256; platform independent."""
    key = f"padnet-data:{int(seed)}:{int(epoch)}" + ("" if batch is None else f":{int(batch)}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


class InMemoryLoader:
    """Batches of an [`ImageData`][padnet.training.data.images.ImageData]; see [`make_loader`][padnet.training.data.loader.make_loader]. Iterating twice repeats the batches."""

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        train: bool,
        seed: int,
        epoch: int,
        augment: bool,
        crop_padding: int,
        drop_last: bool,
        flip: bool,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.epoch = epoch
        self.augment = augment
        self.crop_padding = crop_padding
        self.drop_last = drop_last
        self.flip = flip

    def __len__(self) -> int:
        """Number of batches per pass."""
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        """Sample indices int64 (N,) in visiting order: a seeded permutation for train, else 0..N-1."""
        n = len(self.data)
        if not self.train:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(n, generator=gen)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield every batch from the first."""
        return self.batches(0)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches `start, start+1, ...`; batch k is identical to the k-th one of a full pass.

        Each batch's augmentation draws from its own generator seeded by (seed, epoch, k), so a
        resumed epoch can start at batch `start` without replaying the earlier ones.
        """
        order = self.order()
        images, labels = self.data.images, self.data.labels
        for k in range(start, len(self)):
            index = order[k * self.batch_size : (k + 1) * self.batch_size]
            x = images[index]
            if self.train and self.augment:
                gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, k))
                x = random_crop_pad(x, self.crop_padding, gen)
                if self.flip:
                    x = random_hflip(x, gen)
            yield normalize(x, self.data.mean, self.data.std), labels[index]


def make_loader(
    data: ImageData | Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    augment: bool = True,
    crop_padding: int | None = None,
    drop_last: bool | None = None,
    flip: bool | None = None,
):
    """An iterable with `len()` over `(x, y)` batches: x float32 (B, C, H, W) normalised with the
    data's train mean/std, y int64 (B,).

    For [`ImageData`][padnet.training.data.images.ImageData] (in memory), with `train`: the order is `torch.randperm` from a
    generator seeded by [`epoch_seed`][padnet.training.data.loader.epoch_seed] (seed, epoch); with `augment` each batch is zero-padded
    by `crop_padding` pixels (default H // 8: 4 for 32 px, 3 for 28 px, 1 for 8 px) and randomly
    cropped back, then mirrored left-right with probability 0.5 when `flip` (default: the data's own
    [`flip`][padnet.training.data.images.ImageData.flip], off for digits and for arrays). The same (seed, epoch) gives
    bit-identical batches; `drop_last` defaults to True. Without `train`: order 0..N-1, no
    augmentation, `drop_last` defaults to False. The result also offers `batches(start)`.

    For an [`ImageFolder`][padnet.training.data.folder.ImageFolder]: a `torch.utils.data.DataLoader` with
    [`FOLDER_WORKERS`][padnet.training.data.loader.FOLDER_WORKERS] workers, shuffling (train) from a generator seeded by (seed, epoch) and
    augmentation on when `train and augment` (`crop_padding` is ignored).

    Raises:
        ConfigError: if `batch_size < 1`, `crop_padding < 0`, a train loader would yield no
            batch, or `data` is of an unsupported type.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    drop = train if drop_last is None else bool(drop_last)
    if isinstance(data, ImageData):
        pad = data.input_shape[1] // 8 if crop_padding is None else int(crop_padding)
        if pad < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {pad}")
        loader = InMemoryLoader(
            data,
            batch_size,
            train,
            seed,
            epoch,
            augment,
            pad,
            drop,
            data.flip if flip is None else bool(flip),
        )
        if train and len(loader) == 0:
            raise ConfigError(f"batch_size {batch_size} exceeds the {len(data)} training samples (drop_last)")
        return loader
    if isinstance(data, ImageFolder):
        dataset = data.with_augment(train and augment, flip)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=drop,
            num_workers=FOLDER_WORKERS,
            generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),
        )
    raise ConfigError(f"make_loader needs ImageData or ImageFolder, got {type(data).__name__}")
