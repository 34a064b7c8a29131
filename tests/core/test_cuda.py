"""padnet on CUDA, against the CPU result: every layer type, formulation and granularity (outputs and gradients),
the deployed form and its export, the MoE layers. Skipped without a CUDA device; ``scripts/device-check.sh`` runs
this file on a GPU machine."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import padnet
from padnet.layers import DeployedConv2d
from padnet.layers.formulations import FORMULATIONS, force_formulation
from padnet.layers.modes import GRANULARITIES, PartialMode
from padnet.layers.moe import DeployedMoE, MoEFeedForward
from padnet.layers.registry import conv_factory
from padnet.partitioning import partition
from padnet.training.speed import compile_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
TOL = {"rtol": 1e-4, "atol": 1e-4}  # TF32 is off below; cuDNN and CPU kernels still sum in other orders
CONVS = ["dy", "condconv", "pad", "pad-condconv", "odconv", "pad-odconv", "dcd", "pad-dcd", "sdconv"]
GEOMETRIES = {
    "3x3": (8, 12, 3, 1, 1),
    "3x3-s2-g2": (8, 12, 3, 2, 2),
    "1x1": (8, 12, 1, 1, 1),
    "depthwise": (8, 8, 3, 1, 8),
}


@pytest.fixture(autouse=True)
def _exact_math():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _randomise(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _masks(module, seed=0):
    """A random 40 % of every partial mode's mask dynamic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, PartialMode):
                m.mask.copy_((torch.rand(m.mask.shape, generator=gen) < 0.4).to(m.mask.dtype))


def _layer(conv, geometry, granularity):
    cin, cout, k, stride, groups = GEOMETRIES[geometry]
    options = {"granularity": granularity} if conv in ("pad", "pad-condconv") else {}
    layer = conv_factory(conv, **options)(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=True)
    _randomise(layer)
    _masks(layer)
    return layer


def _forward_backward(layer, x):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()], allow_unused=True)
    return out.detach().cpu(), [None if g is None else g.detach().cpu() for g in grads]


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("conv", CONVS)
def test_every_layer_formulation_and_granularity_matches_the_cpu(conv, geometry, granularity):
    if granularity != "shared" and conv not in ("pad", "pad-condconv"):
        pytest.skip("granularity applies to the PAD-Net kernel layers")
    cpu = _layer(conv, geometry, granularity).train()
    x = torch.randn(3, GEOMETRIES[geometry][0], 9, 9, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _forward_backward(cpu, x)
    gpu = copy.deepcopy(cpu).to(CUDA)
    formulations = FORMULATIONS if hasattr(cpu, "formulation") else (None,)
    for formulation in formulations:
        if formulation is None:
            out, grads = _forward_backward(gpu, x.to(CUDA))
        else:
            with force_formulation(gpu, formulation):
                out, grads = _forward_backward(gpu, x.to(CUDA))
        torch.testing.assert_close(out, ref_out, **TOL, msg=f"{conv} {formulation} output")
        for got, want in zip(grads, ref_grads):
            if want is not None:
                torch.testing.assert_close(got, want, **TOL, msg=f"{conv} {formulation} gradient")


@pytest.mark.parametrize(
    "conv,granularity", [("dy", "shared"), ("pad", "shared"), ("pad", "filter"), ("sdconv", "shared")]
)
def test_deployed_form_and_exports_on_cuda_match_the_training_form(tmp_path, conv, granularity):
    torch.manual_seed(0)
    options = {"granularity": granularity} if conv == "pad" else {}
    model = padnet.create_model("resnet10", conv=conv, num_classes=10, stem="small", width=0.25, **options)
    if conv == "pad":
        partition(model, 0.3, "random", scope="local")
    model = model.to(CUDA).eval()
    x = torch.randn(4, 3, 32, 32, device=CUDA)
    deployed = padnet.deploy(model)
    assert any(isinstance(m, DeployedConv2d) for m in deployed.modules())
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(deployed(x), want, **TOL)
        for formulation in FORMULATIONS:
            with force_formulation(deployed, formulation):
                torch.testing.assert_close(deployed(x), want, **TOL, msg=formulation)
    traced = torch.jit.load(
        str(padnet.export_torchscript(deployed, tmp_path / "model.pt", x[:2])), map_location=CUDA
    )
    with torch.no_grad():
        torch.testing.assert_close(traced(x), want, **TOL)
    loaded = padnet.load_pretrained(padnet.save_pretrained(deployed.cpu(), tmp_path / "folder"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.to(CUDA)(x), want, **TOL)


@pytest.mark.parametrize(
    "mode,granularity", [("dynamic", "element"), ("pad", "element"), ("pad", "neuron"), ("prune", "neuron")]
)
def test_moe_layers_match_the_cpu_in_training_and_deployed(mode, granularity):
    torch.manual_seed(0)
    up, down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
    layer = MoEFeedForward.from_linears(
        up, down, torch.nn.GELU(), num_experts=4, top_k=2, mode=mode, granularity=granularity
    )
    _randomise(layer)
    if mode != "dynamic":
        _masks(layer)
    x = torch.randn(20, 16)
    layer.train()
    ref_out, ref_grads = _forward_backward(layer, x)
    gpu = copy.deepcopy(layer).to(CUDA)
    out, grads = _forward_backward(gpu, x.to(CUDA))
    torch.testing.assert_close(out, ref_out, **TOL)
    for got, want in zip(grads, ref_grads):
        if want is not None:
            torch.testing.assert_close(got, want, **TOL)
    with torch.no_grad():
        deployed = DeployedMoE.from_layer(gpu.eval())
        torch.testing.assert_close(deployed(x.to(CUDA)).cpu(), layer.eval()(x), **TOL)


def test_a_short_training_run_on_cuda_lowers_the_loss():
    torch.manual_seed(0)
    model = padnet.create_model("resnet10", conv="pad", num_classes=4, in_chans=1, stem="small", width=0.25)
    model = model.to(CUDA)
    partition(model, 0.3, "random")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(32, 1, 16, 16, device=CUDA)
    y = torch.randint(0, 4, (32,), device=CUDA)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------- at scale (issue 28)

AMP_TOLERANCE = 0.05  # relative difference of a half-precision autocast loss from float32 over a few steps


def _amp_losses(conv: str, dtype: torch.dtype | None, compiled: bool = False, channels_last: bool = False):
    torch.manual_seed(0)
    model = padnet.create_model("resnet10", conv=conv, num_classes=10, width=0.25).to(CUDA)
    padnet.set_temperature(model, 30.0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    forward = compile_model(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        x = torch.randn(16, 3, 32, 32, generator=gen).to(CUDA).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (16,), generator=gen).to(CUDA)
        with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            loss = F.cross_entropy(forward(x).float(), y)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_autocast_training_follows_fp32_on_cuda(conv, dtype):
    """fp16 with torch.amp.GradScaler and bf16, every layer family at temperature 30: no NaN / inf."""
    for a, b in zip(_amp_losses(conv, None), _amp_losses(conv, dtype)):
        assert abs(a - b) <= AMP_TOLERANCE * abs(a)


@pytest.mark.parametrize("conv", ["dy", "pad", "sdconv"])
def test_compiled_and_channels_last_training_follow_eager_on_cuda(conv):
    eager = _amp_losses(conv, None)
    torch.testing.assert_close(_amp_losses(conv, None, compiled=True), eager, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(_amp_losses(conv, None, channels_last=True), eager, rtol=1e-3, atol=1e-3)
    for a, b in zip(eager, _amp_losses(conv, torch.bfloat16, compiled=True, channels_last=True)):
        assert abs(a - b) <= AMP_TOLERANCE * abs(a)


@pytest.mark.parametrize("mode", ["dynamic", "pad", "prune"])
def test_moe_layers_under_fp16_autocast_and_compile_on_cuda(mode):
    torch.manual_seed(0)
    layer = MoEFeedForward(16, 32, 4, 2, mode=mode).to(CUDA).eval()
    x = torch.randn(64, 16, device=CUDA)
    ref = layer(x)
    with torch.autocast("cuda", dtype=torch.float16):
        half = layer(x)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, atol=1e-2, rtol=1e-2)
    compiled = torch.compile(DeployedMoE.from_layer(layer), fullgraph=True)
    torch.testing.assert_close(compiled(x), ref, **TOL)
