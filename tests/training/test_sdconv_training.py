"""SD-Conv training (paper 002 eq. 8–9, Algorithm 1) and its experiments: the sparsity reached, the analyses
behind the studies (aggregated-kernel statistics, magnitude pruning, input noise, fine-tuning) and the
``padnet sdconv`` command."""

from __future__ import annotations

import json

import pytest
import torch

from padnet import convert
from padnet.cli import main
from padnet.errors import ConfigError
from padnet.experiments.analysis import aggregated_kernel_stats, fine_tune, magnitude_prune, noise_accuracy
from padnet.experiments.analysis.transfer import resized
from padnet.experiments.bench.run import _sparsify
from padnet.experiments.studies.sdconv import run_studies
from padnet.layers.sdconv import budget_loss, sparse_layers, sparsity_report
from padnet.models import create_model
from padnet.training.config import TrainConfig
from padnet.training.data import ImageData, make_loader
from padnet.training.data.images import channel_stats
from padnet.training.engine import Trainer
from padnet.training.engine.trainer import evaluate

torch.set_num_threads(1)


def _data(n=256, size=8, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    mean, std = channel_stats(images)
    return ImageData(images, labels, classes, mean, std)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.3, 0.7])
def test_training_reaches_the_target_sparsity_within_one_point(tmp_path, target):
    data = _data()
    cfg = TrainConfig(
        model="resnet10", width=0.125, conv="sdconv", epochs=30, batch_size=32, progress=False, augment=False
    ).replace(sparsity=target, pruning_iterations=1)
    results = Trainer(cfg, tmp_path, data=(data, data)).fit()
    assert abs(results["sparsity"]["sparsity"] - target) <= 0.01
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["density_budget"] == 1.0 and log[-1]["density_budget"] == pytest.approx(1 - target)
    assert log[-1]["sparsity"] == pytest.approx(results["sparsity"]["sparsity"], abs=1e-5)


def test_trainer_puts_thresholds_in_their_own_optimiser(tmp_path):
    data = _data(64)
    trainer = Trainer(
        TrainConfig(model="resnet10", width=0.125, conv="sdconv", batch_size=32, progress=False),
        tmp_path,
        data=(data, data),
    )
    thresholds = {id(layer.weight_mode.threshold) for _, layer in sparse_layers(trainer.model)}
    in_sgd = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    in_adam = {
        id(p)
        for group in trainer.hooks.method.optimizers()["thresholds"].param_groups
        for p in group["params"]
    }
    assert thresholds == in_adam and not thresholds & in_sgd
    assert len(in_sgd) + len(in_adam) == len(list(trainer.model.parameters()))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"sparsity": -0.1}, "sparsity must be in"),
        ({"pruning_iterations": -1}, "pruning_iterations"),
        ({"budget_weight": -1.0}, "budget_weight"),
        ({"threshold_lr": 0.0}, "threshold_lr"),
        ({"mask_strategy": "mixed"}, "mask strategy"),
    ],
)
def test_bad_sd_conv_configuration_is_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(conv="sdconv").replace(**bad).validate()


def _dy_model(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet10", conv="dy", num_classes=4, in_chans=1, width=0.125, stem="small").eval()


def test_aggregated_kernel_stats_match_the_kernels_built_sample_by_sample():
    model = _dy_model()
    x = torch.randn(6, 1, 8, 8)
    stats = aggregated_kernel_stats(model, [(x[:4], None), (x[4:], None)])
    coeffs = {}
    hooks = [
        layer.attention.register_forward_hook(lambda m, a, out, n=name: coeffs.__setitem__(n, out))
        for name, layer in model.named_modules()
        if hasattr(layer, "attention")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert [s["name"] for s in stats] == list(coeffs)
    for entry in stats:
        layer = model.get_submodule(entry["name"])
        kernels = torch.einsum(
            "bk,k...->b...", coeffs[entry["name"]].double(), layer.weight.double()
        )  # (B, ...)
        assert entry["samples"] == 6
        assert entry["mean"] == pytest.approx(float(kernels.detach().mean()), rel=1e-6, abs=1e-12)
        assert entry["variance"] == pytest.approx(float(kernels.detach().var(unbiased=False)), rel=1e-6)


def test_aggregated_kernel_stats_need_dynamic_layers():
    static = create_model("resnet10", conv="static", num_classes=4, in_chans=1, width=0.125, stem="small")
    with pytest.raises(ConfigError, match="no dynamic convolutions"):
        aggregated_kernel_stats(static, [(torch.randn(2, 1, 8, 8), None)])


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_magnitude_prune_removes_the_smallest_weights_over_all_layers(sparsity):
    model = _dy_model()
    pruned = magnitude_prune(model, sparsity).eval()
    report = sparsity_report(pruned)
    assert report["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    cut = max(float(layer.weight_mode.threshold) for _, layer in sparse_layers(pruned))
    assert all(
        float(layer.weight_mode.threshold) == cut for _, layer in sparse_layers(pruned)
    )  # one global cut
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():  # the pruned model is the DY-Conv model with its small weights zeroed
        for name, layer in sparse_layers(pruned):
            dense = model.get_submodule(name)
            assert torch.equal(layer.weight_mode.hard_mask(layer.weight), dense.weight.abs() > cut)
        manual = magnitude_prune(model, 0.0).eval()
        for name, layer in sparse_layers(manual):
            layer.weight.mul_(model.get_submodule(name).weight.abs() > cut)
        torch.testing.assert_close(pruned(x), manual(x))
    assert all(
        not hasattr(m, "weight_mode") or not hasattr(m.weight_mode, "threshold") for m in model.modules()
    )


def test_magnitude_prune_refuses_what_it_cannot_prune():
    with pytest.raises(ConfigError, match="sparsity must be in"):
        magnitude_prune(_dy_model(), 1.0)
    pad = create_model("resnet10", conv="pad", num_classes=4, in_chans=1, width=0.125, stem="small")
    with pytest.raises(ConfigError, match="takes a DY-Conv model"):
        magnitude_prune(pad, 0.5)


def test_noise_accuracy_is_clean_accuracy_at_zero_and_repeatable():
    data = _data(64)
    model = _dy_model()
    loader = make_loader(data, 32, train=False)
    acc = noise_accuracy(model, loader, [0.0, 0.5], data.std, seed=3)
    assert acc[0.0] == evaluate(model, loader)
    assert acc == noise_accuracy(model, loader, [0.0, 0.5], data.std, seed=3)
    probe = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))  # labelled by its clean output
    with torch.no_grad():
        labelled = [(x, probe(x).argmax(1)) for x, _ in loader]
        noisy = noise_accuracy(probe, labelled, [0.0, 2.0], data.std, seed=3)
    assert noisy[0.0] == 100.0 and noisy[2.0] < 100.0


def test_linear_fine_tuning_trains_only_the_new_classifier():
    source, target = _dy_model(), _data(64, classes=3, seed=1)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    tuned, top1 = fine_tune(source, target, target, "linear", epochs=2, lr=0.1)
    assert 0.0 <= top1 <= 100.0 and tuned.get_classifier().out_features == 3
    for key, value in tuned.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, before[key]), key  # frozen weights and BatchNorm statistics
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())  # the source is untouched
    full, _ = fine_tune(source, target, target, "full", epochs=1, lr=0.1)
    assert not torch.equal(full.state_dict()["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    with pytest.raises(ConfigError, match="fine-tuning mode"):
        fine_tune(source, target, target, "partial")


def test_resized_keeps_labels_and_statistics():
    data = _data(8, size=8)
    big = resized(data, (16, 12))
    assert big.images.shape == (8, 1, 16, 12) and big.images.dtype == torch.uint8
    assert torch.equal(big.labels, data.labels) and big.mean == data.mean
    assert resized(data, (8, 8)) is data


@pytest.mark.slow
def test_every_study_writes_markdown_json_and_a_plot(tmp_path):
    base = TrainConfig(
        dataset="digits",
        model="resnet10",
        width=0.125,
        epochs=1,
        batch_size=32,
        train_subset=96,
        progress=False,
        augment=False,
    )
    summaries = run_studies(tmp_path, base, seeds=(0, 1), log=lambda m: None, transfer_epochs=1)
    for study in ("table", "sweep", "strategy", "noise", "transfer", "preliminary"):
        folder = tmp_path / study
        assert (folder / "results.md").read_text().startswith("# ")
        assert (folder / "results.png").read_bytes()[:4] == b"\x89PNG"
        assert json.loads((folder / "results.json").read_text())["records"] == json.loads(
            json.dumps(summaries[study]["records"])
        )
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())  # shared: each variant trained once per seed
    assert len(runs) == 2 * 8 and "sdconv-s50-seed1" in runs and "sdconv-same-s50-seed0" in runs
    table = json.loads((tmp_path / "table" / "results.json").read_text())["records"]
    assert [r["model"] for r in table] == ["static", "dy", "sdconv-s50"]
    assert table[2]["params_mean"] < table[1]["params"]


def test_sdconv_command_refuses_an_unknown_study(capsys):
    assert main(["sdconv", "tables", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown study 'tables'" in err


def test_convert_makes_any_model_sd_conv_and_training_prunes_it():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    )
    model = convert(net, "sdconv")
    assert [type(m).__name__ for m in model][:3] == [
        "Conv2d",
        "ReLU",
        "SparseDynamicConv2d",
    ]  # all but the first

    opt = torch.optim.Adam([layer.weight_mode.threshold for _, layer in sparse_layers(model)], lr=0.01)
    for _ in range(30):  # the budget alone raises τ until half the weights are pruned
        opt.zero_grad()
        budget_loss(model, 0.5).backward()
        opt.step()
    assert sparsity_report(model)["sparsity"] >= 0.5


def test_bench_sparsify_sets_each_layer_to_the_sparsity():
    for strategy in ("different", "same"):
        torch.manual_seed(0)
        model = create_model(
            "resnet10", conv="sdconv", num_classes=4, width=0.125, stem="small", mask_strategy=strategy
        )
        _sparsify(model, 0.5)
        for layer in sparsity_report(model)["layers"]:
            assert layer["layer"] == pytest.approx(0.5, abs=0.02)
            if strategy == "same":
                assert layer["kernel"] == pytest.approx(layer["layer"])


def test_shipped_sd_conv_config_is_the_studies_quick_recipe():
    from pathlib import Path

    from padnet.experiments import compare
    from padnet.training.config import config_from_dict, load_yaml

    path = Path(__file__).resolve().parents[2] / "configs" / "fashion-mnist-sdconv.yaml"
    shipped = config_from_dict(load_yaml(path)).validate()
    quick = config_from_dict(compare.QUICK).replace(conv="sdconv")
    assert shipped.effective() == quick.effective()
