"""The compact file encoding of MoE layers: PAD-MoE and MoE-P experts stored as each expert's dynamic factors only
at the mask's dynamic positions (`…experts.values` (E, ‖M‖₀), the mask as bits `…experts.bits`) and, for
PAD-MoE, the static parameters Θ̄ only at the static positions (`…neuron_mode.static.values` (|M| − ‖M‖₀,)): one
shared static part plus κ of every expert, ((1 − κ) + κ·E)/E of the experts' size and the mask bits. Used by
[`padnet.saving.folder`][padnet.saving.folder]; Θ̄ reads back as zero at dynamic positions, where it takes no part (1 − M = 0)."""

from __future__ import annotations

import torch
from torch import nn

from padnet.layers.moe import MoEFeedForward, moe_layers
from padnet.saving.conv_codec import pack_bits, unpack_bits
from padnet.saving.folder import state_tensors

_MODES = {"experts": "neuron_mode", "expert_bias": "bias_mode"}  # masked tensor -> its mode


def moe_masks(layer: MoEFeedForward) -> dict[str, torch.Tensor]:
    """Boolean masks broadcast to one expert's tensor shape, for `experts` and `expert_bias`."""
    bias_shape = layer.expert_bias.shape[1:]
    return {
        "experts": layer.neuron_mode.element_mask()[0].bool().cpu(),
        "expert_bias": layer.bias_mode.element_mask()[0].reshape(bias_shape).bool().cpu(),
    }


def encode_moe(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state ([`padnet.saving.folder.state_tensors`][padnet.saving.folder.state_tensors]) with every PAD-MoE / MoE-P layer's experts and
    output biases stored as their dynamic values (E, ‖M‖₀) and the mask as bits; the mask buffers are left out
    (the bits hold them). The full expert tensors are never copied: their values are gathered from the layer's
    own, so encoding costs about the encoded size in memory."""
    encoded: dict[str, torch.Tensor] = {}
    replaced: set[str] = set()
    for name, layer in moe_layers(model):
        if layer.mode == "dynamic":
            continue
        for key, mask in moe_masks(layer).items():
            mode = getattr(layer, _MODES[key])
            full = getattr(layer, key).detach()  # (E, *shape)
            replaced |= {f"{name}.{key}", f"{name}.{_MODES[key]}.mask"}  # the bits below hold the mask
            encoded[f"{name}.{key}.bits"] = pack_bits(mask.reshape(-1))
            mask = mask.to(full.device)
            encoded[f"{name}.{key}.values"] = full[:, mask].cpu().contiguous()  # (E, ‖M‖₀)
            if mode.static is not None:  # PAD-MoE: Θ̄ at the static positions only
                replaced.add(f"{name}.{_MODES[key]}.static")
                static = mode.static.detach().reshape(mask.shape)
                encoded[f"{name}.{_MODES[key]}.static.values"] = static[~mask].cpu().contiguous()
    return {**state_tensors(model, leave_out=replaced), **encoded}


def decode_moe(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of [`encode_moe`][padnet.saving.moe_codec.encode_moe] for `model`'s MoE layers (`tensors` is
    changed and returned): full expert tensors (zero at static positions) and mask buffers.

    Raises:
        KeyError: a tensor is missing.
    """
    for name, layer in moe_layers(model):
        if layer.mode == "dynamic":
            continue
        for key, mode_name in _MODES.items():
            target = getattr(layer, key)
            mask = unpack_bits(tensors.pop(f"{name}.{key}.bits"), target[0].numel()).reshape(target.shape[1:])
            values = tensors.pop(f"{name}.{key}.values")
            full = torch.zeros(target.shape, dtype=values.dtype)
            full[:, mask] = values
            tensors[f"{name}.{key}"] = full
            mode = getattr(layer, mode_name)
            if mode.static is not None:
                # Θ̄ takes no part at dynamic positions (1 − M = 0); it reads back as the experts' mean there, the
                # estimate a later partition to a lower κ starts from
                static = full.mean(0)
                static[~mask] = tensors.pop(f"{name}.{mode_name}.static.values")
                tensors[f"{name}.{mode_name}.static"] = static.reshape(mode.static.shape)
            # back to the mask buffer's shape: a filter or neuron mask keeps one element per block
            reduced = mask.reshape(mode.shape)[
                tuple(slice(None) if n > 1 else slice(0, 1) for n in mode.mask.shape[1:])
            ].reshape(mode.mask.shape)
            if not torch.equal(reduced.expand(1, *mode.shape).reshape(mask.shape), mask):
                raise ValueError(f"the mask bits of {name}.{key} do not fit its {mode.granularity} masks")
            tensors[f"{name}.{mode_name}.mask"] = reduced.float()
    return tensors
