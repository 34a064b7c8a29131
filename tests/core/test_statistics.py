"""BatchNorm statistics after the temperature anneal and mode partition (issue 26's one-epoch collapse)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import padnet
from padnet.adapter.methods import PadTraining
from padnet.adapter.statistics import catch_up_steps, recalibrate_batchnorm
from padnet.errors import ConfigError, DataError
from padnet.layers.attention import TemperatureRouting


def _digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(d.target)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1400, 64)]  # 22 batches, the last of 56
    return batches, x[1400:], y[1400:]


def _cnn():
    layers = []
    for cin, cout in ((1, 32), (32, 64), (64, 64)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def _step(pad, optimizer, batch):
    """One optimiser step of a plain loop with padnet's four calls."""
    x, y = batch
    pad.before_step()
    loss = F.cross_entropy(pad(x), y) + pad.extra_loss()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    pad.after_step()


def _train_one_epoch(method, batches, **start):
    """The issue's recipe: a 3-conv BatchNorm CNN, one epoch of digits (22 steps, batch 64), SGD 0.05
    momentum 0.9, the temperature annealed 30 → 1 over that epoch."""
    torch.manual_seed(0)
    options = {"kappa": 0.3, "partition_batches": 4, "partition_iterations": 2} if method == "pad" else {}
    pad = padnet.get_pad_model(_cnn(), padnet.PadConfig(method=method, init_from_pretrained=False, **options))
    pad.start_training(steps_per_epoch=len(batches), epochs=1, **start)
    optimizer = torch.optim.SGD(pad.optimizer_parameters(), lr=0.05, momentum=0.9)
    routings = [m for m in pad.modules() if isinstance(m, TemperatureRouting)]
    for batch in batches:
        _step(pad, optimizer, batch)
    assert all(float(r.temperature) == 1.0 for r in routings)  # the last step trained at the end temperature
    return pad


@torch.no_grad()
def _accuracy(model, x, y):
    return (model(x).argmax(1) == y).float().mean().item()


def test_one_epoch_pad_net_evaluates_like_train_mode():
    """Without re-estimation this model evaluated at 14 % (one class for every input) against 78 % in train
    mode: the running statistics followed a temperature that fell from 30 to 2.3 in 22 steps."""
    batches, x, y = _digits()
    pad = _train_one_epoch("pad", batches, partition_data=batches[:4])
    train_mode = _accuracy(pad, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-estimated after the anneal's last step: eval() does not warn
        pad.eval()
    evaluated = _accuracy(pad, x, y)
    assert train_mode > 0.6
    assert evaluated > train_mode - 0.05
    assert len(set(pad(x).argmax(1).tolist())) == 10


def test_without_batches_eval_warns_and_one_call_repairs():
    batches, x, y = _digits()
    pad = _train_one_epoch("dy", batches)  # DY-Conv: no partition data, so nothing to re-estimate on
    with pytest.warns(UserWarning, match=r"pad.recalibrate_batchnorm\(batches\)"):
        pad.eval()
    stale = _accuracy(pad, x, y)
    pad.train()
    assert pad.recalibrate_batchnorm(batches[:10]) == 3
    pad.eval()
    repaired = _accuracy(pad, x, y)
    assert repaired > 0.5 and repaired > stale + 0.2


def test_statistics_catch_up_after_enough_steps():
    batches, _, _ = _digits()
    pad = _train_one_epoch("dy", batches)
    assert pad.training_state.stale_statistics()
    pad.training_state.step += catch_up_steps(pad)  # 29 more training steps at BatchNorm's momentum 0.1
    assert not pad.training_state.stale_statistics()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pad.eval()


def test_recalibrate_batchnorm_matches_the_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3)).eval()
    x = torch.randn(16, 3, 6, 6) * 3 + 1
    assert recalibrate_batchnorm(model, [(x[:8], None), (x[8:], None)]) == 1
    assert not model.training and model[1].momentum == 0.3  # mode and momentum kept
    features = model[0](x)
    torch.testing.assert_close(model[1].running_mean, features.mean(dim=(0, 2, 3)))
    assert recalibrate_batchnorm(nn.Linear(2, 2), [torch.randn(1, 2)]) == 0


def test_recalibrate_batchnorm_takes_keyword_batches():
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(3)

        def forward(self, features):
            return self.norm(features)

    model = Keywords()
    x = torch.randn(32, 3) + 5
    assert recalibrate_batchnorm(model, [{"features": x}]) == 1
    torch.testing.assert_close(model.norm.running_mean, x.mean(0))


def test_catch_up_steps_follows_the_momentum():
    assert catch_up_steps(nn.Linear(2, 2)) == 0
    assert catch_up_steps(nn.BatchNorm2d(2)) == 29
    assert catch_up_steps(nn.BatchNorm2d(2, momentum=0.5)) == 5
    assert catch_up_steps(nn.BatchNorm2d(2, momentum=None)) == float("inf")


def test_recalibrate_without_data_is_refused():
    pad = padnet.get_pad_model(_cnn(), padnet.PadConfig(method="dy", init_from_pretrained=False))
    with pytest.raises(ConfigError, match="needs training batches"):
        pad.recalibrate_batchnorm()


def test_masks_changed_by_hand_re_estimate_the_statistics_after_that_step():
    batches, _, _ = _digits()
    pad = padnet.get_pad_model(
        _cnn(),
        padnet.PadConfig(
            method="pad",
            kappa=0.3,
            init_from_pretrained=False,
            partition_at="manual",
            temperature_anneal=0,
            temperature_unit="steps",
        ),
    )
    pad.start_training(total_steps=10, statistics_data=batches[:2])
    optimizer = torch.optim.SGD(pad.optimizer_parameters(), lr=0.05)
    norm = pad.base_model[1]
    for batch in batches[2:5]:
        _step(pad, optimizer, batch)
    assert int(norm.num_batches_tracked) == 3  # no temperature anneal, no partition: nothing re-estimated
    report = pad.partition(batches[5:7], partition_iterations=1)
    assert pad.partition_report is report and report.dynamic == round(0.3 * report.total)
    _step(pad, optimizer, batches[7])
    assert int(norm.num_batches_tracked) == 2  # reset and re-estimated on the 2 statistics batches
    pad.set_masks({name: torch.ones_like(mask) for name, mask in pad.masks().items()})
    _step(pad, optimizer, batches[8])
    assert int(norm.num_batches_tracked) == 2


def _hooks(model, config, **kwargs):
    """PadTraining with counting partition and re-estimation functions; returns (hooks, calls)."""
    calls = []
    hooks = PadTraining(
        model,
        config,
        partition=lambda: calls.append(("partition", hooks.step)),
        recalibrate=lambda: calls.append(("statistics", hooks.step)) or 1,
        **kwargs,
    )
    return hooks, calls


def _run(hooks, steps):
    for _ in range(steps):
        hooks.before_step()
        hooks.after_step()


def test_statistics_are_re_estimated_once_when_the_partition_follows_the_anneal():
    config = padnet.PadConfig(
        method="pad",
        kappa=0.3,
        temperature_anneal=4,
        temperature_unit="steps",
        partition_at="steps",
        partition_after=4,
    )
    hooks, calls = _hooks(padnet.convert(_cnn(), "pad"), config, total_steps=10)
    _run(hooks, 10)
    assert calls == [("partition", 4), ("statistics", 4)]  # not also after the anneal's last step, 3


def test_a_run_that_ends_inside_the_anneal_re_estimates_at_its_last_step():
    config = padnet.PadConfig(method="dy", temperature_anneal=10, temperature_unit="steps")
    hooks, calls = _hooks(padnet.convert(_cnn(), "dy"), config, total_steps=4)
    _run(hooks, 4)
    assert calls == [("statistics", 3)]


def test_dcd_has_no_temperature_to_anneal():
    with pytest.raises(ConfigError, match="option temperature_anneal does not apply to method 'dcd'"):
        padnet.PadConfig(method="dcd", temperature_anneal=4, temperature_unit="steps")
    config = padnet.PadConfig(method="dcd")  # the default anneal of one epoch: nothing to anneal
    hooks, calls = _hooks(padnet.convert(_cnn(), "dcd"), config, total_steps=8, steps_per_epoch=4)
    _run(hooks, 8)
    assert calls == [] and hooks.log() == {}


def test_a_generator_of_partition_batches_serves_the_partition_and_the_statistics():
    """The default pretrained timing: the anneal ends at step 2, the partition runs at step 3 (epoch 2)."""
    batches, _, _ = _digits()
    pad = padnet.get_pad_model(
        _cnn(), padnet.PadConfig(method="pad", kappa=0.3, partition_batches=2, partition_iterations=1)
    )
    pad.start_training(steps_per_epoch=3, epochs=2, partition_data=(batch for batch in batches[:2]))
    optimizer = torch.optim.SGD(pad.optimizer_parameters(), lr=0.01)
    for batch in batches[2:8]:
        _step(pad, optimizer, batch)
    assert pad.partition_report.dynamic == round(0.3 * pad.partition_report.total)
    assert int(pad.base_model[1].num_batches_tracked) == 2 + 2  # re-estimated on 2 batches, then 2 steps


def test_masks_changed_after_the_last_step_warn_on_eval():
    batches, _, _ = _digits()
    pad = padnet.get_pad_model(
        _cnn(),
        padnet.PadConfig(
            method="pad",
            kappa=0.3,
            init_from_pretrained=False,
            partition_at="manual",
            temperature_anneal=0,
            temperature_unit="steps",
        ),
    )
    pad.start_training(total_steps=1)
    _step(pad, torch.optim.SGD(pad.optimizer_parameters(), lr=0.01), batches[0])
    pad.partition(batches[1:3], partition_iterations=1)
    with pytest.warns(UserWarning, match="recalibrate_batchnorm"):
        pad.eval()


def test_a_batch_the_model_cannot_take_leaves_the_statistics_as_they_were():
    model = _cnn().eval()
    norm = model[1]
    with torch.no_grad():
        norm.running_mean.fill_(0.5)
    with pytest.raises(DataError, match="does not fit the model"):
        recalibrate_batchnorm(model, [torch.randn(4, 3, 8, 8)])  # 3 channels, the model takes 1
    assert not model.training and norm.momentum == 0.1 and torch.all(norm.running_mean == 0.5)
    with pytest.raises(DataError, match="no batches"):
        recalibrate_batchnorm(model, [])
