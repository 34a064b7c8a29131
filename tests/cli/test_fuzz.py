"""Fuzzing what users and disks hand padnet (issue 19 C): generated command-line arguments, YAML documents, and
mutated bytes of IDX, image, TSV, parquet, CSV and safetensors files, fed to the command line and the loaders.

Every example must end in success or in exit code 2 with exactly one ``padnet: error:`` line (the loaders: one
of padnet's own one-line errors), within a time bound, leaving no temporary file behind. Training itself is
replaced by a stub that accepts the configuration: what is fuzzed is the handling of input, not SGD.

Example counts are small by default (the whole file takes well under a minute); ``pytest --fuzz`` runs 20 times
as many.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gzip
import io
import json
import os
import signal
import struct
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import padnet
from padnet.cli import main
from padnet.errors import PadnetError
from padnet.training.engine.checkpoint import save_checkpoint

EXAMPLES = 20 * 15 if os.environ.get("PADNET_FUZZ") else 15
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("PADNET_FUZZ"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TIME_LIMIT = 60  # seconds per example: a hang fails the test


class Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    def expire(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _AcceptingTrainer:
    """Stands in for padnet's Trainer: the configuration got through every check."""

    def __init__(self, cfg, run_dir, resume=False):
        self.ctx = mock.Mock(main=False)

    def fit(self):
        return {}


def _cli(args: list[str], folder: Path | None = None) -> int:
    """Run the command line in-process; assert success or exit 2 with one ``padnet: error:`` line."""
    out, err = io.StringIO(), io.StringIO()
    with (
        _time_limit(TIME_LIMIT),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        mock.patch("padnet.training.engine.trainer.Trainer", _AcceptingTrainer),
    ):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse
            code = exc.code
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2), (args, code, err.getvalue()[-2000:])
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("padnet: error: "), (args, err.getvalue()[-2000:])
    if folder is not None:
        assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left"
    return code


def _loader(fn, *args):
    """Run a loader; assert it returns or raises one of padnet's one-line errors."""
    with _time_limit(TIME_LIMIT):
        try:
            return fn(*args)
        except PadnetError as exc:
            assert str(exc) and "\n" not in str(exc), repr(exc)
            return None


# ------------------------------------------------------------------------------------------- mutations


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, a piece cut out, bytes inserted, or truncated."""
    kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
    size = len(data)
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, size - 1)))]
    at = draw(st.integers(0, max(0, size - 1)))
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "cut":
        return data[:at] + data[at + draw(st.integers(1, 64)) :]
    out = bytearray(data)
    for pos in draw(st.lists(st.integers(0, max(0, size - 1)), min_size=1, max_size=8)):
        out[pos] ^= draw(st.integers(1, 255))
    return bytes(out)


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


FASHION = {
    f"{split}-{part}-idx{dims}-ubyte.gz": (shape, high)
    for split, n in (("train", 32), ("t10k", 16))
    for part, dims, shape, high in (("images", 3, (n, 28, 28), 256), ("labels", 1, (n,), 10))
}


def _fashion(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, (shape, high) in FASHION.items():
        (root / name).write_bytes(_idx(rng.integers(0, high, shape)))
    return root


# ------------------------------------------------------------------------------------------ arguments

FLAGS = [
    "--epochs",
    "--batch-size",
    "--lr",
    "--kappa",
    "--conv",
    "--model",
    "--width",
    "--seed",
    "--dataset",
    "--granularity",
    "--num-kernels",
    "--reduction",
    "--image-size",
    "--flip",
    "--augment",
    "--train-subset",
    "--temperature-start",
    "--sparsity",
    "--partition",
    "--partition-batches",
    "--stem",
    "--threads",
    "--label-smoothing",
    "--scale-mode",
    "--mask-semantics",
    "--channels",
    "--normalization",
    "--epoch",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "2",
            "3",
            "1e30",
            "-1e-30",
            "nan",
            "inf",
            "-inf",
            "true",
            "false",
            "yes",
            "pad",
            "dy",
            "sdconv",
            "resnet10",
            "vgg",
            "fashion-mnist",
            "digits",
            "arrays",
            "filter",
            "",
            " ",
            "0x10",
            "1_000",
            "9" * 30,
            "1.5",
            "0.3",
            "null",
            "[1, 2]",
            "{a: 1}",
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), max_size=5))
@example(pairs=[("--epoch", "\x85")])  # found by --fuzz: a NEL in an echoed argument split the line
def test_generated_train_arguments_are_accepted_or_refused_in_one_line(tmp_path, pairs):
    args = ["train", "--out", str(tmp_path / "run")]
    for flag, value in pairs:
        args += [flag, value]
    _cli(args, tmp_path)


# ------------------------------------------------------------------------------------------ YAML

YAML_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True),
        st.text(max_size=10),
        st.sampled_from(["pad", "resnet10", "digits", "0.3", "1e5"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "epochs",
        "batch_size",
        "lr",
        "kappa",
        "conv",
        "model",
        "width",
        "seed",
        "dataset",
        "granularity",
        "num_kernels",
        "augment",
        "flip",
        "image_size",
        "train_subset",
        "seeds",
        "temperature_start",
        "unknown_key",
    ]
)


@FUZZ
@given(
    st.one_of(
        st.dictionaries(KEYS, YAML_VALUES, max_size=5).map(lambda d: yaml.safe_dump(d).encode()),
        YAML_VALUES.map(lambda v: yaml.safe_dump(v).encode()),
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"a: &x [1]\nb: *x\n",
                b"epochs: 1\nepochs: 2\n",
                b"[" * 40,
                b"\xff\xfe\x00",
                b"!!python/object:os.system {}\n",
                b"epochs: !!binary aGk=\n",
            ]
        ),
    )
)
@example(document=b'"\\r":\n(:')  # found by --fuzz: an unknown key with a carriage return split the line
def test_generated_yaml_configs_are_accepted_or_refused_in_one_line(tmp_path, document):
    path = tmp_path / "config.yaml"
    path.write_bytes(document)
    _cli(["train", "--config", str(path), "--out", str(tmp_path / "run")], tmp_path)


# ------------------------------------------------------------------------------------------ MoE compression

COMPRESS_FLAGS = [
    "--kappa",
    "--method",
    "--granularity",
    "--static",
    "--partition-iterations",
    "--calibration-batches",
    "--finetune-steps",
    "--lr",
    "--block-size",
    "--batch-size",
    "--heldout",
    "--seed",
    "--progress",
]
QUICK_COMPRESS = [
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--calibration-batches",
    "1",
    "--partition-iterations",
    "1",
    "--progress",
    "false",
]


def _accepting_compress_folder(model_dir, calibration, out, cfg):
    """Stands in for padnet moe-compress's pipeline: the configuration got through every check."""
    cfg.validate()
    measured = {"perplexity": 2.0, "bytes": 4}
    return {
        "original": measured,
        "compressed": measured,
        "bytes_ratio": 1.0,
        "expected_bytes_ratio": 1.0,
        "kappa": cfg.pad_config().value("kappa"),
        "dynamic_ratio": cfg.pad_config().value("kappa"),
    }


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(COMPRESS_FLAGS), VALUES), max_size=5))
def test_generated_moe_compress_arguments_are_accepted_or_refused_in_one_line(tmp_path, pairs):
    args = [
        "moe-compress",
        str(tmp_path),
        "--calibration",
        str(tmp_path / "text.txt"),
        "--out",
        str(tmp_path / "out"),
    ]
    for flag, value in pairs:
        args += [flag, value]
    with mock.patch("padnet.training.nlp.compress.compress_folder", _accepting_compress_folder):
        _cli(args, tmp_path)


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    """The files of a tiny MoE causal-LM folder (name -> bytes) and a calibration text file."""
    from hf_folders import tiny_moe_folder

    root = tiny_moe_folder(tmp_path_factory.mktemp("moe"))
    return {p.name: p.read_bytes() for p in (root / "model").iterdir()}, root / "text.txt"


@FUZZ
@given(st.sampled_from(["model.safetensors", "config.json"]), st.data())
def test_mutated_moe_model_folders_are_compressed_or_refused_in_one_line(
    tmp_path_factory, moe_folder, name, data
):
    files, text = moe_folder
    root = tmp_path_factory.mktemp("moe-model")
    (root / "model").mkdir()
    for file, content in files.items():
        (root / "model" / file).write_bytes(data.draw(mutations(content)) if file == name else content)
    _cli(
        [
            "moe-compress",
            str(root / "model"),
            "--calibration",
            str(text),
            "--out",
            str(root / "out"),
            *QUICK_COMPRESS,
        ],
        root,
    )


class _AcceptingStudy:
    """Stands in for compress-study's trained models and compressions: the settings got through every check."""

    def __init__(self, out, recipe, log=print, progress=True):
        self.tokenizer, self.train_blocks, self.heldout = [0], torch.zeros(1, 1), torch.zeros(1, 1)

    def trained(self, name, seed, ffn):
        return Path(name), {"perplexity": 2.0, "bytes": 4}

    def compressed(self, folder, name, cfg):
        cfg.validate()
        return {"original": {"perplexity": 2.0, "bytes": 8}, "compressed": {"perplexity": 3.0, "bytes": 4}}


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["--seeds", "--kappas", "--steps", "--progress"]),
            st.lists(VALUES, min_size=1, max_size=3),
        ),
        max_size=4,
    ),
    st.sampled_from([None, "results.json", "runs", "compression/results.json"]),
)
def test_generated_compress_study_arguments_are_accepted_or_refused_in_one_line(tmp_path, pairs, present):
    out = tmp_path / "out"
    if present is not None:  # the output folder holds a file already
        (out / present).parent.mkdir(parents=True, exist_ok=True)
        (out / present).write_text("{}")
    args = ["compress-study", "--out", str(out)]
    for flag, values in pairs:
        args += [flag, *values]
    with mock.patch("padnet.experiments.studies.compression.Study", _AcceptingStudy):
        _cli(args, tmp_path)


# ------------------------------------------------------------------------------------------ data files


@FUZZ
@given(st.sampled_from(sorted(FASHION)), st.data())
def test_mutated_idx_files_are_read_or_refused_in_one_line(tmp_path_factory, name, data):
    root = _fashion(tmp_path_factory.mktemp("fashion"))
    (root / name).write_bytes(data.draw(mutations((root / name).read_bytes())))
    _cli(["data", "fashion-mnist", "--data-root", str(root)])


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


# found by --fuzz: PIL reports this damaged PNG with a SyntaxError, which escaped as a traceback
BROKEN_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x06\x00\x00\x00\x05\x08\x02\x00\x00\x00\xe9:\n\xb1"
    b"\x00\x00\x00\x14IDATx\x9cc<!\x17\xc5\x80\n\x0e\x98\x180\x00\xd9B\x00v\xe8\x01J0\xfd\xbfU\x00\x00\x00\x00"
    b"IEND\xaeB`\x82"
)


def test_a_png_that_pil_calls_a_syntax_error_is_a_one_line_data_error(tmp_path):
    from padnet.errors import DataError
    from padnet.training.data.folder import ImageFolder

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.png").write_bytes(_png())
    (tmp_path / "b" / "0.png").write_bytes(BROKEN_PNG)
    with pytest.raises(DataError, match=r"cannot read image .*0.png: broken PNG file"):
        ImageFolder(tmp_path, augment=False, size=4, resize_to=4).check_images()


@FUZZ
@given(st.data())
def test_mutated_images_in_a_folder_are_decoded_or_refused_in_one_line(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("images")
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.png").write_bytes(_png())
    (root / "train" / "b" / "0.png").write_bytes(data.draw(mutations(_png())))
    _cli(["data", "imagefolder", "--data-root", str(root)])


TSV = b"index\tsentence1\tsentence2\tlabel\n0\tA man plays.\tSomeone plays.\tentailment\n1\tA cat.\tA dog.\tnot_entailment\n"
CSV = b'review,sentiment\n"a fine, warm film",pos\n"dull ""and"" long",neg\n'


@FUZZ
@given(st.data())
def test_mutated_tsv_and_csv_files_are_read_or_refused_in_one_line(tmp_path_factory, data):
    from padnet.training.data.text import load_task

    glue = tmp_path_factory.mktemp("glue")
    (glue / "RTE").mkdir()
    for split in ("train", "dev"):
        (glue / "RTE" / f"{split}.tsv").write_bytes(data.draw(mutations(TSV)))
    _loader(load_task, "rte", "train", glue)
    texts = tmp_path_factory.mktemp("text") / "reviews.csv"
    texts.write_bytes(data.draw(mutations(CSV)))
    _loader(load_task, "text", "train", texts, ("review",), "sentiment")


@FUZZ
@given(st.data())
def test_mutated_parquet_files_are_read_or_refused_in_one_line(tmp_path_factory, data):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from padnet.training.data.text import load_task

    buffer = io.BytesIO()
    pq.write_table(
        pa.table({"sentence1": ["a b", "c d"], "sentence2": ["e", "f"], "label": [0, 1], "idx": [0, 1]}),
        buffer,
    )
    folder = tmp_path_factory.mktemp("glue") / "rte"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}-00000-of-00001.parquet").write_bytes(data.draw(mutations(buffer.getvalue())))
    _loader(load_task, "rte", "train", folder.parent)


# ------------------------------------------------------------------------------------------ safetensors


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run checkpoint of a static ResNet-10 on the digits, and a deployed PAD-Net model folder."""
    from padnet.training.config import TrainConfig

    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    model = padnet.create_model(
        "resnet10", conv="static", num_classes=10, in_chans=1, width=0.125, stem="small"
    )
    cfg = TrainConfig(dataset="digits", model="resnet10", width=0.125, conv="static")
    checkpoint = save_checkpoint(
        root / "model.safetensors", model, {"config": cfg.to_dict(), "epoch": 1, "step": 1}
    )
    pad = padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, width=0.125, stem="small")
    padnet.partition(pad, 0.3, "random")
    folder = padnet.save_pretrained(padnet.deploy(pad), root / "deployed")
    return checkpoint.read_bytes(), {p.name: p.read_bytes() for p in folder.iterdir()}


@FUZZ
@given(st.data())
def test_mutated_checkpoints_are_evaluated_or_refused_in_one_line(tmp_path_factory, saved, data):
    checkpoint, _ = saved
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    path.write_bytes(data.draw(mutations(checkpoint)))
    _cli(["evaluate", str(path)])


@FUZZ
@given(st.sampled_from(["padnet_config.json", "padnet_model.safetensors"]), st.data())
def test_mutated_model_folders_are_loaded_or_refused_in_one_line(tmp_path_factory, saved, name, data):
    _, files = saved
    folder = tmp_path_factory.mktemp("folder")
    for file, content in files.items():
        (folder / file).write_bytes(data.draw(mutations(content)) if file == name else content)
    _loader(padnet.load_pretrained, folder)


# ----------------------------------------------------------------------------------------- model records

RECORD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        [
            1e9,
            1e308,
            -1,
            0,
            2**63,
            0.5,
            "pad",
            "dy",
            "odconv",
            "moe",
            "pad-moe",
            "custom",
            "sdconv",
            "epochs",
            "steps",
            "manual",
            "local",
            "filter",
            "neuron",
            "auto",
            "all",
            "*conv*",
        ]
    ),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=3),
    st.dictionaries(
        st.sampled_from(["num_kernels", "reduction", "formulation", "routing", "x"]),
        st.one_of(st.integers(-5, 10**9), st.text(max_size=6), st.floats()),
        max_size=2,
    ),
)
RECORD_KEYS = st.sampled_from([f.name for f in dataclasses.fields(padnet.PadConfig)] + ["extra"])
TOP_KEYS = st.sampled_from(["form", "converted", "base", "deploy", "architecture", "format", "extra"])


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Models saved as folders, by kind: a PAD-Net ResNet-10 with only what changed (``delta``, loaded with its
    base model) and whole (``full``, loaded alone), and a tiny BERT with PAD-MoE feed-forward blocks, whole
    (``moe``). Each as (record, tensors, weights metadata, pristine base model)."""
    from safetensors import safe_open

    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("records")
    torch.manual_seed(0)
    cnn = padnet.create_model("resnet10", conv="static", num_classes=4, in_chans=1, width=0.125, stem="small")
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=50,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=16,
        )
    )
    pad = padnet.get_pad_model(copy.deepcopy(cnn), method="pad", init_from_pretrained=False)
    pad.partition(partition="random")
    moe = padnet.get_pad_model(copy.deepcopy(bert), method="pad-moe", num_experts=4)
    moe.partition(partition="random")
    saved = {}
    for kind, model, base, full in (
        ("delta", pad, cnn, False),
        ("full", pad, cnn, True),
        ("moe", moe, bert, True),
    ):
        folder = model.save_pretrained(root / kind, full=full)
        with safe_open(str(folder / "padnet_model.safetensors"), framework="pt") as fh:
            tensors, metadata = {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()  # noqa: SIM118
        hf_config = (folder / "config.json").read_text() if (folder / "config.json").exists() else None
        saved[kind] = (
            json.loads((folder / "padnet_config.json").read_text()),
            tensors,
            metadata,
            base,
            hf_config,
        )
    return saved


@st.composite
def edited_records(draw, record: dict) -> dict:
    """``record`` with PadConfig fields (and now and then a top-level field) given other values, removed or added:
    wrong types, huge numbers, other method names, unknown keys."""
    record = json.loads(json.dumps(record))
    config = record["config"]
    for key in draw(st.lists(RECORD_KEYS, min_size=1, max_size=4)):
        if draw(st.integers(0, 4)) == 0:
            config.pop(key, None)
        else:
            config[key] = draw(RECORD_VALUES)
    if draw(st.integers(0, 3)) == 0:
        key = draw(TOP_KEYS)
        record[key] = draw(st.one_of(RECORD_VALUES, st.just({})))
    return record


@st.composite
def edited_tensors(draw, tensors: dict) -> dict:
    """``tensors`` as saved, or with one changed: a mask of 0.5 (or other packed bits), NaN, integers, removed,
    reshaped, or an unexpected extra tensor."""
    tensors = dict(tensors)
    kind = draw(st.sampled_from(["valid", "valid", "mask", "nan", "int", "drop", "shape", "extra"]))
    masks = sorted(k for k in tensors if k.endswith(("mask", ".bits")))  # .bits: MoE masks, packed
    floats = sorted(k for k, v in tensors.items() if v.is_floating_point())
    key = draw(
        st.sampled_from(masks if kind == "mask" else floats if kind in ("nan", "int") else sorted(tensors))
    )
    if kind == "mask":
        values = [0.5, -1.0, 2.0] if tensors[key].is_floating_point() else [0, 3, 255]
        tensors[key] = torch.full_like(tensors[key], draw(st.sampled_from(values)))
    elif kind == "nan":
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    elif kind == "int":
        tensors[key] = tensors[key].to(torch.int64)
    elif kind == "drop":
        del tensors[key]
    elif kind == "shape":
        tensors[key] = tensors[key].reshape(-1)[: max(1, tensors[key].numel() // 2)].clone()
    elif kind == "extra":
        tensors["extra.weight"] = torch.zeros(3)
    return tensors


@FUZZ
@given(st.sampled_from(["delta", "full", "moe"]), st.booleans(), st.data())
@example(kind="delta", base_given=True, data=None)  # the records as saved load
@example(kind="moe", base_given=False, data=None)
def test_generated_model_records_load_or_are_refused_in_one_line(
    tmp_path_factory, records, kind, base_given, data
):
    from safetensors.torch import save_file

    record, tensors, metadata, base, hf_config = records[kind]
    if data is not None:
        record, tensors = data.draw(edited_records(record)), data.draw(edited_tensors(tensors))
    folder = tmp_path_factory.mktemp("record")
    (folder / "padnet_config.json").write_text(json.dumps(record))
    if hf_config is not None:
        (folder / "config.json").write_text(hf_config)
    save_file(tensors, str(folder / "padnet_model.safetensors"), metadata=metadata)
    model = _loader(padnet.load_pretrained, folder, copy.deepcopy(base) if base_given else None)
    if data is None:
        assert isinstance(model, padnet.PadModel)
