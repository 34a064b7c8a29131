"""torch.compile and channels_last: no graph break inside padnet's layers, compiled ≡ eager for training (with the
PadModel's hooks: temperature anneal, mode partition) and for deployed forms (fullgraph), no recompile per step;
channels_last inputs and models compute what contiguous ones do and keep the format."""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo as dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import padnet
from padnet.layers.registry import conv_factory
from padnet.models import create_model
from padnet.training.speed import compile_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def _images(n=4, size=32, batch=8):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(n)
    ]


def _explain(fn, *args):
    explained = dynamo.explain(fn)(*args)
    return (
        explained.graph_count,
        explained.graph_break_count,
        [str(b.reason)[:120] for b in explained.break_reasons],
    )


@pytest.mark.parametrize(
    "model_name, conv, options",
    [
        ("resnet18", "pad", {}),
        ("resnet18", "dy", {}),
        ("resnet10", "pad", {"granularity": "filter"}),
        ("resnet10", "sdconv", {}),
        ("resnet10", "pad-odconv", {}),
        ("resnet10", "pad-dcd", {}),
    ],
)
def test_training_and_eval_forward_trace_without_graph_breaks(model_name, conv, options):
    torch.manual_seed(0)
    model = create_model(model_name, conv=conv, num_classes=10, width=0.25, **options)
    (x, y), *_ = _images(1)
    for train in (True, False) if model_name == "resnet18" else (True,):  # eval runs the same layer code
        model.train(train)
        with torch.set_grad_enabled(train):
            graphs, breaks, reasons = _explain(lambda x: F.cross_entropy(model(x), y), x)
        assert (graphs, breaks) == (1, 0), reasons


def _bert(method: str):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return padnet.get_pad_model(
        transformers.BertForSequenceClassification(config), padnet.PadConfig(method=method)
    )


@pytest.mark.parametrize("method", ["pad-moe", "moe-p", "moe"])
def test_moe_encoder_training_forward_traces_without_graph_breaks(method):
    pad = _bert(method).train()
    ids, labels = torch.randint(0, 100, (4, 12)), torch.randint(0, 2, (4,))
    graphs, breaks, reasons = _explain(lambda ids: pad(input_ids=ids, labels=labels).loss, ids)
    assert (graphs, breaks) == (1, 0), reasons


@pytest.mark.parametrize("method", ["pad-moe", "moe"])
def test_compiled_moe_encoder_training_step_equals_eager(method):
    """The grouped-experts operator's fake shapes and its registered backward, through AOT autograd."""
    ids, labels = torch.randint(0, 100, (4, 12)), torch.randint(0, 2, (4,))
    grads = []
    for compiled in (False, True):
        pad = _bert(method).train()
        forward = torch.compile(pad, backend="aot_eager", fullgraph=True) if compiled else pad
        torch.manual_seed(1)  # the same router noise
        forward(input_ids=ids, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in pad.named_parameters() if p.grad is not None})
    assert any(".experts" in n for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_an_activation_the_operator_cannot_name_breaks_only_its_own_layer():
    moe = padnet.layers.moe.MoEFeedForward(8, 12, 4, activation=lambda t: torch.tanh(t) * t)
    graphs, breaks, _ = _explain(lambda x: moe(x).sum(), torch.randn(6, 8))
    assert breaks >= 1  # the autograd function of the same code runs eagerly


def _train_pad(compiled: bool, granularity: str = "shared"):
    torch.manual_seed(0)
    model = create_model("resnet10", conv="pad", num_classes=10, width=0.25, granularity=granularity)
    pad = padnet.get_pad_model(
        model,
        padnet.PadConfig(
            method="pad",
            granularity=granularity,
            kappa=0.5,
            partition_at="steps",
            partition_after=2,
            partition_batches=2,
            temperature_anneal=3,
            temperature_unit="steps",
        ),
    )
    data = _images(5)
    optimizer = torch.optim.SGD(pad.parameters(), lr=0.05)
    state = pad.start_training(steps_per_epoch=len(data), epochs=1, partition_data=data)
    counter = CompileCounterWithBackend("aot_eager")
    forward = torch.compile(pad, backend=counter) if compiled else pad
    losses = []
    for x, y in data:
        state.before_step()
        loss = F.cross_entropy(forward(x), y) + state.extra_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.after_step()
        losses.append(loss.item())
    return losses, pad, counter


@pytest.mark.parametrize("granularity", ["shared", "filter"])
def test_compiled_training_with_the_padmodel_hooks_equals_eager_and_compiles_once(granularity):
    """The temperature anneals every step and the partition runs at step 2 (on the model the PadModel holds);
    the compiled model sees both through buffers, without recompiling."""
    eager_losses, eager, _ = _train_pad(False, granularity)
    compiled_losses, compiled, counter = _train_pad(True, granularity)
    assert counter.frame_count == 1
    torch.testing.assert_close(compiled_losses, eager_losses, atol=1e-4, rtol=1e-4)
    masks = [(n, b) for n, b in eager.named_buffers() if n.endswith("mask")]
    assert any(bool((b == 0).any()) for _, b in masks)  # the partition ran
    for (name, mask), (_, other) in zip(
        masks, [(n, b) for n, b in compiled.named_buffers() if n.endswith("mask")]
    ):
        assert torch.equal(mask, other), name


@pytest.mark.parametrize("granularity", ["shared", "filter"])
def test_deployed_forms_compile_with_fullgraph_and_match_eager(granularity):
    torch.manual_seed(0)
    model = create_model("resnet10", conv="pad", num_classes=10, width=0.25, granularity=granularity)
    padnet.partition(model, 0.3, "magnitude")
    deployed = padnet.deploy(model.eval())
    x = _images(1)[0][0]
    with torch.no_grad():
        ref = deployed(x)
        out = torch.compile(deployed, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_deployed_moe_encoder_compiles_with_fullgraph():
    pad = _bert("pad-moe")
    padnet.partition(pad.base_model, 0.5, "magnitude")
    deployed = pad.merge_and_unload().eval()
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        ref = deployed(input_ids=ids).logits
        out = torch.compile(deployed, backend="aot_eager", fullgraph=True)(input_ids=ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_inductor_compiles_a_pad_layer_training_step_like_eager_at_two_batch_sizes():
    """The real backend (C++ kernels on the CPU), forward and backward, as `padnet train --compile` compiles: a
    second batch size (a short last batch) recompiles with static shapes, where dynamic ones fail in inductor."""
    torch.manual_seed(0)
    layer = conv_factory("pad")(8, 16, 3, padding=1)
    compiled = compile_model(layer)
    for batch in (4, 3):
        x = torch.randn(batch, 8, 8, 8)
        results = []
        for module in (layer, compiled):
            layer.zero_grad()
            out = module(x)
            out.square().sum().backward()
            results.append((out.detach(), layer.weight.grad.clone()))
        torch.testing.assert_close(results[1][0], results[0][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(results[1][1], results[0][1], atol=1e-3, rtol=1e-3)


CONVS = ["dy", "pad", "condconv", "odconv", "pad-odconv", "dcd", "pad-dcd", "sdconv"]


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("size", [8, 3])  # grouped / batched formulations
def test_channels_last_layers_compute_the_same_and_keep_the_format(conv, size):
    torch.manual_seed(0)
    layer = conv_factory(conv)(8, 16, 3, padding=1)
    x = torch.randn(4, 8, size, size)
    ref = layer(x)
    layer.to(memory_format=torch.channels_last)
    assert layer.weight.dim() == 5 or conv.endswith("dcd")  # the kernel bank keeps its shape
    out = layer(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", ["pad", "dy", "sdconv"])
def test_a_channels_last_model_trains_as_a_contiguous_one(conv):
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = create_model("resnet10", conv=conv, num_classes=10, width=0.25).to(memory_format=fmt)
        x, y = _images(1)[0]
        F.cross_entropy(model(x.contiguous(memory_format=fmt)), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-4, rtol=1e-3, msg=name)


def test_kernel_banks_convert_per_filter():
    layer = conv_factory("pad")(4, 6, 3)
    layer.to(memory_format=torch.channels_last)
    kernels = layer.weight.flatten(0, 1)  # (k·Cout, Cin, kh, kw)
    assert kernels.is_contiguous(memory_format=torch.channels_last) and layer.weight.shape == (4, 6, 4, 3, 3)
    layer.to(torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.weight_mode.mask.dtype == torch.float64
    assert isinstance(layer.weight, nn.Parameter)
