"""Deploy a trained model: fold BatchNorm and turn every dynamic convolution into its compact inference form
(and every MoE layer into its merged one). Saving it: `padnet.save_pretrained` ([`padnet.saving.folder`][padnet.saving.folder])."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from padnet.errors import ConfigError, check_module, first_line
from padnet.layers.conv_base import DynamicConvBase
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.dynamic_conv import DynamicConv2d
from padnet.layers.moe import DeployedMoE, MoEFeedForward, reset_aux_losses


class _LeafTracer(fx.Tracer):
    """Traces a model with every dynamic convolution as one opaque call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, DynamicConvBase) or super().is_leaf_module(m, qualname)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm2d) module names where the BatchNorm is the only consumer of the convolution.

    Raises ConfigError when the model cannot be traced by `torch.fx` (use `fold_bn=False`).
    """
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types for untraceable control flow
        reason = first_line(exc)
        raise ConfigError(
            f"cannot trace the model to fold BatchNorm ({reason}); pass fold_bn=False"
        ) from None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and len(src.users) == 1
            and isinstance(modules.get(src.target), (nn.Conv2d, DynamicConv2d))
        ):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def deploy(model: nn.Module, fold_bn: bool = True, inplace: bool = False) -> nn.Module:
    """The inference form of `model`: BatchNorm folded, dynamic convolutions compact, MoE experts merged.

    Every [`DynamicConv2d`][padnet.layers.dynamic_conv.DynamicConv2d] (DY-Conv, CondConv, PAD-Net in any granularity) becomes a
    [`DeployedConv2d`][padnet.layers.deployed.DeployedConv2d] with λs, λd and the following BatchNorm folded in;
    static `nn.Conv2d` + BatchNorm pairs are fused; ODConv and DCD layers are kept as they are; every
    [`MoEFeedForward`][padnet.layers.moe.MoEFeedForward] (MoE, PAD-MoE, MoE-P) becomes a
    [`DeployedMoE`][padnet.layers.moe.DeployedMoE] with its computational parameters merged once. The result is in
    eval mode and computes what `model.eval()` computes (within float rounding).

    Args:
        model: a trained model.
        fold_bn: fold each BatchNorm2d that directly and only follows a convolution (found with torch.fx; a
            model without BatchNorm2d is not traced).
        inplace: modify `model` instead of a copy.

    Raises:
        ConfigError: `model` is not an `nn.Module`; `fold_bn` on a model with BatchNorm2d that torch.fx
            cannot trace.
    """
    check_module(model, "deploy")
    reset_aux_losses(model)  # the MoE losses of the last forward are autograd results: not copied
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    for name, layer in [(n, m) for n, m in out.named_modules() if isinstance(m, MoEFeedForward)]:
        out.set_submodule(name, DeployedMoE.from_layer(layer))
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    pairs = conv_bn_pairs(out) if fold_bn and has_bn else []
    bns = dict(pairs)
    folded = []
    for name, module in list(out.named_modules()):
        if not isinstance(module, (nn.Conv2d, DynamicConv2d)) or (
            isinstance(module, nn.Conv2d) and name not in bns
        ):
            continue
        bn = out.get_submodule(bns[name]) if name in bns else None
        if isinstance(module, nn.Conv2d):
            out.set_submodule(name, fuse_conv_bn_eval(module, bn))
        else:
            out.set_submodule(name, DeployedConv2d.from_layer(module, bn).eval())
        if bn is not None:
            out.set_submodule(bns[name], nn.Identity())
            folded.append(bns[name])
    out.padnet_deployed = {
        "folded_bn": folded,
        "fused_convs": [c for c, b in pairs if isinstance(out.get_submodule(c), nn.Conv2d)],
    }
    return out
