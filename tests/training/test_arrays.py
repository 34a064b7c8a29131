"""Image data from arrays (numpy / torch, .npz / .npy) through the API and the CLI, and runs that record the
test split they were evaluated on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padnet.cli import main
from padnet.errors import DataError
from padnet.training.config import TrainConfig
from padnet.training.data import load_dataset
from padnet.training.data.arrays import from_arrays, load_arrays
from padnet.training.engine.trainer import Trainer, load_run


def _images(n=60, shape=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8) + (labels * 60).reshape(
        -1, *([1] * len(shape))
    )
    return images.astype(np.uint8), labels


def test_arrays_in_every_accepted_form_give_the_same_images():
    images, labels = _images()
    train, test = from_arrays(images, labels, images[:12], labels[:12])
    assert train.images.shape == (60, 1, 8, 8) and train.num_classes == 3 and len(test) == 12
    as_float = from_arrays(images.astype(np.float32) / 255, labels, images[:12] / 255.0, labels[:12])[0]
    assert torch.equal(as_float.images, train.images)
    flat = from_arrays(
        images.reshape(60, 64), labels, images[:12].reshape(12, 64), labels[:12], image_size=8
    )[0]
    assert torch.equal(flat.images, train.images)
    nchw = from_arrays(
        torch.from_numpy(images[:, None]), torch.from_numpy(labels), images[:12, None], labels[:12]
    )[0]
    assert torch.equal(nchw.images, train.images)
    held = from_arrays(images, labels)  # no test split: a seeded sixth is held out
    assert (len(held[0]), len(held[1])) == (50, 10)


@pytest.mark.parametrize(
    "images, labels, kwargs, message",
    [
        (
            np.zeros((4, 8, 8, 3), np.uint8),
            [0, 1, 0, 1],
            {},
            ("look channels-last (N, H, W, C); convert with x.transpose(0, 3, 1, 2)"),
        ),
        (
            np.full((4, 8, 8), 7.0),
            [0, 1, 0, 1],
            {},
            "float images must lie in [0, 1], found 7..7; divide 0-255",
        ),
        (np.zeros((4, 64), np.uint8), [0, 1, 0, 1], {}, "flat images (4, 64) need an image size"),
        (np.zeros((4, 60), np.uint8), [0, 1, 0, 1], {"image_size": 8}, "do not fit image size 8x8"),
        (np.zeros((4, 8, 8), np.uint8), [0, 1, 0], {}, "labels must be (N,) with N = 4 images"),
        (np.zeros((4, 8, 8), np.uint8), [0, 0, 0, 0], {}, "a single class"),
        (np.zeros((4, 8, 8), np.uint8), [0.5, 1, 0, 1], {}, "fractional values"),
        (
            np.zeros((4, 2, 2, 2, 2), np.uint8),
            [0, 1, 0, 1],
            {},
            "must be (N, H, W), (N, C, H, W) or (N, H*W)",
        ),
        (np.zeros((4, 0, 8), np.uint8), [0, 1, 0, 1], {}, "are empty"),
        (np.array(["a", "b"]), [0, 1], {}, "images must be numbers, got numpy dtype <U1"),
        (
            np.zeros((4, 8, 8), np.int32) - 1,
            [0, 1, 0, 1],
            {},
            "images must be uint8 (0-255) or float (0-1), got torch.int32",
        ),
    ],
)
def test_bad_arrays_say_what_was_expected(images, labels, kwargs, message):
    with pytest.raises(DataError) as info:
        from_arrays(images, labels, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_npz_and_npy_files(tmp_path):
    images, labels = _images()
    np.savez(tmp_path / "keras.npz", x_train=images, y_train=labels, x_test=images[:6], y_test=labels[:6])
    train, test = load_dataset("arrays", tmp_path / "keras.npz")
    assert (len(train), len(test)) == (60, 6)
    np.savez(tmp_path / "pair.npz", images=images, labels=labels)
    assert len(load_arrays(tmp_path / "pair.npz")[1]) == 10
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    assert len(load_arrays(tmp_path / "images.npy")[0]) == 50
    np.save(tmp_path / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "labels.npy").replace(tmp_path / "kept.npy")
    with pytest.raises(DataError, match="needs labels.npy beside it"):
        load_arrays(tmp_path / "objects.npy")
    (tmp_path / "kept.npy").replace(tmp_path / "labels.npy")
    with pytest.raises(
        DataError, match="is not a readable numpy array file"
    ):  # pickled objects are not loaded
        load_arrays(tmp_path / "objects.npy")
    np.savez(tmp_path / "other.npz", features=images)
    with pytest.raises(DataError, match="holds features; expected x_train, y_train, x_test, y_test"):
        load_arrays(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="not a readable numpy array file"):
        load_arrays(tmp_path / "broken.npz")


def _run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    return code, *capsys.readouterr()


def test_cli_trains_on_an_npz_file_and_evaluates_it(capsys, tmp_path):
    images, labels = _images(96)
    np.savez(tmp_path / "data.npz", x_train=images, y_train=labels, x_test=images[:30], y_test=labels[:30])
    code, out, err = _run_cli(
        capsys,
        "train",
        "--dataset",
        "arrays",
        "--data-root",
        str(tmp_path / "data.npz"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--width",
        "0.125",
        "--progress",
        "false",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    code, out, err = _run_cli(capsys, "evaluate", str(tmp_path / "run" / "model.safetensors"))
    assert code == 0 and "on arrays test" in out, err


def test_a_run_on_api_data_is_not_evaluated_on_another_data_set_silently(capsys, tmp_path):
    images, labels = _images(64)
    train, test = from_arrays(images, labels, images[:16], labels[:16])
    np.savez(tmp_path / "data.npz", x_train=images, y_train=labels, x_test=images[:16], y_test=labels[:16])
    cfg = TrainConfig(epochs=1, batch_size=16, width=0.125, progress=False)
    Trainer(cfg, tmp_path / "run", data=(train, test)).fit()  # recorded dataset: fashion-mnist (the default)
    code, out, err = _run_cli(capsys, "evaluate", str(tmp_path / "run" / "model.safetensors"))
    assert code == 2 and err.count("\n") == 1
    assert "was tested on other data than the fashion-mnist test split" in err and "--dataset" in err
    code, out, err = _run_cli(
        capsys,
        "evaluate",
        str(tmp_path / "run" / "model.safetensors"),
        "--dataset",
        "arrays",
        "--data-root",
        str(tmp_path / "data.npz"),
    )
    assert code == 0 and "on arrays test" in out, err
    model, _, _ = load_run(tmp_path / "run" / "model.safetensors", data=(train, test))  # data given: no check
    assert model is not None
