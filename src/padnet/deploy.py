"""Deploy a trained model: fold BatchNorm and turn every dynamic convolution into its compact inference form,
then save and load it as safetensors + a small JSON header, loadable with padnet and torch alone.

File layout (``save_deployed``): the state of the deployed model, except that an ``"elements"`` layer
stores its static kernel only at static positions (``…static_weight.values``, empty when it is all zero)
and its dynamic positions as a bit mask (``…dynamic_index.bits``, one bit per kernel element), and dynamic
factors that are mostly zero (SD-Conv's pruned weights) are stored as their non-zero values
(``…dynamic_weight.values``) with one bit per factor (``…dynamic_weight.bits``), so the file size follows the
compact parameter count. The header (metadata key ``padnet``) holds the format, the ``create_model``
arguments, each deployed layer's layout and the folded BatchNorm layers.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import CheckpointError, ConfigError
from .fileio import atomic_path
from .layers.conv_base import DynamicConvBase
from .layers.deployed import DeployedConv2d
from .layers.dynamic_conv import DynamicConv2d
from .layers.moe import DeployedMoE, MoEFeedForward
from .moe_convert import reset_aux_losses

FORMAT = "padnet-deployed-1"


class _LeafTracer(fx.Tracer):
    """Traces a model with every dynamic convolution as one opaque call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, DynamicConvBase) or super().is_leaf_module(m, qualname)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm2d) module names where the BatchNorm is the only consumer of the convolution.

    Raises ConfigError when the model cannot be traced by ``torch.fx`` (use ``fold_bn=False``).
    """
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types for untraceable control flow
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot trace the model to fold BatchNorm ({reason}); pass fold_bn=False") from None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules.get(src.target), (nn.Conv2d, DynamicConv2d))):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def deploy(model: nn.Module, fold_bn: bool = True, inplace: bool = False) -> nn.Module:
    """The inference form of ``model``: BatchNorm folded, dynamic convolutions compact, MoE experts merged.

    Every :class:`~padnet.layers.DynamicConv2d` (DY-Conv, CondConv, PAD-Net in any granularity) becomes a
    :class:`~padnet.layers.deployed.DeployedConv2d` with λs, λd and the following BatchNorm folded in;
    static ``nn.Conv2d`` + BatchNorm pairs are fused; ODConv and DCD layers are kept as they are; every
    :class:`~padnet.layers.moe.MoEFeedForward` (MoE, PAD-MoE, MoE-P) becomes a
    :class:`~padnet.layers.moe.DeployedMoE` with its computational parameters merged once. The result is in
    eval mode and computes what ``model.eval()`` computes (within float rounding).

    Args:
        model: a trained model.
        fold_bn: fold each BatchNorm2d that directly and only follows a convolution (found with torch.fx; a
            model without BatchNorm2d is not traced).
        inplace: modify ``model`` instead of a copy.

    Raises:
        ConfigError: ``fold_bn`` on a model with BatchNorm2d that torch.fx cannot trace.
    """
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
        if not isinstance(module, (nn.Conv2d, DynamicConv2d)) or (isinstance(module, nn.Conv2d) and name not in bns):
            continue
        bn = out.get_submodule(bns[name]) if name in bns else None
        if isinstance(module, nn.Conv2d):
            out.set_submodule(name, fuse_conv_bn_eval(module, bn))
        else:
            out.set_submodule(name, DeployedConv2d.from_layer(module, bn).eval())
        if bn is not None:
            out.set_submodule(bns[name], nn.Identity())
            folded.append(bns[name])
    out.padnet_deployed = {"folded_bn": folded, "fused_convs": [c for c, b in pairs
                                                                  if isinstance(out.get_submodule(c), nn.Conv2d)]}
    return out


# ----------------------------------------------------------------------------------------- files

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
    """Store ``tensors[key]`` as its non-zero values + one bit per element when that is smaller (SD-Conv's
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


def _encode(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
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


def _decode(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def save_deployed(model: nn.Module, path: str | Path, arch: dict | None = None) -> Path:
    """Write a deployed model (from :func:`deploy`) to ``path`` as safetensors, atomically.

    ``arch``: the ``create_model`` arguments that rebuild the architecture; defaults to the ones
    ``create_model`` recorded on the model (``model.padnet_config``). Without them, ``load_deployed`` needs
    the architecture passed in. Raises ConfigError for a model that was not deployed.
    """
    info = getattr(model, "padnet_deployed", None)
    if info is None:
        raise ConfigError("save_deployed takes the output of padnet.deploy(model)")
    layers = {n: m.config for n, m in model.named_modules() if isinstance(m, DeployedConv2d)}
    meta = {"format": FORMAT, "arch": arch or getattr(model, "padnet_config", None), "layers": layers, **info}
    with atomic_path(path) as tmp:
        save_file(_encode(model), str(tmp), metadata={"padnet": json.dumps(meta)})
    return Path(path)


def _skeleton(model: nn.Module, meta: dict) -> nn.Module:
    """Turn a training-form model of the right architecture into an empty deployed one shaped like ``meta``."""
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
        model.set_submodule(name, DeployedConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, attention=layer.attention, **cfg))
    model.padnet_deployed = {"folded_bn": meta["folded_bn"], "fused_convs": meta["fused_convs"]}
    return model.eval()


def load_deployed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model written by :func:`save_deployed`, in eval mode.

    ``model``: a training-form model of the same architecture (e.g. from ``convert``); by default it is
    rebuilt with ``create_model`` from the arguments in the file. Raises CheckpointError for a missing,
    corrupt or foreign file, or one that does not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"deployed model not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["padnet"])
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable padnet file ({reason})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} is not a deployed padnet model (format {found!r})")
    if model is None:
        if not meta.get("arch"):
            raise CheckpointError(f"{path} does not record its architecture: pass model=")
        from .models import create_model

        legacy = {"semantics": "mask_semantics", "strategy": "mask_strategy"}  # option names before padnet 0.2
        model = create_model(**{legacy.get(k, k): v for k, v in meta["arch"].items()})
    try:
        model = _skeleton(model, meta)
        model.load_state_dict(_decode(model, tensors))
    except (RuntimeError, KeyError, AttributeError, IndexError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} does not fit the architecture ({reason})") from None
    return model
