"""One path through the code (issue 27): the commands go through PadConfig / get_pad_model / PadModel, each
method option's default, range and applicability is PadConfig's alone, and renamed keys warn."""

from __future__ import annotations

import ast
import inspect
import types

import pytest
import torch

import padnet
from padnet.adapter import config as pad_config_module
from padnet.adapter.config import PadConfig, applies
from padnet.cli import main
from padnet.errors import ConfigError
from padnet.experiments.studies import pad as pad_study
from padnet.experiments.studies import sdconv as sdconv_study
from padnet.partitioning import DEFAULT_KAPPA
from padnet.training.config import FinetuneConfig, TrainConfig, config_from_dict
from padnet.training.data.images import ImageData, channel_stats
from padnet.training.engine.trainer import Trainer


def _runs(base: TrainConfig):
    return types.SimpleNamespace(base=base, seeds=(0,))


def test_the_studies_print_the_k_reduction_and_partition_they_ran():
    base = TrainConfig().replace(num_kernels=8, partition_iterations=3, partition_batches=2)
    text = pad_study._recipe(_runs(base))
    assert "k = 8, 3 IMP iterations on 2 batches" in text
    assert "k = 4," in pad_study._recipe(_runs(TrainConfig()))  # DY-Conv's own k, from the registry
    text = sdconv_study._recipe(_runs(TrainConfig().replace(num_kernels=2, reduction=8)))
    assert "k = 2, attention reduction 8," in text


def test_kappa_has_one_default_read_everywhere():
    assert PadConfig(method="pad").value("kappa") == DEFAULT_KAPPA["conv"]
    assert PadConfig(method="pad-moe").value("kappa") == DEFAULT_KAPPA["moe"]
    assert TrainConfig().value("kappa", "pad") == DEFAULT_KAPPA["conv"]
    assert FinetuneConfig().value("kappa", "pad-moe") == DEFAULT_KAPPA["moe"]
    assert inspect.signature(padnet.partition).parameters["kappa"].default == DEFAULT_KAPPA["conv"]


def test_the_command_line_help_shows_pad_configs_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split()).replace("pad- ", "pad-")  # argparse wraps at hyphens
    assert (
        "--kappa KAPPA method option (padnet.PadConfig.kappa) of pad, pad-condconv, pad-odconv, pad-dcd;"
        in out
    )
    assert f"pad-dcd; default: {DEFAULT_KAPPA['conv']}" in out
    assert "--temperature-epochs" not in out  # the old key is accepted, not advertised
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        f"--kappa KAPPA method option (padnet.PadConfig.kappa) of pad-moe, moe-p; default: {DEFAULT_KAPPA['moe']}"
        in out
    )


def test_the_old_temperature_key_warns_and_means_temperature_anneal():
    with pytest.warns(
        FutureWarning, match="the key temperature_epochs is deprecated .* use temperature_anneal"
    ):
        cfg = config_from_dict({"conv": "dy", "temperature_epochs": 2.5})
    assert cfg.pad_config().temperature_anneal == 2.5 and "temperature_epochs" not in cfg.to_dict()


def test_method_options_are_refused_by_pad_config_alone():
    with pytest.raises(ConfigError, match=r"dynamic ratio kappa must be in \(0, 1\], got 1.5"):
        TrainConfig().replace(kappa=1.5)  # a static run's recipe still holds valid options only
    with pytest.raises(ConfigError, match="num_kernels must be an integer >= 1 and <= 64, got 65"):
        TrainConfig().replace(conv="dy", num_kernels=65)
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig().replace(kapa=0.3)
    assert not applies("kappa", "dy") and applies("kappa", "pad") and applies("kappa", "pad-moe")


def test_pad_configs_field_docs_state_the_defaults_pad_config_applies():
    """Each field's own docstring (one entry per field in the reference) names the value `value()` gives an
    option left at None, so the text cannot drift from the one home of the default."""
    tree = ast.parse(inspect.getsource(pad_config_module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PadConfig")
    docs = {}
    for field, doc in zip(cls.body, cls.body[1:]):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    fields = [f.name for f in pad_config_module.dataclasses.fields(PadConfig)]
    assert set(docs) == set(fields)  # every field documented on its own
    for name, default in pad_config_module._DEFAULTS.items():
        shown = f'`"{default}"`' if isinstance(default, str) else str(default)
        assert f"None: {shown}" in docs[name], name


def test_padnet_train_trains_the_pad_model_a_user_loop_gets(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=gen)
    data = ImageData(images, torch.arange(32) % 4, 4, *channel_stats(images))
    cfg = TrainConfig(width=0.125, epochs=1, batch_size=16, progress=False).replace(
        conv="pad", kappa=0.4, partition="random"
    )
    trainer = Trainer(cfg, tmp_path / "run", data=(data, data))
    assert isinstance(trainer.pad, padnet.PadModel) and trainer.pad.base_model is trainer.model
    assert trainer.hooks is trainer.pad.training_state and trainer.pad.pad_config == cfg.pad_config()
    results = trainer.fit()
    assert results["partition"] == trainer.pad.partition_report.to_dict()
    assert results["partition"]["dynamic_ratio"] == pytest.approx(0.4, abs=0.01)


def test_none_stands_for_the_default_only_where_the_default_is_none():
    with pytest.raises(ConfigError, match="partition_iterations needs a value"):
        PadConfig(method="pad", partition_iterations=None)
    assert PadConfig(method="pad", kappa=None).value("kappa") == DEFAULT_KAPPA["conv"]


def test_options_that_depend_on_each_other_are_checked_together():
    cfg = TrainConfig().replace(conv="pad", partition_at="steps", partition_after=10)
    assert cfg.pad_config().value("partition_after") == 10
    local = TrainConfig().replace(
        conv="pad", partition_align=4, partition_scope="local", granularity="filter"
    )
    assert local.pad_config().partition_align == 4
    assert FinetuneConfig().replace(method="pad-moe", num_experts=1, top_k=1).pad_config().top_k == 1
    with pytest.raises(ConfigError, match="top_k 3 is larger than num_experts 2"):
        FinetuneConfig().replace(method="moe", num_experts=2, top_k=3)


def test_a_run_saves_only_the_options_its_method_uses(tmp_path, capsys):
    base = TrainConfig().replace(kappa=0.5, temperature_anneal=2.0)  # a recipe for several methods
    assert base.replace(conv="dy").applicable().to_dict().get("kappa") is None
    assert base.replace(conv="dy").applicable().pad_options == {"temperature_anneal": 2.0}
    assert base.replace(conv="static").applicable().pad_options == {}


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--conv", "dy", "--partition-iterations", "3"],
            "partition_iterations does not apply to conv 'dy'",
        ),
        (
            ["train", "--conv", "dcd", "--temperature-anneal", "3"],
            "temperature_anneal does not apply to conv 'dcd'",
        ),
        (["partition", "--conv", "dy"], "padnet partition needs a PAD-Net form"),
        (
            ["train", "--temperature-epochs", "2", "--temperature-anneal", "3", "--conv", "dy"],
            "give temperature_anneal only",
        ),
        (
            ["compare", "--kappa", "0.5", "--convs", "static", "dy"],
            "kappa does not apply to any of static, dy",
        ),
        (["finetune", "--method", "moe", "--kappa", "0.5"], "kappa does not apply to method 'moe'"),
        (["moe", "--methods", "dense", "--variants", "pad"], "--variants is the old name of --methods"),
    ],
)
def test_options_that_would_be_ignored_are_refused_in_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padnet: error: ") and message in err[0], err


def test_compression_options_are_named_as_the_command_names_them():
    from padnet.training.nlp.compress import CompressConfig

    with pytest.raises(ConfigError, match=r"calibration_batches must be an integer in \[1, 10000\], got 0"):
        CompressConfig(calibration_batches=0).validate()
    with pytest.raises(ConfigError, match="--kappa does not apply to --method merge"):
        CompressConfig(method="merge", kappa=0.3).validate()
    assert CompressConfig(method="PadMoE").validate().method == "pad-moe"
    with pytest.raises(ConfigError, match="'foo' is not a PadConfig option"):
        PadConfig(method="pad").value("foo")
