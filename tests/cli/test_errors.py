"""Every row of docs/errors.md: the bad input, the one-line error it gets and exit code 2.

Each row's check builds the input in a temporary folder and runs the command line in this process. The
documented message is a pattern: ``…`` stands for any text (paths, lists), the rest must match exactly.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_folders import save_with_minilm_tokenizer, tiny_moe_folder
from padnet.cli import main
from padnet.models import create_model
from padnet.training.config import TrainConfig
from padnet.training.engine import save_checkpoint

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
TRAIN = [
    "train",
    "--dataset",
    "digits",
    "--model",
    "resnet10",
    "--width",
    "0.125",
    "--epochs",
    "1",
    "--train-subset",
    "64",
    "--batch-size",
    "32",
    "--progress",
    "false",
]


def _idx(path: Path, data: bytes, dims: tuple[int, ...], magic: int = 0x0803) -> None:
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data)


def _fashion(tmp: Path, *, truncate: bool = False, magic: int = 0x0803, side: int = 28) -> Path:
    """A Fashion-MNIST folder of 4 images per split (``side`` pixels a side), optionally with a broken
    training-image file."""
    root = tmp / "fmnist"
    root.mkdir()
    for prefix in ("train", "t10k"):
        pixels = bytes(i % 251 for i in range(4 * side * side))
        _idx(
            root / f"{prefix}-images-idx3-ubyte",
            pixels[:100] if truncate and prefix == "train" else pixels,
            (4, side, side),
            magic if prefix == "train" else 0x0803,
        )
        _idx(root / f"{prefix}-labels-idx1-ubyte", bytes(4), (4,), 0x0801)
    return root


def _cifar_truncated(tmp: Path) -> Path:
    folder = tmp / "cifar" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"):
        (folder / name).write_bytes(bytes(3073 * 2))
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 + 100))
    return tmp / "cifar"


def _rte(
    tmp: Path, header: str = "index\tsentence1\tsentence2\tlabel", rows: str = "0\ta\tb\tentailment"
) -> Path:
    folder = tmp / "glue" / "RTE"
    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text(f"{header}\n{rows}\n")
    return tmp / "glue"


def _finetune(*flags: str) -> list[str]:
    return ["finetune", "--model", "minilm", "--progress", "false", *flags]


def _checkpoint(tmp: Path, conv: str = "static", **change) -> Path:
    """A padnet checkpoint of a ResNet-10 with ``conv`` layers on the digits (its config edited by ``change``)."""
    torch.manual_seed(0)
    model = create_model("resnet10", conv=conv, num_classes=10, in_chans=1, width=0.125, stem="small")
    cfg = TrainConfig(dataset="digits", model="resnet10", width=0.125, conv=conv)
    path = tmp / "model.safetensors"
    save_checkpoint(path, model, {"config": {**cfg.to_dict(), **change}, "epoch": 1, "step": 1})
    return path


def _run_dir(tmp: Path) -> Path:
    out = tmp / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def _damaged_run(tmp: Path) -> Path:
    """A run directory whose only checkpoint lost its last 100 bytes."""
    out = _run_dir(tmp)
    _truncate(out / "checkpoint-epoch0001.safetensors")
    return out


def _pickled_model_folder(tmp: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config.save_pretrained(tmp)
    torch.save(transformers.BertForSequenceClassification(config).state_dict(), tmp / "pytorch_model.bin")
    return tmp


def _neox_folder(tmp: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPTNeoXConfig(
        vocab_size=30522,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        pad_token_id=0,
    )
    # FFN linears named dense_h_to_4h / dense_4h_to_h: not a default pattern
    return save_with_minilm_tokenizer(transformers.GPTNeoXForSequenceClassification(config), tmp)


COMPRESS = [
    "--block-size",
    "32",
    "--batch-size",
    "4",
    "--calibration-batches",
    "2",
    "--partition-iterations",
    "1",
    "--progress",
    "false",
]


def _moe_compress(tmp: Path, edit=None, *flags: str) -> list[str]:
    """``padnet moe-compress`` of a tiny MoE model folder (changed by ``edit(model folder)`` first) into
    ``tmp/out``, quick settings and ``flags``."""
    root = tiny_moe_folder(tmp / "moe")
    if edit is not None:
        edit(root / "model")
    return [
        "moe-compress",
        str(root / "model"),
        "--calibration",
        str(root / "text.txt"),
        "--out",
        str(tmp / "out"),
        *COMPRESS,
        *flags,
    ]


def _edit_moe_tensor(folder: Path, value: float | None) -> None:
    """One tensor of the model folder's weights set to ``value``; None: a layer norm's weight renamed."""
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    if value is None:
        tensors["model.layers.0.input_norm.weight"] = tensors.pop("model.layers.0.input_layernorm.weight")
    else:
        tensors["model.layers.0.block_sparse_moe.experts.1.w1.weight"][0, 0] = value
    save_file(tensors, str(path), metadata={"format": "pt"})


def _shard_and_lose_the_last(folder: Path) -> None:
    """The model folder's weights saved again in shards of at most 100 KB, the last shard then deleted."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    (folder / sorted(set(index["weight_map"].values()))[-1]).unlink()


def _shorten_a_layer_norm(folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    key = "model.layers.1.input_layernorm.weight"
    tensors[key] = torch.cat([tensors[key], tensors[key][:1]])  # 17 values: more, so the count check passes
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(folder: Path, key: str, old: int, new: int) -> None:
    path = folder / "config.json"
    path.write_text(path.read_text().replace(f'"{key}": {old},', f'"{key}": {new},'))


def _drop_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink()


def _compressed_twice(tmp: Path) -> list[str]:
    args = _moe_compress(tmp)
    assert main(args) == 0
    return args


def _compress_output(tmp: Path) -> Path:
    """A folder like the one ``padnet moe-compress`` writes."""
    (tmp / "out" / "model").mkdir(parents=True)
    (tmp / "out" / "results.json").write_text("{}")
    return tmp / "out"


def _study_of_5_steps(tmp: Path) -> Path:
    """A compress-study folder whose summary records a recipe of 5 training steps."""
    from dataclasses import asdict, replace

    from padnet.experiments.studies.compression import Recipe

    (tmp / "out" / "compression").mkdir(parents=True)
    recipe = asdict(replace(Recipe(), steps=5))
    (tmp / "out" / "compression" / "results.json").write_text(json.dumps({"recipe": recipe}))
    return tmp / "out"


def _text(tmp: Path) -> Path:
    path = tmp / "text.txt"
    path.write_text("a gripping film\n" * 200)
    return path


def _yaml(tmp: Path, text: str) -> str:
    path = tmp / "config.yaml"
    path.write_text(text)
    return str(path)


# id → function of a temporary folder returning the command line
ROWS = {
    "unknown-command": lambda t: ["fly"],
    "flag-type": lambda t: ["train", "--epochs", "ten"],
    "unknown-flag": lambda t: ["train", "--epoch", "3"],
    "kappa-range": lambda t: ["train", "--kappa", "7"],
    "unknown-conv": lambda t: ["train", "--conv", "dynamc"],
    "unknown-model": lambda t: ["train", "--model", "resnet7"],
    "batch-size": lambda t: ["train", "--batch-size", "0"],
    "unknown-device": lambda t: ["train", "--device", "tpu"],
    "schedule-epochs": lambda t: ["train", "--warmup-epochs", "1e308"],
    "batch-size-one": lambda t: ["train", "--batch-size", "1"],
    "option-not-applies": lambda t: ["train", "--conv", "pad", "--sparsity", "0.7"],
    "seeds-repeated": lambda t: ["compare", "--seeds", "0", "0", "--out", str(t / "cmp")],
    "config-missing": lambda t: ["train", "--config", str(t / "nope.yaml")],
    "config-syntax": lambda t: ["train", "--config", _yaml(t, "epochs: [1,\n")],
    "config-unknown-key": lambda t: ["train", "--config", _yaml(t, "epochz: 3\n")],
    "config-type": lambda t: ["train", "--config", _yaml(t, "epochs: ten\n")],
    "config-not-a-mapping": lambda t: ["train", "--config", _yaml(t, "- 1\n- 2\n")],
    "config-alias": lambda t: ["train", "--config", _yaml(t, "a: &x [1]\nb: *x\n")],
    "config-duplicate-key": lambda t: ["train", "--config", _yaml(t, "epochs: 1\nepochs: 2\n")],
    "config-binary": lambda t: ["train", "--config", _binary_yaml(t)],
    "config-deep": lambda t: ["train", "--config", _yaml(t, "tags: " + "[" * 200 + "]" * 200 + "\n")],
    "config-bool-for-int": lambda t: ["train", "--config", _yaml(t, "seed: true\n")],
    "config-int-for-bool": lambda t: ["train", "--config", _yaml(t, "augment: 7\n")],
    "config-mapping-for-list": lambda t: ["train", "--config", _yaml(t, "tags: {a: 1}\n")],
    "idx-missing": lambda t: ["data", "fashion-mnist", "--data-root", str(t)],
    "idx-truncated": lambda t: ["data", "fashion-mnist", "--data-root", str(_fashion(t, truncate=True))],
    "idx-empty-images": lambda t: ["data", "fashion-mnist", "--data-root", str(_fashion(t, side=0))],
    "idx-magic": lambda t: ["data", "fashion-mnist", "--data-root", str(_fashion(t, magic=0x12340803))],
    "cifar-truncated": lambda t: ["data", "cifar10", "--data-root", str(_cifar_truncated(t))],
    "imagefolder-empty": lambda t: ["data", "imagefolder", "--data-root", str(t)],
    "imagefolder-truncated": lambda t: [
        "data",
        "imagefolder",
        "--data-root",
        str(_folder_with_truncated_image(t)),
    ],
    "train-truncated-image": lambda t: [
        "train",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(_folder_with_truncated_image(t)),
        "--image-size",
        "8",
        "--batch-size",
        "2",
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--progress",
        "false",
        "--out",
        str(t / "run"),
    ],
    "imagefolder-one-class": lambda t: ["data", "imagefolder", "--data-root", str(_one_class_folder(t))],
    "unknown-task": lambda t: _finetune("--task", "squad"),
    "glue-no-data-root": lambda t: _finetune("--task", "rte"),
    "tsv-missing-column": lambda t: _finetune(
        "--task", "rte", "--data-root", str(_rte(t, "index\tsentence1\tlabel", "0\ta\tentailment"))
    ),
    "tsv-ragged-row": lambda t: _finetune(
        "--task", "rte", "--data-root", str(_rte(t, rows="0\ta\tentailment"))
    ),
    "tsv-bad-label": lambda t: _finetune("--task", "rte", "--data-root", str(_rte(t, rows="0\ta\tb\tmaybe"))),
    "tsv-stsb-range": lambda t: _finetune("--task", "stsb", "--data-root", str(_stsb(t))),
    "parquet-corrupt": lambda t: _finetune("--task", "rte", "--data-root", str(_parquet(t, b"not parquet"))),
    "parquet-missing-column": lambda t: _finetune("--task", "rte", "--data-root", str(_parquet(t, None))),
    "model-no-ffn": lambda t: _finetune("--method", "moe", "--model", str(_neox_folder(t))),
    "model-pickle": lambda t: _finetune("--model", str(_pickled_model_folder(t))),
    "model-truncated": lambda t: _finetune(
        "--model", str(_truncate(_neox_folder(t) / "model.safetensors").parent)
    ),
    "model-missing": lambda t: _finetune("--model", str(t / "nope")),
    "compress-no-text": lambda t: [
        "moe-compress",
        str(t),
        "--calibration",
        str(t / "nope.txt"),
        "--out",
        str(t / "out"),
    ],
    "compress-no-experts": lambda t: [
        "moe-compress",
        str(_neox_folder(t / "neox")),
        "--calibration",
        str(_text(t)),
        "--out",
        str(t / "out"),
    ],
    "compress-truncated-weights": lambda t: _moe_compress(t, lambda m: _truncate(m / "model.safetensors")),
    "compress-nan-weights": lambda t: _moe_compress(t, lambda m: _edit_moe_tensor(m, float("nan"))),
    "compress-config-size": lambda t: _moe_compress(
        t, lambda m: _edit_config(m, "intermediate_size", 24, 2400)
    ),
    "compress-missing-tensor": lambda t: _moe_compress(t, lambda m: _edit_moe_tensor(m, None)),
    "compress-no-tokenizer": lambda t: _moe_compress(t, _drop_tokenizer),
    "compress-model-fails": lambda t: _moe_compress(
        t, lambda m: _edit_config(m, "num_experts_per_tok", 2, 9)
    ),
    "compress-non-finite-loss": lambda t: _moe_compress(
        t, None, "--pipeline", "model", "--finetune-steps", "3", "--lr", "1e30"
    ),
    "compress-finetune-layers": lambda t: _moe_compress(t, None, "--finetune-steps", "3"),
    "compress-missing-shard": lambda t: _moe_compress(t, _shard_and_lose_the_last),
    "compress-wrong-shape": lambda t: _moe_compress(t, _shorten_a_layer_norm),
    "compress-out-taken": lambda t: _compressed_twice(t),
    "study-out-taken": lambda t: ["compress-study", "--out", str(_compress_output(t))],
    "study-other-recipe": lambda t: ["compress-study", "--steps", "6", "--out", str(_study_of_5_steps(t))],
    "study-seeds-repeated": lambda t: ["compress-study", "--seeds", "0", "0", "--out", str(t / "out")],
    "study-seed-range": lambda t: ["compress-study", "--seeds", "-1", "--out", str(t / "out")],
    "study-kappas-repeated": lambda t: ["compress-study", "--kappas", "0.3", "0.3", "--out", str(t / "out")],
    "study-steps": lambda t: ["compress-study", "--steps", "10000000000000", "--out", str(t / "out")],
    "arrays-channels-last": lambda t: [
        "data",
        "arrays",
        "--data-root",
        str(_npz(t, np.zeros((4, 8, 8, 3), np.uint8))),
    ],
    "arrays-flat": lambda t: ["data", "arrays", "--data-root", str(_npz(t, np.zeros((4, 64), np.uint8)))],
    "arrays-keys": lambda t: ["data", "arrays", "--data-root", str(_npz(t, None))],
    "image-option-dataset": lambda t: ["train", "--image-size", "8"],
    "evaluate-other-data": lambda t: ["evaluate", str(_api_run(t))],
    "text-no-data-root": lambda t: _finetune("--task", "text"),
    "text-no-column": lambda t: _finetune("--task", "text", "--data-root", str(_reviews(t))),
    "checkpoint-missing": lambda t: ["evaluate", str(t / "nope.safetensors")],
    "checkpoint-truncated": lambda t: ["evaluate", str(_truncate(_checkpoint(t)))],
    "checkpoint-pickle": lambda t: ["evaluate", str(_pickle_file(t))],
    "checkpoint-foreign": lambda t: ["evaluate", str(_foreign(t))],
    "checkpoint-architecture": lambda t: ["evaluate", str(_checkpoint(t, model="resnet18"))],
    "checkpoint-bad-config": lambda t: ["evaluate", str(_checkpoint(t, width=100000))],
    "checkpoint-nan-weights": lambda t: ["evaluate", str(_edit_weight(_checkpoint(t), float("nan")))],
    "checkpoint-int-weights": lambda t: ["evaluate", str(_edit_weight(_checkpoint(t), None))],
    "deploy-export-odconv": lambda t: [
        "deploy",
        str(_checkpoint(t, "odconv")),
        "--out",
        str(t / "out"),
        "--onnx",
    ],
    "kappa-no-dynamic": lambda t: [*TRAIN, "--conv", "pad", "--kappa", "1e-300", "--out", str(t / "run")],
    "checkpoint-mask-values": lambda t: [
        "evaluate",
        str(_edit_weight(_checkpoint(t, "pad"), 0.5, "model/layer1.0.conv1.weight_mode.mask")),
    ],
    "run-dir-taken": lambda t: [*TRAIN, "--out", str(_run_dir(t))],
    "resume-changed-config": lambda t: [
        *TRAIN[:-6],
        "--epochs",
        "2",
        *TRAIN[-6:],
        "--out",
        str(_run_dir(t)),
        "--resume",
    ],
    "non-finite-loss": lambda t: [*TRAIN, "--lr", "1e30", "--out", str(t / "run")],
    "resume-damaged": lambda t: [*TRAIN, "--out", str(_damaged_run(t)), "--resume"],
    "batch-larger-than-data": lambda t: [
        *TRAIN[:-4],
        "--batch-size",
        "128",
        "--progress",
        "false",
        "--out",
        str(t / "run"),
    ],
}


def _binary_yaml(tmp: Path) -> str:
    path = tmp / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00epochs")
    return str(path)


def _folder_with_truncated_image(tmp: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp / "imgs" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 12), (90 * i, 40, 200)).save(tmp / "imgs" / split / cls / f"{i}.png")
    broken = tmp / "imgs" / "train" / "b" / "0.png"
    broken.write_bytes(broken.read_bytes()[:40])
    return tmp / "imgs"


def _edit_weight(path: Path, value, key: str = "model/stem.0.weight") -> Path:
    """The checkpoint with tensor ``key`` set to ``value`` (None: stored as int64), metadata kept."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    tensors[key] = tensors[key].long() if value is None else tensors[key].fill_(value)
    save_file(tensors, str(path), metadata=meta)
    return path


def _one_class_folder(tmp: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        (tmp / "imgs" / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp / "imgs" / split / "a" / "0.png")
    return tmp / "imgs"


def _stsb(tmp: Path) -> Path:
    folder = tmp / "glue" / "STS-B"
    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t7.5\n")
    return tmp / "glue"


def _npz(tmp: Path, images) -> Path:
    path = tmp / "data.npz"
    if images is None:
        np.savez(path, features=np.zeros((4, 8, 8), np.uint8))
    else:
        np.savez(path, x_train=images, y_train=np.arange(4) % 2, x_test=images, y_test=np.arange(4) % 2)
    return path


def _api_run(tmp: Path) -> Path:
    """A run trained through the Python API on digits-shaped arrays while its config names fashion-mnist."""
    from padnet.training.data.arrays import from_arrays
    from padnet.training.engine.trainer import Trainer

    images = np.random.default_rng(0).integers(0, 255, (32, 8, 8)).astype(np.uint8)
    data = from_arrays(images, np.arange(32) % 2, images[:8], np.arange(8) % 2)
    cfg = TrainConfig(epochs=1, batch_size=16, width=0.125, progress=False)
    Trainer(cfg, tmp / "run", data=data).fit()
    return tmp / "run" / "model.safetensors"


def _reviews(tmp: Path) -> Path:
    path = tmp / "reviews.csv"
    path.write_text("review,sentiment\ngood,1\nbad,0\n")
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _pickle_file(tmp: Path) -> Path:
    path = tmp / "model.safetensors"
    torch.save({"weight": torch.zeros(3)}, path)
    return path


def _foreign(tmp: Path) -> Path:
    path = tmp / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    return path


def _parquet(tmp: Path, content: bytes | None) -> Path:
    folder = tmp / "glue" / "rte"
    folder.mkdir(parents=True)
    for split in ("train", "validation"):
        path = folder / f"{split}-00000-of-00001.parquet"
        if content is not None:
            path.write_bytes(content)
        else:
            pq = pytest.importorskip("pyarrow.parquet")
            pa = pytest.importorskip("pyarrow")
            pq.write_table(pa.table({"sentence1": ["a"], "label": [0], "idx": [0]}), path)
    return tmp / "glue"


def _documented() -> dict[str, tuple[str, str]]:
    """id → (input, message pattern) from the table in docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0] != "`id`":
            rows[cells[0].strip("`")] = (cells[1], cells[3].strip("`"))
    return rows


def _pattern(message: str) -> re.Pattern:
    return re.compile(
        "".join(".*" if part == "…" else re.escape(part) for part in re.split("(…)", message)) + "$"
    )


def test_every_documented_row_has_a_check_and_the_table_has_at_least_20_rows():
    documented = _documented()
    assert len(documented) >= 20
    assert sorted(documented) == sorted(ROWS)


@pytest.mark.parametrize("row", sorted(ROWS))
def test_documented_error(row, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ROWS[row](tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert _pattern(_documented()[row][1]).match(err[0]), err[0]


def test_a_refused_export_writes_nothing(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, "odconv")
    assert main(["deploy", str(checkpoint), "--out", str(tmp_path / "out"), "--torchscript"]) == 2
    assert "padnet: error: layer1.0.conv1 is ODConv2d" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gzip_is_read_like_raw(tmp_path):  # the IDX rows above use raw files; .gz ones are read the same way
    root = _fashion(tmp_path)
    for path in list(root.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert main(["data", "fashion-mnist", "--data-root", str(root)]) == 0


@pytest.mark.parametrize("conv", ["odconv", "pad-dcd"])
def test_deploy_names_the_layers_it_keeps_in_one_line(tmp_path, capsys, conv):
    assert main(["deploy", str(_checkpoint(tmp_path, conv)), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    kind = {"odconv": "ODConv2d", "pad-dcd": "PADDCDConv2d"}[conv]
    assert len(err) == 1 and re.fullmatch(
        rf"padnet: warning: deploy: \d+ {kind} layers have no compact form and are kept in their training form",
        err[0],
    ), err
