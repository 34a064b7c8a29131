"""Tests of padnet.training.data: file readers, downloads, transforms, loaders. All offline and small."""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from padnet.errors import ConfigError, DataError
from padnet.training.data import (
    DATASETS,
    ImageData,
    download,
    load_dataset,
    make_loader,
    read_cifar_binary,
    read_idx,
)
from padnet.training.data import cifar as cifar_mod
from padnet.training.data import fashion_mnist as fm
from padnet.training.data.download import sha256_file
from padnet.training.data.folder import ImageFolder
from padnet.training.data.transforms import normalize, random_crop_pad, random_hflip, random_resized_crop

# ----------------------------------------------------------------------------------------------- helpers

_IDX_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as IDX (big-endian)."""
    code = _IDX_CODES[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_fake_fashion(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = False) -> dict:
    """Fake Fashion-MNIST IDX files; returns the arrays written."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[prefix] = (images, labels)
    return out


def cifar_pixel(r: int, c: int, i: int, j: int) -> int:
    """Known value of record r, channel c, row i, column j."""
    return (r * 7 + c * 85 + i * 3 + j) % 256


def cifar_records(labels: list[tuple[int, ...]], start: int = 0) -> bytes:
    """Official-layout records: label byte(s), then R, G, B planes, each row-major 32x32."""
    out = bytearray()
    for k, label in enumerate(labels):
        r = start + k
        out += bytes(label)
        for c in range(3):
            out += bytes(cifar_pixel(r, c, i, j) for i in range(32) for j in range(32))
    return bytes(out)


def write_fake_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for b in range(5):  # two records per batch, labels 2b, 2b+1 -> 0..9
        (folder / f"data_batch_{b + 1}.bin").write_bytes(cifar_records([(2 * b,), (2 * b + 1,)], start=2 * b))
    (folder / "test_batch.bin").write_bytes(cifar_records([(3,), (9,), (0,)], start=100))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return folder


def write_fake_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    (folder / "train.bin").write_bytes(cifar_records([(1, 99), (19, 5), (0, 42)]))
    (folder / "test.bin").write_bytes(cifar_records([(7, 13)], start=50))
    (folder / "fine_label_names.txt").write_text("\n".join(f"class{i}" for i in range(100)) + "\n")
    return folder


def toy_data(n: int = 10, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> ImageData:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8)
    return ImageData(images, torch.arange(n) % 3, 3, (0.5,) * c, (0.25,) * c)


def tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ----------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, dtype, gz):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array)
    out = read_idx(path)
    assert tuple(out.shape) == (2, 3, 4)
    np.testing.assert_array_equal(out.numpy(), array)
    assert out.numpy().dtype == np.dtype(dtype)


def test_idx_gzip_detected_by_magic_without_suffix(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(path).numpy(), array)


@pytest.mark.parametrize("cut", [1, 10])
def test_idx_truncated_names_file(tmp_path, cut):
    path = tmp_path / "short-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 5, 5), np.uint8))[:-cut])
    with pytest.raises(DataError, match="short-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_idx_oversized_and_truncated_gz(tmp_path):
    big = tmp_path / "big.idx"
    big.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="big.idx.*oversized"):
        read_idx(big)
    broken = tmp_path / "broken.idx.gz"
    broken.write_bytes(gzip.compress(idx_bytes(np.zeros(1000, np.uint8)))[:-20])
    with pytest.raises(DataError, match="broken.idx.gz"):
        read_idx(broken)


def test_idx_bad_magic_and_missing(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="bad.idx.*magic"):
        read_idx(bad)
    code = tmp_path / "code.idx"
    code.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="dtype code"):
        read_idx(code)
    with pytest.raises(DataError, match="nothere.idx"):
        read_idx(tmp_path / "nothere.idx")


# ----------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_root(tmp_path, gz):
    written = write_fake_fashion(tmp_path, gz=gz)
    train, test = load_dataset("fashion-mnist", root=str(tmp_path))
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), written["train"][0])
    np.testing.assert_array_equal(test.labels.numpy(), written["t10k"][1])
    assert train.num_classes == 10 and train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    expected_mean = written["train"][0].astype(np.float64).mean() / 255
    assert train.mean == pytest.approx((expected_mean,)) and test.mean == train.mean
    assert test.std == train.std and train.input_shape == (1, 28, 28)


def test_fashion_mnist_count_mismatch(tmp_path):
    write_fake_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path / "empty")
    # no root: the Debian folder and the cache are searched, and neither has the files
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("PADNET_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not found") as err:
        load_dataset("fashion-mnist")
    assert "\n" not in str(err.value)


def test_fashion_mnist_download_into_cache(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    written = write_fake_fashion(source, n_train=12, n_test=4, gz=True)
    monkeypatch.setattr(fm, "BASE_URL", source.as_uri() + "/")
    monkeypatch.setattr(fm, "SHA256", {p.name: sha256_file(p) for p in source.iterdir()})
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("PADNET_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError):
        load_dataset("fashion-mnist", download=False)
    train, test = load_dataset("fashion-mnist", download=True)
    assert len(train) == 12 and len(test) == 4
    np.testing.assert_array_equal(train.labels.numpy(), written["train"][1])
    assert (tmp_path / "cache" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.mark.skipif(not fm.DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PADNET_DATA", str(tmp_path))
    train, test = load_dataset("fashion-mnist")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.mean[0] == pytest.approx(0.2860, abs=1e-4) and train.std[0] == pytest.approx(
        0.3530, abs=1e-4
    )


# ----------------------------------------------------------------------------------------------- CIFAR


def test_read_cifar_binary_layout(tmp_path):
    path = tmp_path / "batch.bin"
    path.write_bytes(cifar_records([(4,), (7,)]))
    images, labels = read_cifar_binary(path, 1)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [4, 7] and labels.dtype == torch.int64
    expected = torch.tensor(
        [
            [[[cifar_pixel(r, c, i, j) for j in range(32)] for i in range(32)] for c in range(3)]
            for r in range(2)
        ],
        dtype=torch.uint8,
    )
    assert torch.equal(images, expected)
    # spot checks: channel 0 is the first plane (red), rows are contiguous runs of 32 bytes
    raw = path.read_bytes()
    assert images[1, 0, 0, 0] == raw[3073 + 1] and images[0, 2, 1, 0] == raw[1 + 2048 + 32]


def test_cifar10_loader(tmp_path):
    write_fake_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):  # parent folder or the folder itself
        train, test = load_dataset("cifar10", root=root)
        assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
        assert train.labels.tolist() == list(range(10)) and test.labels.tolist() == [3, 9, 0]
        assert int(train.images[5, 1, 2, 3]) == cifar_pixel(5, 1, 2, 3)
        assert int(test.images[2, 2, 31, 30]) == cifar_pixel(102, 2, 31, 30)
        assert train.classes[0] == "airplane" and train.classes[-1] == "truck" and train.num_classes == 10
        assert len(train.mean) == 3 and test.mean == train.mean


def test_cifar100_uses_fine_labels(tmp_path):
    write_fake_cifar100(tmp_path)
    train, test = load_dataset("cifar100", root=tmp_path)
    assert train.labels.tolist() == [99, 5, 42] and test.labels.tolist() == [13]
    assert train.num_classes == 100 and train.classes[42] == "class42"
    assert int(test.images[0, 0, 0, 1]) == cifar_pixel(50, 0, 0, 1)


def test_cifar_malformed(tmp_path):
    path = tmp_path / "odd.bin"
    path.write_bytes(cifar_records([(1,)]) + b"\x00")
    with pytest.raises(DataError, match="odd.bin.*multiple"):
        read_cifar_binary(path, 1)
    folder = write_fake_cifar10(tmp_path / "a")
    (folder / "test_batch.bin").write_bytes(cifar_records([(10,)]))  # label 10 in CIFAR-10
    with pytest.raises(DataError, match="out of range"):
        load_dataset("cifar10", root=tmp_path / "a")
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", root=tmp_path / "a")


def test_cifar_download_and_extract(tmp_path, monkeypatch):
    folder = write_fake_cifar100(tmp_path / "src")
    archive = tar_gz(
        tmp_path / "c100.tar.gz", {f"cifar-100-binary/{p.name}": p.read_bytes() for p in folder.iterdir()}
    )
    spec = dataclasses.replace(cifar_mod.CIFAR100, url=archive.as_uri(), sha256=sha256_file(archive))
    monkeypatch.setenv("PADNET_DATA", str(tmp_path / "cache"))
    train, _ = cifar_mod.load_cifar(spec, download=True)
    assert train.labels.tolist() == [99, 5, 42]
    assert (tmp_path / "cache" / "cifar-100-binary" / "train.bin").is_file()
    assert not (tmp_path / "cache" / "c100.tar.gz").exists()
    train, _ = cifar_mod.load_cifar(spec)  # now found in the cache without download
    assert len(train) == 3


def test_cifar_rejects_unsafe_archive(tmp_path, monkeypatch):
    archive = tar_gz(tmp_path / "evil.tar.gz", {"cifar-100-binary/../../evil.txt": b"x"})
    spec = dataclasses.replace(cifar_mod.CIFAR100, url=archive.as_uri(), sha256=sha256_file(archive))
    with pytest.raises(DataError, match="unsafe"):
        cifar_mod.load_cifar(spec, root=tmp_path / "root", download=True)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root" / "cifar-100-binary").exists()


# ----------------------------------------------------------------------------------------------- download


def test_download_success_and_cache(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"padnet" * 1000)
    digest = sha256_file(source)
    dest = tmp_path / "out" / "file.bin"
    assert download(source.as_uri(), dest, digest.upper(), progress=False) == dest
    assert dest.read_bytes() == source.read_bytes()
    # a present file with the right hash is not fetched again (the URL no longer works)
    assert download((tmp_path / "gone.bin").as_uri(), dest, digest, progress=False) == dest


def test_download_sha_mismatch_leaves_nothing(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"data")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download(source.as_uri(), dest, "0" * 64, progress=False)
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []


def test_download_network_error_is_one_line(tmp_path):
    with pytest.raises(DataError, match="could not download") as err:
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "x.bin", "0" * 64, progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "x.bin").exists()


# ----------------------------------------------------------------------------------------------- transforms


def test_crop_pad_zero_is_identity_and_shape_kept():
    x = toy_data(n=6).images
    assert torch.equal(random_crop_pad(x, 0, torch.Generator().manual_seed(1)), x)
    out = random_crop_pad(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_crop_pad_matches_reference_loop():
    x = toy_data(n=16, c=2, h=6, w=5).images
    pad = 2
    out = random_crop_pad(x, pad, torch.Generator().manual_seed(3))
    offsets = torch.randint(0, 2 * pad + 1, (2, 16), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for b in range(16):
        dy, dx = int(offsets[0, b]), int(offsets[1, b])
        assert torch.equal(out[b], padded[b, :, dy : dy + 6, dx : dx + 5])
    assert len({(int(a), int(b)) for a, b in offsets.T}) > 1  # offsets really vary


def test_flip_twice_identity_and_seeded():
    x = toy_data(n=32).images
    once = random_hflip(x, torch.Generator().manual_seed(5))
    assert not torch.equal(once, x)
    assert torch.equal(random_hflip(once, torch.Generator().manual_seed(5)), x)
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(5)), once)
    a = random_crop_pad(x, 3, torch.Generator().manual_seed(9))
    assert torch.equal(a, random_crop_pad(x, 3, torch.Generator().manual_seed(9)))
    assert not torch.equal(a, random_crop_pad(x, 3, torch.Generator().manual_seed(10)))


def test_normalize_by_hand():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = normalize(x, (0.5, 0.2), (0.25, 0.1))
    expected = torch.tensor(
        [[[[(0 - 0.5) / 0.25, (1 - 0.5) / 0.25]], [[(0.2 - 0.2) / 0.1, (0.4 - 0.2) / 0.1]]]]
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_random_resized_crop_shape_and_seed():
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    a = random_resized_crop(img, 16, generator=torch.Generator().manual_seed(0))
    b = random_resized_crop(img, 16, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    full = random_resized_crop(img, 40, scale=(1.0, 1.0), ratio=(1.5, 1.5), generator=torch.Generator())
    torch.testing.assert_close(
        full,
        torch.nn.functional.interpolate(img[None].float(), size=(40, 40), mode="bilinear", antialias=True)[0],
    )


# ----------------------------------------------------------------------------------------------- loaders


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_make_loader_reproducible_per_seed_and_epoch():
    data = toy_data(n=50, h=32, w=32)
    a = batches(make_loader(data, 8, train=True, seed=3, epoch=1))
    b = batches(make_loader(data, 8, train=True, seed=3, epoch=1))
    assert len(a) == 6
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a[0][0].dtype == torch.float32 and a[0][0].shape == (8, 3, 32, 32) and a[0][1].dtype == torch.int64
    c = batches(make_loader(data, 8, train=True, seed=3, epoch=2))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    # resuming mid-epoch gives the same remaining batches
    resumed = list(make_loader(data, 8, train=True, seed=3, epoch=1).batches(4))
    assert len(resumed) == 2 and torch.equal(resumed[0][0], a[4][0])


def test_make_loader_augments_train_only():
    data = toy_data(n=16, h=32, w=32)
    plain = normalize(data.images, data.mean, data.std)
    train = torch.cat([x for x, _ in make_loader(data, 16, train=True, augment=False)])
    order = make_loader(data, 16, train=True, augment=False).order()
    assert torch.equal(train, plain[order])
    augmented = torch.cat([x for x, _ in make_loader(data, 16, train=True)])
    assert not torch.equal(augmented, plain[order])
    assert make_loader(data, 16, train=True).crop_padding == 4
    assert make_loader(toy_data(h=28, w=28), 2, train=True).crop_padding == 3


def test_make_loader_len_and_drop_last():
    data = toy_data(n=10)
    assert len(make_loader(data, 3, train=True)) == 3
    assert len(make_loader(data, 3, train=True, drop_last=False)) == 4
    assert sum(len(y) for _, y in make_loader(data, 3, train=True)) == 9
    assert len(make_loader(data, 3, train=False)) == 4
    with pytest.raises(ConfigError):
        make_loader(data, 11, train=True)
    with pytest.raises(ConfigError):
        make_loader(data, 0, train=False)


def test_eval_loader_in_order_once():
    data = toy_data(n=10)
    out = batches(make_loader(data, 4, train=False, seed=7, epoch=3))
    assert [len(y) for _, y in out] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([x for x, _ in out]), normalize(data.images, data.mean, data.std))
    assert torch.equal(torch.cat([y for _, y in out]), data.labels)


# ----------------------------------------------------------------------------------------------- ImageData, digits, registry


def test_image_data_validation_and_subset():
    data = toy_data(n=20)
    with pytest.raises(DataError):
        ImageData(data.images, data.labels[:-1], 3, data.mean, data.std)
    with pytest.raises(DataError):
        ImageData(data.images, data.labels + 5, 3, data.mean, data.std)
    with pytest.raises(DataError):
        ImageData(data.images.float(), data.labels, 3, data.mean, data.std)
    sub = data.subset(7, seed=1)
    assert len(sub) == 7 and sub.mean == data.mean
    assert torch.equal(sub.images, data.subset(7, seed=1).images)
    assert not torch.equal(sub.labels, data.subset(7, seed=2).labels) or not torch.equal(
        sub.images, data.subset(7, seed=2).images
    )
    assert len(data.subset(100, seed=0)) == 20


def test_digits():
    train, test = load_dataset("digits")
    assert len(train) + len(test) == 1797 and len(test) == pytest.approx(0.2 * 1797, abs=10)
    assert train.input_shape == (1, 8, 8) and train.num_classes == 10 and test.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    again, _ = load_dataset("digits")
    assert torch.equal(again.images, train.images)  # the split is fixed


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="cifar10") as err:
        load_dataset("imagenet-21k")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(ConfigError, match="data root"):
        load_dataset("imagefolder")


def test_image_folder(tmp_path):
    from PIL import Image

    for split, count in (("train", 3), ("val", 2)):
        for k, cls in enumerate(("cat", "dog")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                colour = (200 * k, 10 * i, 50)
                Image.new("RGB", (30 + 5 * i, 20), colour).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    train, val = load_dataset("imagefolder", root=tmp_path)
    assert len(train) == 6 and len(val) == 4 and train.classes == ["cat", "dog"]
    x, y = val[len(val) - 1]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
    expected_red = (200 / 255 - 0.485) / 0.229
    torch.testing.assert_close(x[0], torch.full((224, 224), expected_red), atol=1e-4, rtol=0)
    small = ImageFolder(tmp_path / "train", augment=True, size=16, resize_to=18)
    loader = make_loader(small, batch_size=4, train=True, seed=1)
    got = [(xb, yb) for xb, yb in loader]
    assert len(loader) == 1 and got[0][0].shape == (4, 3, 16, 16) and got[0][1].dtype == torch.int64
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagefolder", root=tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        load_dataset("imagefolder", root=tmp_path / "nowhere")


def test_image_folder_options_size_channels_normalisation_and_subset(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 16), (100 + 50 * k, 20 * i, 10)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    train, val = load_dataset(
        "imagefolder", root=tmp_path, image_size=12, channels=1
    )  # auto: the data's statistics
    x, _ = train.with_augment(False)[0]
    assert x.shape == (1, 12, 12) and train.input_shape == (1, 12, 12) and val.mean == train.mean
    grey = (0.299 * 100 + 0.587 * 0 + 0.114 * 10) / 255  # ITU-R 601-2 luma of the first image
    torch.testing.assert_close(
        x, torch.full_like(x, (grey - train.mean[0]) / train.std[0]), atol=1e-2, rtol=0
    )
    raw, _ = load_dataset("imagefolder", root=tmp_path, image_size=12, normalization="none")
    assert raw.mean == (0.0, 0.0, 0.0) and float(raw.with_augment(False)[0][0].min()) >= 0
    assert len(train.subset(3, seed=0)) == 3 and len(train) == 8
    with pytest.raises(ConfigError, match="ImageNet normalisation needs 3 channels"):
        load_dataset("imagefolder", root=tmp_path, channels=1, normalization="imagenet")
    with pytest.raises(ConfigError, match="image_size applies to datasets imagefolder, arrays, not 'digits'"):
        load_dataset("digits", image_size=12)


def test_flipping_is_a_per_dataset_default_and_can_be_forced():
    """Digits (and arrays of unknown content) are not flipped by default; clothes and natural images are."""
    digits, _ = load_dataset("digits")
    assert digits.flip is False and digits.subset(50, 0).flip is False
    # an asymmetric image set: each image's left half bright, right half dark
    images = torch.zeros(16, 1, 8, 8, dtype=torch.uint8)
    images[..., :4] = 255
    asymmetric = ImageData(images, torch.arange(16) % 2, 2, (0.5,), (0.5,))

    def right_half_bright(data, **kw) -> int:
        batches = make_loader(data, 16, train=True, seed=3, crop_padding=0, **kw)
        return sum(int((x[..., 4:].mean((1, 2, 3)) > 0).sum()) for x, _ in batches)

    assert asymmetric.flip is True and right_half_bright(asymmetric) > 0
    assert right_half_bright(asymmetric, flip=False) == 0
    no_flip = dataclasses.replace(asymmetric, flip=False)
    assert right_half_bright(no_flip) == 0 and right_half_bright(no_flip, flip=True) > 0


def test_train_config_flip_follows_the_data_unless_set():
    from padnet.training.config import TrainConfig, config_from_dict

    assert TrainConfig().flip is None
    assert config_from_dict({"flip": "false"}).flip is False
    with pytest.raises(ConfigError, match="flip must be true or false"):
        config_from_dict({"flip": 7})
    with pytest.raises(ConfigError, match="flip must be true, false or unset"):
        TrainConfig(flip="yes").validate()


@pytest.mark.parametrize("width,height", [(0, 5), (5, 0), (0, 0)])
def test_an_image_of_size_zero_is_a_one_line_data_error(tmp_path, width, height):
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(
        ">IIBBBBB", width, height, 8, 2, 0, 0, 0
    )  # a well-formed PNG of width x height pixels
    pixels = zlib.compress(b"".join(b"\x00" + b"\x00" * (3 * width) for _ in range(height)))
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (6, 6)).save(tmp_path / cls / "ok.png")
    (tmp_path / "b" / "zero.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
    folder = ImageFolder(tmp_path, augment=False, size=4, resize_to=4)
    with pytest.raises(DataError, match="cannot read image .*zero.png") as info:
        folder.check_images()
    assert "\n" not in str(info.value)
