"""Regressions from an independent probe of bad input (issue 19): each case once gave a traceback, a hang, a
silently wrong result or a second error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import padnet
from padnet.cli import main
from padnet.errors import CheckpointError, ConfigError
from padnet.training.config import TrainConfig

TINY = ["--dataset", "digits", "--width", "0.125", "--batch-size", "64", "--progress", "false"]


def _one_error(capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("padnet: error: ") and fragment in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-epoch static run on the digits (seconds)."""
    out = tmp_path_factory.mktemp("probe") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path, interrupted: bool = False) -> Path:
    """A copy of the run; ``interrupted``: as if killed after epoch 1."""
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    if interrupted:
        for name in ("checkpoint-epoch0002.safetensors", "model.safetensors", "results.json"):
            (out / name).unlink()
        lines = (out / "metrics.jsonl").read_text().splitlines()
        (out / "metrics.jsonl").write_text(lines[0] + "\n")
    return out


def _edit(path: Path, edit) -> None:
    """Re-save the safetensors ``path`` after ``edit(meta, tensors)`` changes its padnet metadata or tensors."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["padnet"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    result = edit(meta, tensors)  # a new metadata (dict or raw text), or anything else when edited in place
    meta = result if isinstance(result, (dict, str)) else meta
    save_file(tensors, str(path), metadata={"padnet": meta if isinstance(meta, str) else json.dumps(meta)})


def test_thread_counts_beyond_256_are_refused():
    with pytest.raises(ConfigError, match=r"threads must be in \[1, 256\], got 100000000"):
        TrainConfig(threads=10**8).validate()


def test_count_refuses_an_input_too_large_to_allocate(capsys):
    _one_error(capsys, ["count", "--input", "3", "100000", "100000"], "1 <= H, W <= 4096")


def test_bench_checks_its_options_before_it_prints_anything(capsys, tmp_path):
    _one_error(capsys, ["bench", "--quick", "--repeats", "0", "--out", str(tmp_path)], "repeats must be")
    _one_error(
        capsys, ["bench", "--threads", "100000", "--out", str(tmp_path)], "threads must be in [1, 256]"
    )


def test_an_empty_out_is_refused(capsys):
    _one_error(capsys, ["train", *TINY, "--out", ""], "--out needs a folder name")


def test_json_nested_too_deep_is_a_one_line_checkpoint_error(capsys, run, tmp_path):
    path = tmp_path / "model.safetensors"
    shutil.copy(run / "model.safetensors", path)
    _edit(
        path,
        lambda meta, t: json.dumps({**meta, "deep": []}).replace(
            '"deep": []', '"deep": ' + "[" * 5000 + "]" * 5000
        ),
    )
    _one_error(capsys, ["evaluate", str(path)], "not a readable padnet checkpoint")
    folder = padnet.save_pretrained(
        padnet.create_model("resnet10", num_classes=4, width=0.125), tmp_path / "f"
    )
    (folder / "padnet_config.json").write_text('{"a": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(CheckpointError, match="is not readable JSON"):
        padnet.load_pretrained(folder)


def test_a_full_folder_missing_a_tensor_is_refused(tmp_path):
    model = padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, width=0.125, stem="small")
    padnet.partition(model, 0.3, "random")
    folder = padnet.save_pretrained(padnet.deploy(model), tmp_path / "deployed")
    weights = folder / "padnet_model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    del tensors["fc.bias"]
    save_file(tensors, str(weights), metadata=meta)
    with pytest.raises(CheckpointError, match="does not hold tensor fc.bias"):
        padnet.load_pretrained(folder)


def test_a_deployed_layout_of_the_wrong_kind_is_refused(tmp_path):
    model = padnet.create_model("resnet10", conv="dy", num_classes=4, in_chans=1, width=0.125, stem="small")
    folder = padnet.save_pretrained(padnet.deploy(model), tmp_path / "deployed")
    record = json.loads((folder / "padnet_config.json").read_text())
    first = next(iter(record["deploy"]["layers"]))
    for bad in ({"dynamic_bias": "yes"}, {"num_dynamic": 10**12}, {"num_kernels": 9}):
        edited = json.loads(json.dumps(record))
        edited["deploy"]["layers"][first].update(bad)
        (folder / "padnet_config.json").write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match=f"deployed layout of layer {first}"):
            padnet.load_pretrained(folder)


def test_negative_batchnorm_variances_are_refused(capsys, run, tmp_path):
    path = tmp_path / "model.safetensors"
    shutil.copy(run / "model.safetensors", path)
    _edit(path, lambda meta, t: t["model/layer1.0.bn1.running_var"].fill_(-1.0))
    _one_error(capsys, ["evaluate", str(path)], "layer1.0.bn1.running_var holds negative variances")


def test_resuming_a_finished_run_with_a_damaged_log_keeps_its_result(capsys, run, tmp_path):
    out = _copy(run, tmp_path)
    want = json.loads((run / "results.json").read_text())["top1"]
    (out / "metrics.jsonl").write_text('{"epoch": 1, "step"')
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "padnet: warning:" in err and "metrics.jsonl" in err
    results = json.loads((out / "results.json").read_text())  # valid JSON: no NaN
    assert results["top1"] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda m, t: t.__setitem__("rng/torch", torch.zeros(3, dtype=torch.uint8)), "cannot resume"),
        (
            lambda m, t: t.__setitem__("optim/6/momentum_buffer", torch.zeros(1)),
            "optim/6/momentum_buffer has shape",
        ),
        (lambda m, t: t.pop("optim/6/momentum_buffer"), "optimiser state is incomplete"),
        (lambda m, t: m["state"].update(epoch=99, step=-7), "epoch 99 and step -7 do not fit"),
    ],
    ids=["rng", "buffer-shape", "buffer-missing", "epoch"],
)
def test_a_damaged_training_state_is_refused_on_resume(capsys, run, tmp_path, edit, fragment):
    out = _copy(run, tmp_path, interrupted=True)
    _edit(out / "checkpoint-epoch0001.safetensors", edit)
    _one_error(capsys, ["train", *TINY, "--epochs", "2", "--out", str(out), "--resume"], fragment)
    assert not (out / "results.json").exists()


def test_a_damaged_safetensors_header_whose_length_starts_like_a_pickle_is_not_called_one(tmp_path):
    from padnet.training.engine.checkpoint import looks_pickled

    header = (
        b'{"a": ' + b" " * (0x180 - 7) + b"}"
    )  # 0x180 bytes: the length's first byte is 0x80, as a pickle's
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert path.read_bytes()[0] == 0x80 and not looks_pickled(path)
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 20)  # protocol 4 pickle
    assert looks_pickled(path)
