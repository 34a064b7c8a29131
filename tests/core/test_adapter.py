"""PadConfig, get_pad_model / PadModel, the method hooks in a plain loop, and pretrained conversion."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import padnet
from padnet.errors import CheckpointError, ConfigError
from padnet.layers.surgery import PadInput
from padnet.training.config import TrainConfig
from padnet.training.data.images import ImageData, channel_stats
from padnet.training.data.loader import make_loader
from padnet.training.engine.schedule import build_scheduler
from padnet.training.engine.trainer import PARTITION_SEED, STATISTICS_SEED, Trainer, build_model, param_groups


def _static(seed=0, width=0.125):
    torch.manual_seed(seed)
    return padnet.create_model("resnet10", num_classes=4, in_chans=1, stem="small", width=width)


def _batches(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(n)
    ]


def _warm_up(pad, batches, steps=3):
    opt = torch.optim.SGD(pad.optimizer_parameters(), lr=0.05, momentum=0.9)
    pad.train()
    for x, y in batches[:steps]:
        loss = F.cross_entropy(pad(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------------------------- PadConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "pad", "sparsity": 0.5}, "option sparsity does not apply to method 'pad'"),
        ({"method": "dy", "kappa": 0.3}, "option kappa does not apply to method 'dy'"),
        ({"method": "moe", "num_kernels": 4}, "option num_kernels does not apply to method 'moe'"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"method": "pad", "partition_at": "steps"}, "partition_at 'steps' needs partition_after"),
        ({"method": "pad", "kappa": 1.5}, r"dynamic ratio kappa must be in \(0, 1\], got 1.5"),
        ({"method": "pad-moe", "top_k": 9}, "top_k 9 is larger than num_experts 8"),
        ({"method": "pad", "granularity": "neuron"}, "unknown mask granularity 'neuron'"),
        ({"method": "pad", "target_modules": []}, "target_modules must be 'auto', 'all' or a non-empty list"),
    ],
)
def test_pad_config_refuses_bad_values_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        padnet.PadConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_pad_config_round_trips_through_json_and_fills_method_defaults():
    cfg = padnet.PadConfig(
        method="PAD-Net", kappa=0.2, granularity="filter", partition_at="epochs", partition_after=2
    )
    assert cfg.method == "pad"
    back = padnet.PadConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    moe = padnet.PadConfig(method="pad-moe")
    assert (
        moe.value("kappa"),
        moe.value("granularity"),
        moe.value("partition_at"),
        moe.value("partition_after"),
    ) == (0.5, "element", "epochs", 1)
    assert (
        padnet.PadConfig(method="pad").value("partition_at") == "epochs"
    )  # converted weights: a warm-up first
    assert padnet.PadConfig(method="pad").value("partition_after") == 1
    assert padnet.PadConfig(method="pad", init_from_pretrained=False).value("partition_at") == "start"
    custom = padnet.PadConfig(method="pad", partition=lambda name, factors, mask: mask)
    assert custom.to_dict()["partition"] == "custom"
    with pytest.raises(ConfigError, match="unknown PAD configuration key"):
        padnet.PadConfig.from_dict({"method": "pad", "kapa": 0.3})


def test_train_config_maps_to_the_same_vocabulary():
    cfg = TrainConfig().replace(conv="sdconv", sparsity=0.7).pad_config()
    assert (cfg.method, cfg.sparsity, cfg.kappa) == ("sdconv", 0.7, None)
    pad = TrainConfig().replace(conv="pad", kappa=0.2, granularity="kernel").pad_config()
    assert (pad.kappa, pad.granularity, pad.sparsity) == (0.2, "kernel", None)
    assert TrainConfig(conv="static").pad_config() is None


# ---------------------------------------------------------------------------------------------- conversion


def test_converted_pretrained_model_computes_what_it_did_and_keeps_its_predictions():
    base = _static()
    reference = copy.deepcopy(base).eval()
    pad = padnet.get_pad_model(base, padnet.PadConfig(method="pad")).eval()
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(pad(x), reference(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(pad(x).argmax(1), reference(x).argmax(1))
    assert len(pad.converted) == 11 and "conv1" not in pad.converted  # every conv but the stem


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_every_padding_mode_converts_and_computes_the_same(mode):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode=mode),
        nn.Conv2d(6, 5, 3, padding=2, dilation=2, padding_mode=mode),
    )
    reference = copy.deepcopy(model)
    padnet.convert(model, "dy")
    x = torch.randn(2, 1, 9, 9)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    assert isinstance(model[1], nn.Sequential) and isinstance(model[1][0], PadInput)


def test_conversion_is_all_or_nothing_and_names_the_layer():
    class Standardised(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / self.weight.std()
            return self._conv_forward(x, w, self.bias)

    class Plain(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(1, 4, 3), Plain(4, 4, 3), Standardised(4, 4, 3))
    before = [type(m) for m in model]
    with pytest.raises(
        ConfigError,
        match=r"cannot convert 2: Standardised overrides nn.Conv2d's forward; "
        r"leave it static with exclude_modules=\['2'\]",
    ):
        padnet.convert(model, "pad")
    assert [type(m) for m in model] == before  # nothing replaced
    padnet.convert(model, "pad", exclude_modules=["2"])
    assert isinstance(model[1], padnet.PADConv2d) and type(model[2]) is Standardised  # the subclass converted


def test_get_pad_model_targets_and_excludes_by_name():
    pad = padnet.get_pad_model(
        _static(), method="dy", target_modules=["layer1.*"], exclude_modules=["*.conv2"]
    )
    assert pad.converted == ["layer1.0.conv1"]
    with pytest.raises(ConfigError, match="has no nn.Conv2d that target_modules selects"):
        padnet.get_pad_model(_static(), method="dy", target_modules=["head.*"])


def test_a_model_built_with_padnet_layers_is_wrapped_as_it_is():
    model = padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, stem="small", width=0.125)
    pad = padnet.get_pad_model(model, method="pad")
    assert len(pad.converted) == 11
    with pytest.raises(ConfigError, match="is a PADConv2d, not a layer of method 'dy'"):
        padnet.get_pad_model(model, method="dy")


# ---------------------------------------------------------------------------------------------- partition signal


def test_partition_right_after_conversion_is_refused_and_works_after_a_warm_up():
    batches = _batches(8)
    pad = padnet.get_pad_model(_static(), method="pad")
    with pytest.raises(
        ConfigError,
        match=r"scores would carry no signal: the dynamic factors equal the static parameters \(relative separation 0.0e\+00",
    ) as info:
        pad.partition(batches[:2])
    assert "partition_at='steps'" in str(info.value)
    assert torch.all(next(iter(pad.masks().values())))  # the failed partition left the masks fully dynamic
    _warm_up(pad, batches)
    report = pad.partition(batches[:2])
    assert report.dynamic == round(0.3 * report.total)
    forced = padnet.get_pad_model(_static(), method="pad")
    assert forced.partition(batches[:2], check_scores=False).dynamic == report.dynamic  # opt-out
    fresh = padnet.get_pad_model(_static(), method="pad", init_from_pretrained=False)
    fresh.partition(batches[:2])  # independent kernels: signal from the start


def test_a_user_score_function_partitions_like_the_built_in_magnitude_scores():
    def magnitude(name, factors, mask):
        per_element = factors.abs().mean(0, keepdim=True)
        return per_element.expand_as(mask) if per_element.shape != mask.shape else per_element

    a = padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, stem="small", width=0.125)
    b = copy.deepcopy(a)
    padnet.partition(a, 0.3, "magnitude")
    pad = padnet.get_pad_model(b, method="pad", partition=magnitude)
    assert pad.partition().method == "custom"
    for (na, ma), (nb, mb) in zip(padnet.get_pad_model(a, method="pad").masks().items(), pad.masks().items()):
        assert na == nb and torch.equal(ma, mb)
    with pytest.raises(ConfigError, match="returned .* expected a tensor of the mask's shape"):
        pad.partition(partition=lambda name, factors, mask: torch.ones(3))


# ---------------------------------------------------------------------------------------------- PadModel


def test_save_and_load_round_trip_in_training_and_deployed_form(tmp_path):
    batches = _batches(6)
    base = _static()
    pristine = copy.deepcopy(base)
    pad = padnet.get_pad_model(base, method="pad", partition_at="steps", partition_after=2)
    opt = torch.optim.SGD(pad.optimizer_parameters(), lr=0.05)
    pad.start_training(steps_per_epoch=2, epochs=2, partition_data=batches[:2])
    pad.train()
    for x, y in batches[:4]:
        pad.before_step()
        loss = F.cross_entropy(pad(x), y) + pad.extra_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pad.after_step()
    assert pad.training_state.report is not None and pad.training_state.step == 4
    pad.eval()
    x = batches[5][0]
    pad.save_pretrained(tmp_path / "train")
    pad.save_pretrained(tmp_path / "deployed", form="deployed")
    back = padnet.PadModel.from_pretrained(tmp_path / "train", copy.deepcopy(pristine)).eval()
    assert torch.equal(back(x), pad(x))
    for name, mask in pad.masks().items():
        assert torch.equal(back.masks()[name], mask)
    deployed = padnet.load_pretrained(tmp_path / "deployed", copy.deepcopy(pristine))
    torch.testing.assert_close(deployed(x), pad(x), atol=1e-5, rtol=1e-5)
    with pytest.warns(
        FutureWarning, match="PadModel.from_pretrained on a folder without .* use padnet.load_pretrained"
    ):
        assert not isinstance(
            padnet.PadModel.from_pretrained(tmp_path / "deployed", copy.deepcopy(pristine)), padnet.PadModel
        )
    torch.testing.assert_close(pad.merge_and_unload()(x), pad(x), atol=1e-5, rtol=1e-5)
    assert (
        json.loads((tmp_path / "train" / "padnet_config.json").read_text())["config"]["partition_after"] == 2
    )


def test_from_pretrained_refuses_another_base_model_and_damaged_folders(tmp_path):
    base = _static()
    pristine = copy.deepcopy(base)
    pad = padnet.get_pad_model(base, method="dy")
    pad.save_pretrained(tmp_path)  # nothing trained: the stem and head are recorded by hash only
    with pytest.raises(CheckpointError, match="base_model differs from the model that was converted"):
        padnet.PadModel.from_pretrained(tmp_path, _static(seed=1))
    padnet.PadModel.from_pretrained(tmp_path, copy.deepcopy(pristine))
    (tmp_path / "padnet_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not readable JSON"):
        padnet.PadModel.from_pretrained(tmp_path, copy.deepcopy(pristine))
    (tmp_path / "padnet_config.json").write_text(json.dumps({"format": "padnet-adapter-1", "form": "x"}))
    with pytest.raises(CheckpointError, match="is not a padnet model record"):
        padnet.PadModel.from_pretrained(tmp_path, copy.deepcopy(pristine))
    with pytest.raises(CheckpointError, match="is not a padnet model folder"):
        padnet.PadModel.from_pretrained(tmp_path / "missing", copy.deepcopy(pristine))


def test_unload_is_exact_where_every_element_is_static():
    pad = padnet.get_pad_model(_static(), method="pad", init_from_pretrained=False).eval()
    pad.set_masks({name: torch.zeros_like(mask) for name, mask in pad.masks().items()})
    pad.set_scale_factors(lambda_s=0.8)
    plain = pad.unload()
    assert not any(isinstance(m, padnet.layers.DynamicConvBase) for m in plain.modules())
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(plain(x), pad(x), atol=1e-5, rtol=1e-5)


def test_scale_factors_and_masks_have_public_accessors():
    pad = padnet.get_pad_model(_static(), method="pad")
    assert pad.set_scale_factors(lambda_d=1.5) == 11
    assert all(abs(s - 0.5) < 1e-6 and abs(d - 1.5) < 1e-6 for s, d in pad.scale_factors().values())
    with pytest.raises(ConfigError, match="λs \\+ λd = 2"):
        pad.set_scale_factors(lambda_s=2.5)
    name, mask = next(iter(pad.masks().items()))
    with pytest.raises(ConfigError, match="has shape"):
        pad.set_masks({name: torch.zeros(2)})
    with pytest.raises(ConfigError, match="no mask named"):
        pad.set_masks({"nope": mask})
    summary = pad.summary((1, 8, 8))
    assert "compact parameters" in summary and "dynamic ratio, PADConv2d  1.0000" in summary


def test_temperature_anneals_per_step_through_the_hooks():
    pad = padnet.get_pad_model(_static(), method="dy", temperature_anneal=4, temperature_unit="steps")
    pad.start_training(total_steps=10)
    seen = []
    for _ in range(6):
        pad.before_step()
        seen.append(
            float(
                next(m for m in pad.modules() if isinstance(m, padnet.layers.TemperatureRouting)).temperature
            )
        )
        pad.after_step()
    assert seen == pytest.approx(
        [30.0, 30 - 29 / 3, 30 - 2 * 29 / 3, 1.0, 1.0, 1.0]
    )  # 4 steps: the last at T = 1
    with pytest.raises(ConfigError, match="given in epochs: pass steps_per_epoch"):
        padnet.get_pad_model(_static(), method="dy").start_training(total_steps=10)


def _image_data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 4, (n,), generator=gen)
    mean, std = channel_stats(images)
    return ImageData(images, labels, 4, mean, std)


@pytest.mark.parametrize("conv", ["pad", "sdconv"])
def test_a_plain_loop_reaches_the_weights_of_padnet_train(tmp_path, conv):
    data = _image_data()
    cfg = TrainConfig(
        model="resnet10",
        width=0.125,
        conv=conv,
        epochs=2,
        batch_size=16,
        augment=False,
        progress=False,
        lr=0.05,
    ).replace(partition_batches=2, partition_iterations=2)
    trainer = Trainer(cfg, tmp_path / "run", data=(data, data))
    trainer.fit()

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, 4, 1)
    pad = padnet.get_pad_model(model, cfg.pad_config())
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.weight_decay, exclude=[])
        if conv == "pad"
        else param_groups(
            model,
            cfg.weight_decay,
            exclude=[p for p in model.parameters() if p not in set(pad.optimizer_parameters())],
        ),
        lr=cfg.lr,
        momentum=cfg.momentum,
    )
    per_epoch = len(make_loader(data, 16, train=True, seed=0, epoch=0))
    scheduler = build_scheduler(optimizer, 2 * per_epoch, round(cfg.warmup_epochs * per_epoch))
    side = {
        name: make_loader(data, 16, train=True, seed=cfg.seed + offset, epoch=0, augment=False)
        for name, offset in (("partition_data", PARTITION_SEED), ("statistics_data", STATISTICS_SEED))
    }
    pad.start_training(steps_per_epoch=per_epoch, epochs=2, loss_fn=nn.CrossEntropyLoss(), **side)
    pad.train()
    for epoch in range(2):
        for x, y in make_loader(data, 16, train=True, seed=cfg.seed, epoch=epoch, augment=False):
            pad.before_step()
            loss = F.cross_entropy(pad(x), y) + pad.extra_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            pad.after_step()
    for (name, a), (_, b) in zip(trainer.model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------- Hugging Face


def _tiny_bert(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return transformers.BertForSequenceClassification(config)


def test_pad_moe_on_an_encoder_trains_partitions_after_an_epoch_and_round_trips(tmp_path):
    base = _tiny_bert()
    pristine = copy.deepcopy(base).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, 100, (4, 12), generator=gen),
            "labels": torch.randint(0, 2, (4,), generator=gen),
        }
        for _ in range(3)
    ]
    pad = padnet.get_pad_model(
        base, padnet.PadConfig(method="pad-moe", num_experts=4, partition_iterations=2)
    )
    pad.eval()
    assert torch.equal(pad(**batches[0]).logits, pristine(**batches[0]).logits)  # upcycling is exact
    optimizer = torch.optim.AdamW(pad.optimizer_parameters(), lr=1e-3)
    pad.start_training(steps_per_epoch=3, epochs=2, partition_data=batches[:2])
    pad.train()
    for step in range(6):
        pad.before_step()
        assert pad.training_state.partitioned == (step >= 3)  # at the start of epoch 2 (PAD-Net appendix A)
        batch = batches[step % 3]
        out = pad(**batch)
        aux = padnet.layers.moe.auxiliary_loss(pad.base_model)  # the MoE loss is in the output's loss
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, batch["labels"]) + aux)
        assert pad.extra_loss() == 0.0
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        pad.after_step()
    assert float(aux) > 0
    pad.eval()
    pad.save_pretrained(tmp_path / "t")
    pad.save_pretrained(tmp_path / "d", form="deployed")
    logits = pad(**batches[0]).logits
    assert torch.equal(
        padnet.PadModel.from_pretrained(tmp_path / "t", copy.deepcopy(pristine)).eval()(**batches[0]).logits,
        logits,
    )
    torch.testing.assert_close(
        padnet.load_pretrained(tmp_path / "d", copy.deepcopy(pristine))(**batches[0]).logits,
        logits,
        atol=1e-5,
        rtol=1e-5,
    )
    assert "dynamic ratio, MoEFeedForward  0.5000" in pad.summary()


def test_deploy_merges_moe_layers_too_and_needs_no_tracing_without_batchnorm():
    base = _tiny_bert()
    pad = padnet.get_pad_model(base, padnet.PadConfig(method="moe", num_experts=4)).eval()
    ids = torch.randint(0, 100, (2, 9))
    deployed = padnet.deploy(pad.base_model)  # a Hugging Face encoder: no BatchNorm2d, nothing traced
    assert not any(isinstance(m, padnet.layers.moe.MoEFeedForward) for m in deployed.modules())
    assert any(isinstance(m, padnet.layers.moe.DeployedMoE) for m in deployed.modules())
    torch.testing.assert_close(deployed(input_ids=ids).logits, pad(input_ids=ids).logits)


def test_training_hooks_refuse_imp_without_data_and_never_partition_twice():
    pad = padnet.get_pad_model(_static(), method="pad", init_from_pretrained=False)
    with pytest.raises(
        ConfigError, match=r"mode partition \(imp\) is due during training: pass partition_data"
    ):
        pad.start_training(steps_per_epoch=2, epochs=1)
    pad.start_training(steps_per_epoch=2, epochs=1, partition_data=_batches(2))
    pad.before_step()
    masks = pad.masks()
    resumed = pad.start_training(steps_per_epoch=2, epochs=1, partition_data=_batches(2, seed=5), step=1)
    assert resumed.partitioned  # a static element in the masks: partitioned before
    pad.before_step()
    assert all(torch.equal(masks[k], v) for k, v in pad.masks().items())
    random = padnet.get_pad_model(_static(), method="pad", partition="random", init_from_pretrained=False)
    random.start_training(steps_per_epoch=2, epochs=1)  # random scores need no data
    random.before_step()
    assert random.training_state.report.method == "random"


def test_a_saved_custom_score_function_must_be_given_again(tmp_path):
    base = _static()
    pristine = copy.deepcopy(base)
    pad = padnet.get_pad_model(
        base, method="pad", partition=lambda name, factors, mask: torch.rand(mask.shape)
    )
    pad.partition()
    pad.save_pretrained(tmp_path)
    back = padnet.PadModel.from_pretrained(tmp_path, copy.deepcopy(pristine))
    assert back.pad_config.partition == "custom"
    with pytest.raises(ConfigError, match="saved with a custom score function: pass it as partition="):
        back.partition()
    assert back.partition(partition=lambda name, factors, mask: torch.rand(mask.shape)).method == "custom"


def test_a_model_built_with_other_layer_options_is_refused():
    model = padnet.create_model(
        "resnet10", conv="pad", num_classes=4, in_chans=1, stem="small", width=0.125, granularity="kernel"
    )
    with pytest.raises(ConfigError, match="already has granularity 'kernel', the config asks for 'filter'"):
        padnet.get_pad_model(model, method="pad", granularity="filter")
    assert padnet.get_pad_model(model, method="pad", granularity="kernel").converted


def test_from_pretrained_checks_the_weights_file_form(tmp_path):
    base = _static()
    pristine = copy.deepcopy(base)
    pad = padnet.get_pad_model(base, method="dy")
    pad.save_pretrained(tmp_path / "a")
    pad.save_pretrained(tmp_path / "b", form="deployed")
    (tmp_path / "b" / "padnet_model.safetensors").replace(tmp_path / "a" / "padnet_model.safetensors")
    candidate = copy.deepcopy(pristine)
    with pytest.raises(CheckpointError, match="was not written with the training form"):
        padnet.PadModel.from_pretrained(tmp_path / "a", candidate)
    assert not any(
        isinstance(m, padnet.layers.DynamicConvBase) for m in candidate.modules()
    )  # left unconverted


def test_condconv_routes_with_a_plain_sigmoid_unless_a_temperature_is_given():
    model = padnet.create_model(
        "resnet10", conv="condconv", num_classes=4, in_chans=1, stem="small", width=0.125
    )
    routings = [m for m in model.modules() if isinstance(m, padnet.layers.TemperatureRouting)]
    assert routings and all(float(r.temperature) == 1.0 for r in routings)  # Yang et al. 2019: no temperature
    pad = padnet.get_pad_model(model, method="condconv")
    pad.start_training(steps_per_epoch=4, epochs=1)
    pad.before_step()
    assert pad.training_state.log()["temperature"] == 1.0  # nothing to anneal
    assert TrainConfig(conv="condconv").validate().pad_config().value("temperature_start") == 1.0
    hot = padnet.get_pad_model(_static(), method="condconv", temperature_start=30.0)
    assert (
        float(next(m for m in hot.modules() if isinstance(m, padnet.layers.TemperatureRouting)).temperature)
        == 30
    )


@pytest.mark.parametrize("form", ["training", "deployed"])
def test_a_full_folder_loads_without_the_base_model(tmp_path, form):
    pad = padnet.get_pad_model(_static(), method="pad", kappa=0.3, init_from_pretrained=False)
    pad.partition(_batches(2), partition="random")
    pad.eval()
    x = _batches(1)[0][0]
    pad.save_pretrained(tmp_path, form=form, full=True)
    record = json.loads((tmp_path / "padnet_config.json").read_text())
    assert record["base"] == {} and record["architecture"]["padnet"]["name"] == "resnet10"
    loaded = padnet.load_pretrained(tmp_path)  # rebuilt with create_model, then converted as saved
    assert isinstance(loaded, padnet.PadModel) == (form == "training")
    if form == "training":
        assert loaded.masks().keys() == pad.masks().keys()
        assert all(torch.equal(loaded.masks()[k], m) for k, m in pad.masks().items())
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), pad(x), rtol=0, atol=1e-5)


def test_full_needs_an_architecture_and_a_plain_static_model_round_trips(tmp_path):
    lazy = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ConfigError, match="3.weight is not initialised yet"):
        padnet.get_pad_model(lazy, method="dy")
    lazy(torch.zeros(1, 1, 8, 8))
    pad = padnet.get_pad_model(lazy, method="dy", target_modules="all")
    with pytest.raises(ConfigError, match="full=True needs a model padnet can rebuild"):
        pad.save_pretrained(tmp_path / "full", full=True)
    assert not (tmp_path / "full").exists()
    static = _static().eval()
    padnet.save_pretrained(static, tmp_path / "static")
    loaded = padnet.load_pretrained(tmp_path / "static")
    assert type(loaded) is type(static) and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), static.state_dict().values()))


def test_a_full_folder_with_non_finite_or_integer_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    padnet.save_pretrained(_static(), tmp_path)
    weights = tmp_path / "padnet_model.safetensors"
    tensors = load_file(str(weights))
    meta = {"padnet": json.dumps({"format": "padnet-adapter-1", "form": "training"})}
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    for bad, message in (
        (torch.full_like(tensors[key], float("nan")), "NaN or infinite"),
        (tensors[key].to(torch.int32), "not floating point"),
    ):
        save_file({**tensors, key: bad}, str(weights), metadata=meta)
        with pytest.raises(CheckpointError, match=message):
            padnet.load_pretrained(tmp_path)
