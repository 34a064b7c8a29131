"""The compact file encoding of deployed convolutions ([`DeployedConv2d`][padnet.layers.deployed.DeployedConv2d]).

An `"elements"` layer stores its static kernel only at static positions (`…static_weight.values`, empty
when it is all zero) and its dynamic positions as a bit mask (`…dynamic_index.bits`, one bit per kernel
element); dynamic factors that are mostly zero (SD-Conv's pruned weights) are stored as their non-zero values
(`…dynamic_weight.values`) with one bit per factor (`…dynamic_weight.bits`). The file size thus follows the
compact parameter count. Used by [`padnet.saving.folder`][padnet.saving.folder].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from padnet.errors import CheckpointError
from padnet.layers.deployed import DeployedConv2d
from padnet.layers.dynamic_conv import DynamicConv2d
from padnet.saving.folder import state_tensors


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Boolean (n,) → uint8 (⌈n/8⌉,), most significant bit first."""
    n = flags.numel()
    padded = torch.zeros(math.ceil(n / 8) * 8, dtype=torch.uint8)
    padded[:n] = flags.to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (padded.reshape(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)[:n].bool()


def _pack_zeros(tensors: dict[str, torch.Tensor], key: str) -> None:
    """Store `tensors[key]` as its non-zero values + one bit per element when that is smaller (SD-Conv's
    pruned weights)."""
    factors = tensors[key]
    kept = factors != 0
    if (~kept).sum() * 32 > kept.numel():
        del tensors[key]
        tensors[f"{key}.bits"] = pack_bits(kept.reshape(-1))
        tensors[f"{key}.values"] = factors[kept].clone()


def _unpack_zeros(tensors: dict[str, torch.Tensor], key: str, shape: torch.Size) -> None:
    values = tensors.pop(f"{key}.values", None)
    if values is not None:
        kept = unpack_bits(tensors.pop(f"{key}.bits"), shape.numel()).reshape(shape)
        tensors[key] = torch.zeros(shape, dtype=values.dtype).masked_scatter(kept, values)


def encode_deployed(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a deployed model ([`padnet.deploy`][padnet.deployment.deploy.deploy]) in the compact encoding, on the CPU."""
    tensors = state_tensors(model)
    for name, layer in model.named_modules():
        if not isinstance(layer, DeployedConv2d):
            continue
        _pack_zeros(tensors, f"{name}.dynamic_weight")
        if layer.layout != "elements":
            continue
        dynamic = torch.zeros(layer.static_weight.numel(), dtype=torch.bool)
        dynamic[tensors.pop(f"{name}.dynamic_index")] = True
        tensors[f"{name}.dynamic_index.bits"] = pack_bits(dynamic)
        static = tensors[f"{name}.static_weight"].reshape(-1)
        if not static[dynamic].any():  # zero at dynamic positions (shared or filter masks): store the rest
            del tensors[f"{name}.static_weight"]
            # no values at all when the static kernel is zero (SD-Conv, zero semantics)
            values = static[~dynamic] if static.any() else static[:0]
            tensors[f"{name}.static_weight.values"] = values.clone()
    return tensors


def decode_deployed(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn `tensors` (from [`encode_deployed`][padnet.saving.conv_codec.encode_deployed]) back into `model`'s state dict keys and shapes, in place."""
    for name, layer in model.named_modules():
        if not isinstance(layer, DeployedConv2d):
            continue
        _unpack_zeros(tensors, f"{name}.dynamic_weight", layer.dynamic_weight.shape)
        if layer.layout != "elements":
            continue
        numel = layer.static_weight.numel()
        dynamic = unpack_bits(tensors.pop(f"{name}.dynamic_index.bits"), numel)
        tensors[f"{name}.dynamic_index"] = dynamic.nonzero().flatten()
        values = tensors.pop(f"{name}.static_weight.values", None)
        if values is not None:
            static = torch.zeros(numel, dtype=values.dtype)
            if values.numel():  # empty: an all-zero static kernel
                static[~dynamic] = values
            tensors[f"{name}.static_weight"] = static.reshape(layer.static_weight.shape)
    return tensors


def deployed_skeleton(model: nn.Module, meta: dict) -> nn.Module:
    """Turn a training-form model of the right architecture into an empty deployed one shaped like `meta`."""
    for name in meta["fused_convs"]:
        conv = model.get_submodule(name)
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
    for name in meta["folded_bn"]:
        model.set_submodule(name, nn.Identity())
    for name, cfg in meta["layers"].items():
        layer = model.get_submodule(name)
        if not isinstance(layer, DynamicConv2d):
            raise CheckpointError(f"the file's layer {name} is {type(layer).__name__} in this architecture")
        _check_layer_config(name, cfg, layer)
        model.set_submodule(
            name,
            DeployedConv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups,
                attention=layer.attention,
                **cfg,
            ),
        )
    model.padnet_deployed = {"folded_bn": meta["folded_bn"], "fused_convs": meta["fused_convs"]}
    return model.eval()


def _check_layer_config(name: str, cfg, layer: DynamicConv2d) -> None:
    """CheckpointError unless `cfg` (read from disk) has the keys and kinds of `DeployedConv2d.config` and a
    dynamic count the layer's kernel can hold."""
    kinds = {"layout": str, "num_kernels": int, "num_dynamic": int, "dynamic_bias": bool, "static_bias": bool}
    if not (
        isinstance(cfg, dict)
        and set(cfg) == set(kinds)
        and all(type(cfg[k]) is kind for k, kind in kinds.items())
    ):  # exact kinds: True is not an int here
        raise CheckpointError(f"the deployed layout of layer {name} is malformed")
    if cfg["num_kernels"] != layer.num_kernels or not 0 <= cfg["num_dynamic"] <= math.prod(
        layer.kernel_shape
    ):
        raise CheckpointError(
            f"the deployed layout of layer {name} does not fit it ({cfg['num_kernels']} kernels, "
            f"{cfg['num_dynamic']} dynamic positions)"
        )
