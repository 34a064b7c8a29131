"""Layers own their merge: every dynamic layer states its compact inference form (`deployed`, which
`padnet.deploy` asks for, warning in one line about layers that have none) and its base form (`base_layer`,
which `PadModel.unload` puts back: the static weights λs·Θ̄ of PAD-Net eq. 4, or the weights kept from the
original convolution)."""

import copy
import warnings

import pytest
import torch
from torch import nn

import padnet
from padnet.layers import DynamicConvBase
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.modes import PartialMode
from padnet.layers.moe import DeployedMoE, MoEFeedForward

METHODS = ("dy", "condconv", "odconv", "dcd", "pad", "pad-condconv", "pad-odconv", "pad-dcd", "sdconv")
PARTIAL = ("pad", "pad-condconv", "pad-odconv", "pad-dcd")
NO_COMPACT_FORM = {
    "odconv": "ODConv2d",
    "dcd": "DCDConv2d",
    "pad-odconv": "PADODConv2d",
    "pad-dcd": "PADDCDConv2d",
}
SOURCE = {"dy": "kernels", "condconv": "kernels", "odconv": "kernels", "sdconv": "kernels", "dcd": "W0"}


def _static(seed=0):
    torch.manual_seed(seed)
    return padnet.create_model("resnet10", width=0.25, num_classes=10, in_chans=1, stem="small")


def _input():
    return torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _perturb(model):
    """Every static parameter Θ̄ (kernels, attention values, DCD's Λ̄ and Φ̄) and BatchNorm's running statistics
    away from their initial values, so a merge that leaves one out cannot pass."""
    gen = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, PartialMode) and module.static is not None:
            module.static.add_(0.3 * torch.randn(module.static.shape, generator=gen))
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=gen)
            module.running_var.uniform_(0.5, 2.0, generator=gen)


def _converted(method):
    """A tiny ResNet made dynamic by `method`, partitioned at random (κ = 0.3) where it has masks, in eval mode."""
    pad = padnet.get_pad_model(_static(), method=method)
    if method in PARTIAL:
        pad.partition(partition="random", kappa=0.3)
    return pad


@pytest.mark.parametrize("method", METHODS)
def test_deploy_gives_the_training_form_or_says_in_one_line_which_layers_it_kept(method):
    pad = _converted(method)
    _perturb(pad.base_model)
    model = pad.base_model.eval()
    n_layers = sum(isinstance(m, DynamicConvBase) for m in model.modules())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deployed = padnet.deploy(model)
    x = _input()
    torch.testing.assert_close(deployed(x), model(x), atol=1e-4, rtol=1e-4)
    messages = [str(w.message) for w in caught]
    if method in NO_COMPACT_FORM:
        assert messages == [
            f"deploy: {n_layers} {NO_COMPACT_FORM[method]} layers have no compact form and are kept in "
            "their training form"
        ]
    else:
        assert messages == []
        assert all(
            isinstance(m, DeployedConv2d) for m in deployed.modules() if isinstance(m, DynamicConvBase)
        )
        assert sum(isinstance(m, DeployedConv2d) for m in deployed.modules()) == n_layers


def test_deploying_a_deployed_model_changes_nothing():
    deployed = padnet.deploy(_converted("pad").base_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = padnet.deploy(deployed)
    x = _input()
    assert torch.equal(again(x), deployed(x))


@pytest.mark.parametrize("method", METHODS)
def test_unload_of_a_partitioned_model_gives_the_base_architecture_with_the_original_weights(method):
    base = _static().eval()
    original = {n: m for n, m in base.named_modules() if isinstance(m, nn.Conv2d)}
    pad = _converted(method)  # converted from `base`'s weights and not trained: the weights kept are its own
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = pad.unload().eval()
    assert all(isinstance(m, DynamicConvBase) for m in map(pad.base_model.get_submodule, pad.converted))
    assert not any(isinstance(m, DynamicConvBase) for m in plain.modules())
    for name in pad.converted:
        conv, before = plain.get_submodule(name), original[name]
        assert type(conv) is nn.Conv2d
        geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
        assert all(getattr(conv, g) == getattr(before, g) for g in geometry)
    assert set(plain.padnet_unloaded.values()) == {SOURCE.get(method, "static")}
    x = _input()
    torch.testing.assert_close(plain(x), base(x), atol=1e-5, rtol=1e-5)
    if method in PARTIAL:  # dynamic elements were dropped: one line says so and which weights were taken
        (message,) = [str(w.message) for w in caught]
        assert message.startswith(f"unload: {len(pad.converted)} layers took their static weights λs·Θ̄")
        assert "\n" not in message and f"; {len(pad.converted)} had dynamic elements, dropped" in message
    else:
        (message,) = [str(w.message) for w in caught]
        assert message.startswith(f"unload: {len(pad.converted)} layers took ")


@pytest.mark.parametrize("method", PARTIAL)
def test_unload_with_every_mask_static_computes_what_the_pad_model_computes(method):
    """M = 0 leaves λs·Θ̄ (PAD-Net eq. 4), with ODConv's static attentions and DCD's static scale, fusion and
    BatchNorm-ed residual folded into one kernel."""
    pad = padnet.get_pad_model(_static(), method=method, init_from_pretrained=False)
    _perturb(pad.base_model)
    pad.set_masks({name: torch.zeros_like(mask) for name, mask in pad.masks().items()})
    pad.set_scale_factors(lambda_s=0.8)
    pad.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every base form is exact: nothing to warn about
        plain = pad.unload().eval()
    assert set(plain.padnet_unloaded.values()) == {"static"}
    assert not any(isinstance(m, DynamicConvBase) for m in plain.modules())
    x = _input()
    torch.testing.assert_close(plain(x), pad(x), atol=1e-4, rtol=1e-4)


class _Encoder(nn.Module):
    """One BERT-style feed-forward block, named as the Hugging Face encoders name it."""

    def __init__(self):
        super().__init__()
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(8, 16)
        self.intermediate.intermediate_act_fn = nn.GELU()
        self.output = nn.Module()
        self.output.dense = nn.Linear(16, 8)

    def forward(self, x):
        return self.output.dense(self.intermediate.intermediate_act_fn(self.intermediate.dense(x)))


def test_moe_layers_deploy_through_their_own_form():
    torch.manual_seed(0)
    pad = padnet.get_pad_model(_Encoder(), method="pad-moe", num_experts=4, top_k=2)
    pad.partition(partition="random")
    pad.eval()
    (name,) = pad.converted
    layer = pad.base_model.get_submodule(name)
    assert isinstance(layer, MoEFeedForward) and isinstance(layer.deployed(), DeployedMoE)
    x = torch.randn(5, 8)
    torch.testing.assert_close(padnet.deploy(pad.base_model)(x), pad(x), atol=1e-5, rtol=1e-5)


def _is_base_encoder(model: nn.Module) -> bool:
    return (
        type(model.intermediate.dense) is nn.Linear
        and isinstance(model.intermediate.intermediate_act_fn, nn.GELU)
        and type(model.output.dense) is nn.Linear
    )


@pytest.mark.parametrize("method", ["moe", "pad-moe", "moe-p"])
def test_unload_of_an_upcycled_ffn_gives_the_dense_ffn_back(method):
    torch.manual_seed(0)
    original = _Encoder().eval()
    pad = padnet.get_pad_model(copy.deepcopy(original), method=method, num_experts=4, top_k=2).eval()
    x = torch.randn(5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # right after upcycling every expert is the FFN: exact
        plain = pad.unload().eval()
    assert _is_base_encoder(plain) and plain.padnet_unloaded == {
        "intermediate.dense": "static" if method == "pad-moe" else "experts"
    }
    torch.testing.assert_close(plain(x), original(x))
    if method == "moe":
        return
    pad.partition(partition="random")
    with torch.no_grad():  # training makes the experts differ
        experts = pad.base_model.get_submodule("intermediate.dense").experts
        experts.add_(0.1 * torch.randn_like(experts))
    with pytest.warns(UserWarning, match=r"^unload: 1 layers took .*; 1 had dynamic elements, dropped$"):
        assert _is_base_encoder(pad.unload())
    pad.set_masks({n: torch.zeros_like(m) for n, m in pad.masks().items()})
    pad.set_scale_factors(lambda_s=0.7) if method == "pad-moe" else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every mask static: every expert is λs·Θ̄ (or zero, MoE-P)
        plain = pad.unload().eval()
    torch.testing.assert_close(plain(x), pad(x), atol=1e-6, rtol=1e-5)


def _tiny_decoder(family: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {"vocab_size": 60, "max_position_embeddings": 32, "bos_token_id": 1, "eos_token_id": 2}
    if family == "gpt2":  # two Conv1D maps, weights stored (in, out)
        config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32, **common)
        return transformers.GPT2LMHeadModel(config).eval()
    shape = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    if family == "llama":  # a gated block, replaced whole
        config = transformers.LlamaConfig(intermediate_size=24, head_dim=8, **shape, **common)
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.MixtralConfig(  # a pretrained bank of experts
        intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, head_dim=8, **shape, **common
    )
    return transformers.MixtralForCausalLM(config).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama", "mixtral"])
def test_unload_of_a_transformer_gives_its_own_architecture_back(family):
    original = _tiny_decoder(family)
    pad = padnet.get_pad_model(copy.deepcopy(original), method="pad-moe").eval()
    pad.partition(partition="random")
    ids = torch.randint(3, 60, (2, 10), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # untrained: every expert is still its FFN (bank: exact anyway)
        plain = pad.unload().eval()
    kinds = {type(m).__name__ for m in original.modules()}
    assert {type(m).__name__ for m in plain.modules()} == kinds  # no padnet module left, none missing
    assert plain.state_dict().keys() == original.state_dict().keys()
    source = "expert bank" if family == "mixtral" else "static"  # the bank's experts; one FFN's λs·Θ̄
    assert set(plain.padnet_unloaded.values()) == {source}
    torch.testing.assert_close(plain(ids).logits, pad(ids).logits, atol=1e-5, rtol=1e-4)
    if family != "mixtral":  # upcycling changed nothing yet; compressing a bank shares Θ̄, the experts' mean
        torch.testing.assert_close(plain(ids).logits, original(ids).logits, atol=1e-5, rtol=1e-4)
