"""Tests of padnet.partition: IMP (PAD-Net eq. 5-9), one-shot/random/magnitude partition and SNIP scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import padnet.partitioning.imp as imp_mod
from padnet.errors import ConfigError
from padnet.layers import PADConv2d
from padnet.models import create_model
from padnet.partitioning import apply_partition, masked_tensors, partition, snip_scores

METHODS = ("imp", "mp", "random", "magnitude")


def _model(granularity="shared", seed=0, conv="pad"):
    torch.manual_seed(seed)
    options = {"granularity": granularity} if conv == "pad" else {}
    return create_model(
        "resnet10",
        conv=conv,
        num_classes=4,
        in_chans=3,
        width=0.125,
        stem="small",
        temperature=1.0,
        **options,
    )


def _batches(n=2, batch=6, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 4, (batch,), generator=gen))
        for _ in range(n)
    ]


def _masks(model):
    return [mode.mask.clone() for _, mode, _ in masked_tensors(model)]


def _run(model, kappa, method, scope="global", **kw):
    data = _batches() if method in ("imp", "mp") else None
    kw.setdefault("num_batches", 2)
    kw.setdefault("iterations", 3)
    return partition(model, kappa, method, data=data, scope=scope, **kw)


# ------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kappa", [0.3, 0.55])
@pytest.mark.parametrize("method", METHODS)
def test_global_scope_keeps_exactly_round_kappa_m(method, kappa):
    model = _model()
    report = _run(model, kappa, method, "global")
    masks = _masks(model)
    total = sum(m.numel() for m in masks)
    dynamic = sum(int(m.sum()) for m in masks)
    assert dynamic == round(kappa * total)
    assert report.dynamic == dynamic and report.total == total
    assert report.dynamic_ratio == pytest.approx(dynamic / total)
    assert all(torch.all((m == 0) | (m == 1)) for m in masks)
    # global selection: layers end up with different ratios
    ratios = {round(float(m.mean()), 3) for m in masks}
    assert len(ratios) > 1


@pytest.mark.parametrize("kappa", [0.3, 0.55])
@pytest.mark.parametrize("method", METHODS)
def test_local_scope_keeps_exactly_round_kappa_m_per_tensor(method, kappa):
    model = _model()
    report = _run(model, kappa, method, "local")
    tensors = masked_tensors(model)
    assert len(report.layers) == len(tensors)
    for entry, (name, mode, _) in zip(report.layers, tensors):
        on, n = int(mode.mask.sum()), mode.mask.numel()
        assert on == round(kappa * n), name
        assert entry == {"name": name, "dynamic": on, "elements": n, "dynamic_ratio": on / n}
        assert torch.all((mode.mask == 0) | (mode.mask == 1))


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("method", METHODS)
def test_report_layers_match_masks(method, scope):
    model = _model()
    report = _run(model, 0.4, method, scope)
    tensors = masked_tensors(model)
    assert [e["name"] for e in report.layers] == [n for n, _, _ in tensors]
    assert all(e["name"].endswith(".weight") for e in report.layers)
    for entry, (_, mode, _) in zip(report.layers, tensors):
        assert entry["dynamic"] == int(mode.mask.sum())
        assert entry["elements"] == mode.mask.numel()
    assert report.dynamic == sum(e["dynamic"] for e in report.layers)
    assert report.total == sum(e["elements"] for e in report.layers)
    assert report.method == method and report.scope == scope and report.kappa == 0.4
    d = report.to_dict()
    assert d["dynamic_ratio"] == report.dynamic_ratio


@pytest.mark.parametrize("method", METHODS)
def test_kappa_one_keeps_everything_dynamic(method):
    model = _model()
    report = _run(model, 1.0, method)
    assert report.dynamic_ratio == 1.0
    assert all(torch.all(m == 1) for m in _masks(model))


def test_partition_resets_masks_by_default():
    model = _model()
    _run(model, 0.2, "random", seed=1)
    report = _run(model, 0.6, "random", seed=1)
    total = report.total
    assert report.dynamic == round(0.6 * total)


def test_partition_with_bias_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(
        PADConv2d(3, 6, 3, padding=1, bias=True),
        nn.ReLU(),
        PADConv2d(6, 6, 3, padding=1, bias=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    names = [n for n, _, _ in masked_tensors(model)]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    report = partition(model, 0.5, "mp", data=_batches(), num_batches=2, scope="local")
    for entry in report.layers:
        assert entry["dynamic"] == round(0.5 * entry["elements"])


# ---------------------------------------------------------------------------------- IMP schedule


@pytest.mark.parametrize("iterations", [1, 3, 5])
def test_imp_schedule(iterations):
    model = _model()
    report = partition(model, 0.3, "imp", data=_batches(), num_batches=1, iterations=iterations)
    assert report.iterations == iterations
    assert report.schedule == pytest.approx([0.3 ** ((e + 1) / iterations) for e in range(iterations)])
    assert report.schedule[-1] == pytest.approx(0.3)
    mp = partition(_model(), 0.3, "mp", data=_batches(), num_batches=1, iterations=iterations)
    assert mp.iterations == 1 and mp.schedule == pytest.approx([0.3])


@pytest.mark.parametrize("scope", ["global", "local"])
def test_imp_static_elements_stay_static(monkeypatch, scope):
    seen = []
    original = imp_mod.apply_partition

    def observed(tensors, scores, fraction, scope_, align=1):
        original(tensors, scores, fraction, scope_, align)
        seen.append((fraction, [mode.mask.clone() for _, mode, _ in tensors]))

    monkeypatch.setattr(imp_mod, "apply_partition", observed)
    model = _model()
    report = partition(model, 0.2, "imp", data=_batches(3), num_batches=2, iterations=4, scope=scope)
    assert [f for f, _ in seen] == pytest.approx(report.schedule)
    assert len(seen) == 4
    previous = None
    for fraction, masks in seen:
        total = sum(m.numel() for m in masks)
        assert all(torch.all((m == 0) | (m == 1)) for m in masks)
        if scope == "global":
            assert sum(int(m.sum()) for m in masks) == round(fraction * total)
        if previous is not None:
            for old, new in zip(previous, masks):
                assert torch.all(new <= old), "a static element became dynamic again"
            assert sum(int(m.sum()) for m in masks) < sum(int(m.sum()) for m in previous)
        previous = masks


@pytest.mark.parametrize("scope", ["global", "local"])
def test_apply_partition_never_revives_static_elements(scope):
    model = _model()
    tensors = masked_tensors(model)
    gen = torch.Generator().manual_seed(0)
    first = [torch.rand(mode.mask.shape, generator=gen) for _, mode, _ in tensors]
    apply_partition(tensors, first, 0.5, scope)
    after_first = _masks(model)
    # second scores favour exactly the elements the first step made static
    second = [1.0 - m + 1e-3 * torch.rand(m.shape, generator=gen) for m in after_first]
    apply_partition(tensors, second, 0.25, scope)
    after_second = _masks(model)
    for old, new in zip(after_first, after_second):
        assert torch.all(new <= old)
    total = sum(m.numel() for m in after_second)
    if scope == "global":
        assert sum(int(m.sum()) for m in after_second) == round(0.25 * total)
    else:
        for m in after_second:
            assert int(m.sum()) == round(0.25 * m.numel())


def test_reset_false_continues_from_current_masks():
    model = _model()
    _run(model, 0.5, "random", seed=0)
    before = _masks(model)
    report = partition(model, 0.25, "magnitude", reset=False)
    after = _masks(model)
    assert all(torch.all(a <= b) for a, b in zip(after, before))
    assert report.dynamic == round(0.25 * report.total)


# ------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_and_data_give_identical_masks(method):
    a, b = _model(seed=0), _model(seed=0)
    _run(a, 0.3, method, seed=5)
    _run(b, 0.3, method, seed=5)
    for x, y in zip(_masks(a), _masks(b)):
        assert torch.equal(x, y)


def test_random_partition_depends_on_seed():
    a, b = _model(), _model()
    _run(a, 0.3, "random", seed=1)
    _run(b, 0.3, "random", seed=2)
    assert any(not torch.equal(x, y) for x, y in zip(_masks(a), _masks(b)))


def test_magnitude_keeps_largest_kernels():
    model = _model()
    partition(model, 0.3, "magnitude", scope="local")
    for _, mode, factors in masked_tensors(model):
        score = factors.detach().abs().mean(0, keepdim=True)
        on, off = score[mode.mask == 1], score[mode.mask == 0]
        assert on.min() >= off.max()


def test_imp_selects_highest_snip_scores():
    """One-shot MP keeps the round(κm) elements of largest |∂L/∂M| (global)."""
    model = _model()
    data = _batches()
    tensors = masked_tensors(model)
    scores = snip_scores(model, tensors, iter(data), F.cross_entropy, num_batches=2)
    partition(model, 0.3, "mp", data=data, num_batches=2)
    flat_scores = torch.cat([s.reshape(-1) for s in scores])
    flat_masks = torch.cat([m.reshape(-1) for m in _masks(model)])
    assert flat_scores[flat_masks == 1].min() >= flat_scores[flat_masks == 0].max()


# ---------------------------------------------------------------------------------- SNIP scores


def _tiny(bias=True):
    torch.manual_seed(0)
    conv = PADConv2d(3, 4, 3, padding=1, bias=bias, num_kernels=3, temperature=1.0)
    with torch.no_grad():
        conv.scales.phi.fill_(0.3)
        gen = torch.Generator().manual_seed(1)
        conv.weight_mode.mask.copy_((torch.rand(conv.weight_mode.mask.shape, generator=gen) < 0.6).float())
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


def test_snip_scores_equal_hand_computed_mask_gradients():
    model = _tiny()
    data = _batches(n=3, batch=5)
    tensors = masked_tensors(model)
    assert len(tensors) == 2  # weight and bias
    scores = snip_scores(model, tensors, iter(data), F.cross_entropy, num_batches=2)

    masks = [mode.mask for _, mode, _ in tensors]
    for m in masks:
        m.requires_grad_(True)
    total = [torch.zeros_like(m) for m in masks]
    for x, y in data[:2]:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), masks)
        total = [t + g for t, g in zip(total, grads)]
    for m in masks:
        m.requires_grad_(False)
    assert len(scores) == 2
    for s, t, m in zip(scores, total, masks):
        assert s.shape == m.shape
        torch.testing.assert_close(s, t.abs(), rtol=1e-5, atol=1e-7)
    assert any(torch.any(s > 0) for s in scores)


def test_snip_scores_leave_state_untouched():
    model = _model()
    data = _batches()
    # give parameters a .grad and BN non-trivial running stats
    model.train()
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    model.eval()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    tensors = masked_tensors(model)
    scores = snip_scores(model, tensors, iter(data), F.cross_entropy, num_batches=2)
    assert len(scores) == len(tensors)
    assert not model.training  # mode restored
    for n, p in model.named_parameters():
        if n in no_grad:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
        assert not b.requires_grad, n
    assert any("running_mean" in n for n in buffers)


def test_snip_scores_need_data():
    model = _model()
    with pytest.raises(ConfigError):
        snip_scores(model, masked_tensors(model), iter([]), F.cross_entropy)
    with pytest.raises(ConfigError):
        partition(model, 0.3, "imp", data=[])


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("kappa", [0, 0.0, 1.5, -0.1, "abc", None, float("nan")])
def test_bad_kappa_raises(kappa):
    with pytest.raises(ConfigError):
        partition(_model(), kappa, "random")


@pytest.mark.parametrize("conv", ["static", "dy"])
def test_model_without_pad_layers_raises(conv):
    with pytest.raises(ConfigError):
        partition(_model(conv=conv), 0.3, "random")


@pytest.mark.parametrize("method", ["imp", "mp"])
def test_data_driven_methods_need_data(method):
    with pytest.raises(ConfigError):
        partition(_model(), 0.3, method)


def test_unknown_method_or_scope_raises():
    with pytest.raises(ConfigError):
        partition(_model(), 0.3, "snip")
    with pytest.raises(ConfigError):
        partition(_model(), 0.3, "random", scope="layer")
    with pytest.raises(ConfigError):
        partition(_model(), 0.3, "imp", data=_batches(), iterations=0)


# ------------------------------------------------------------------------------------ granularity


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("method", METHODS)
def test_kernel_granularity_masks_are_partitioned_exactly(method, scope):
    model = _model(granularity="kernel")
    tensors = masked_tensors(model)
    for _, mode, factors in tensors:
        assert mode.mask.shape == factors.shape  # (k, *shape)
        assert mode.mask.numel() == 4 * factors[0].numel()
    report = _run(model, 0.35, method, scope)
    masks = _masks(model)
    total = sum(m.numel() for m in masks)
    assert report.total == total
    if scope == "global":
        assert report.dynamic == sum(int(m.sum()) for m in masks) == round(0.35 * total)
    else:
        for m in masks:
            assert int(m.sum()) == round(0.35 * m.numel())
    # per-kernel masks are not all identical across the k kernels
    assert any(not torch.equal(m[0], m[1]) for m in masks)


def test_continuing_to_a_higher_kappa_is_refused():
    model = create_model("resnet10", conv="pad", num_classes=4, in_chans=1, width=0.125, stem="small")
    partition(model, 0.3, "random")
    with pytest.raises(ConfigError, match="above the current dynamic ratio"):
        partition(model, 0.5, "random", reset=False)
    report = partition(model, 0.2, "random", reset=False)
    assert report.dynamic == round(0.2 * report.total)


def test_imp_continuation_never_revives_static_elements():
    model = create_model("resnet10", conv="pad", num_classes=4, in_chans=1, width=0.125, stem="small")
    partition(model, 0.5, "random", seed=1)
    before = [mode.mask.clone() for _, mode, _ in masked_tensors(model)]
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
    report = partition(model, 0.3, "imp", batches, num_batches=2, iterations=5, reset=False)
    assert report.schedule[0] < 0.5 and report.schedule[-1] == pytest.approx(0.3)
    assert report.dynamic == round(0.3 * report.total)
    for old, (_, mode, _) in zip(before, masked_tensors(model)):
        assert torch.all(mode.mask <= old)  # nothing static became dynamic


@pytest.mark.parametrize("method", ["imp", "random"])
def test_align_keeps_a_multiple_of_align_dynamic_filters(method):
    torch.manual_seed(0)
    model = create_model("resnet10", conv="pad", num_classes=4, width=1.0, stem="small", granularity="filter")
    _run(model, 0.3, method, scope="local", align=16)
    for name, mode, _ in masked_tensors(model):
        cout, kept = mode.mask.numel(), int(mode.mask.sum())
        if mode.granularity == "filter" and name.endswith("weight"):
            assert kept % 16 == 0 and kept >= 16, (name, kept)
            assert kept == min(cout, max(16, 16 * round(0.3 * cout / 16))), (name, kept)


def test_align_leaves_element_masks_exact():
    model = _model("shared")
    _run(model, 0.3, "random", scope="local", align=16)
    for _, mode, _ in masked_tensors(model):
        assert int(mode.mask.sum()) == round(0.3 * mode.mask.numel())


@pytest.mark.parametrize("align, scope", [(0, "local"), (16, "global")])
def test_bad_align_raises(align, scope):
    with pytest.raises(ConfigError, match="align"):
        _run(_model("filter"), 0.3, "random", scope=scope, align=align)
