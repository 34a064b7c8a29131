"""Deploy a trained model: fold BatchNorm and put every layer that states a compact inference form
([`Deployable`][padnet.layers.conv_base.Deployable]) into it. Saving it: `padnet.save_pretrained`
([`padnet.saving.folder`][padnet.saving.folder])."""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from padnet.errors import ConfigError, check_module, first_line
from padnet.layers.conv_base import Deployable
from padnet.layers.moe import reset_aux_losses


class _LeafTracer(fx.Tracer):
    """Traces a model with every deployable layer (dynamic convolutions, MoE layers) as one opaque call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Deployable) or super().is_leaf_module(m, qualname)


def _absorbs_batchnorm(module: nn.Module | None) -> bool:
    """Whether `module` can take a BatchNorm that follows it: an `nn.Conv2d`, or a layer that folds it."""
    return isinstance(module, nn.Conv2d) or (isinstance(module, Deployable) and module.folds_batchnorm)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm2d) module names where the BatchNorm is the only consumer of the convolution: an
    `nn.Conv2d` or a layer that folds BatchNorm itself (`folds_batchnorm`,
    [`Deployable`][padnet.layers.conv_base.Deployable]).

    Raises:
        ConfigError: the model cannot be traced by `torch.fx` (use `fold_bn=False`).
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
            and _absorbs_batchnorm(modules.get(src.target))
        ):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def deploy(model: nn.Module, fold_bn: bool = True, inplace: bool = False) -> nn.Module:
    """The inference form of `model`: BatchNorm folded and every layer in the compact form it states.

    Each [`Deployable`][padnet.layers.conv_base.Deployable] layer is asked for its form with `deployed(bn)`:
    DY-Conv, CondConv, PAD-Net (any granularity) and SD-Conv become a
    [`DeployedConv2d`][padnet.layers.deployed.DeployedConv2d] with λs, λd and the following BatchNorm folded in;
    every [`MoEFeedForward`][padnet.layers.moe.MoEFeedForward] (MoE, PAD-MoE, MoE-P) becomes a
    [`DeployedMoE`][padnet.layers.moe.DeployedMoE] and every [`ExpertBank`][padnet.layers.experts.ExpertBank]
    holds one, computational parameters merged once. A layer with no compact form (ODConv, DCD and their PAD-Net
    forms: `deployed` returns None) is kept in its training form, and one warning names the types and counts
    ("deploy: 12 ODConv2d layers have no compact form and are kept in their training form"). Static
    `nn.Conv2d` + BatchNorm pairs are fused. The result is in eval mode and computes what `model.eval()`
    computes (within float rounding).

    Args:
        model: a trained model.
        fold_bn: fold each BatchNorm2d that directly and only follows a convolution that can absorb it (found
            with torch.fx; a model without BatchNorm2d is not traced).
        inplace: modify `model` instead of a copy.

    Raises:
        ConfigError: `model` is not an `nn.Module`; `fold_bn` on a model with BatchNorm2d that torch.fx
            cannot trace.
    """
    check_module(model, "deploy")
    reset_aux_losses(model)  # the MoE losses of the last forward are autograd results: not copied
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    pairs = conv_bn_pairs(out) if fold_bn and has_bn else []
    bns = dict(pairs)
    folded, replaced, kept = [], [], Counter()
    for name, module in list(out.named_modules()):
        if any(name.startswith(f"{done}.") for done in replaced):  # inside a layer already deployed
            continue
        bn = out.get_submodule(bns[name]) if name in bns else None
        if isinstance(module, Deployable):
            new = module.deployed(bn)
            if new is None:
                kept[type(module).__name__] += 1
                continue
            replaced.append(name)
        elif bn is not None:  # an nn.Conv2d
            new = fuse_conv_bn_eval(module, bn)
        else:
            continue
        out.set_submodule(name, new.eval())
        if bn is not None:
            out.set_submodule(bns[name], nn.Identity())
            folded.append(bns[name])
    if kept:
        counts = ", ".join(f"{n} {kind}" for kind, n in kept.most_common())
        warnings.warn(
            f"deploy: {counts} layers have no compact form and are kept in their training form",
            stacklevel=3,  # the caller of deploy, past the no_grad wrapper
        )
    out.padnet_deployed = {
        "folded_bn": folded,
        "fused_convs": [c for c, b in pairs if isinstance(out.get_submodule(c), nn.Conv2d)],
    }
    return out
