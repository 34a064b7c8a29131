"""Pretrained weights for padnet's ResNet and MobileNetV2, from the key layouts people have.

A state dict is read from a safetensors file, a `torch.save` file of tensors only (`torch.load` with
`weights_only=True`: nothing is unpickled) or given as a mapping. Its layout is recognised by name and each key
is renamed, never matched by position:

* `padnet` — this package's own names (`stem.0`, `layer1.0.conv1`, `layer1.0.shortcut.0`, `fc`;
  `features.N.block.A.B`, `classifier`).
* `torchvision` — `conv1`/`bn1`, `layerN.M.downsample.{0,1}`, `fc` (ResNet; timm's ResNets use the same
  names); `features.0.{0,1}`, `features.N.conv.…`, `features.18`, `classifier.1` (MobileNetV2).
* `timm` — `conv_stem`/`bn1`, `blocks.S.B.{conv_pw,conv_dw,conv_pwl,bn1,bn2,bn3}`, `conv_head`/`bn2`,
  `classifier` (MobileNetV2).

A classifier whose shape differs (another number of classes) keeps its fresh initialisation, as timm does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from padnet.errors import CheckpointError, ConfigError, deprecated, first_line

LAYOUTS = ("padnet", "torchvision", "timm")
HEADS = ("fc.", "classifier.")


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """Tensors from a mapping, a `.safetensors` file or a tensors-only `torch.save` file.

    Raises:
        CheckpointError: a missing or unreadable file, or one that holds more than tensors.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"pretrained weights not found: {path}")
        try:
            if path.suffix == ".safetensors":
                state = load_file(str(path))
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - the weights-only unpickler raises UnpicklingError, EOFError, ...
            reason = first_line(exc)
            raise CheckpointError(f"{path} is not a readable state dict ({reason})") from None
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = dict(state["state_dict"])  # a training checkpoint that wraps the weights
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError("pretrained weights must be a mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_layout(keys) -> str:
    """`"padnet"`, `"torchvision"` or `"timm"` from the key names; ConfigError if none fits."""
    keys = set(keys)
    if "stem.0.weight" in keys:
        return "padnet"
    if "conv_stem.weight" in keys:
        return "timm"
    if "conv1.weight" in keys or "features.0.0.weight" in keys:
        return "torchvision"
    first = min(keys) if keys else "(none)"
    raise ConfigError(
        f"unrecognised pretrained key layout (first key {first!r}); expected padnet, torchvision or "
        "timm names for ResNet or MobileNetV2"
    )


def _resnet_key(key: str) -> str:
    key = re.sub(r"^conv1\.", "stem.0.", key)
    key = re.sub(r"^bn1\.", "stem.1.", key)
    return re.sub(r"^(layer\d+\.\d+)\.downsample\.", r"\1.shortcut.", key)


def _torchvision_mobilenet(keys) -> dict[str, str]:
    blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(r"features\.(\d+)\.conv\.", k))})
    last = max(blocks) + 1 if blocks else 18
    names = {}
    for key in keys:
        if m := re.match(r"features\.0\.([01])\.(.+)", key):
            names[key] = f"stem.{m.group(1)}.{m.group(2)}"
        elif m := re.match(rf"features\.{last}\.([01])\.(.+)", key):
            names[key] = f"features.{last - 1}.{m.group(1)}.{m.group(2)}"
        elif m := re.match(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key):
            block, part, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            expanded = any(k.startswith(f"features.{block}.conv.1.0.") for k in keys)  # two ConvBNReLU groups
            groups = 2 if expanded else 1
            if part < groups:  # a conv-BN-ReLU group: its .0 / .1 keep their index
                names[key] = f"features.{block - 1}.block.{part}.{rest}"
            else:  # the projection conv (part = groups) and its BatchNorm (part = groups + 1)
                names[key] = f"features.{block - 1}.block.{groups}.{part - groups}.{rest}"
        elif m := re.match(r"classifier\.1\.(.+)", key):
            names[key] = f"classifier.{m.group(1)}"
    return names


_TIMM_IR = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "conv_pwl": "2.0", "bn3": "2.1"}
_TIMM_DS = {"conv_dw": "0.0", "bn1": "0.1", "conv_pw": "1.0", "bn2": "1.1"}


def _timm_mobilenet(keys) -> dict[str, str]:
    order = sorted(
        {(int(m.group(1)), int(m.group(2))) for k in keys if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
    )
    index = {pos: i for i, pos in enumerate(order)}
    names = {}
    for key in keys:
        if m := re.match(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)", key):
            pos = (int(m.group(1)), int(m.group(2)))
            separable = not any(k.startswith(f"blocks.{pos[0]}.{pos[1]}.conv_pwl.") for k in keys)
            part = (_TIMM_DS if separable else _TIMM_IR).get(m.group(3))
            if part is not None:
                names[key] = f"features.{index[pos]}.block.{part}.{m.group(4)}"
        elif m := re.match(r"(conv_stem|bn1|conv_head|bn2|classifier)\.(.+)", key):
            target = {
                "conv_stem": "stem.0",
                "bn1": "stem.1",
                "conv_head": f"features.{len(order)}.0",
                "bn2": f"features.{len(order)}.1",
                "classifier": "classifier",
            }[m.group(1)]
            names[key] = f"{target}.{m.group(2)}"
    return names


def to_padnet_names(state: dict[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """`state` with its keys renamed to padnet's for model `model_name`.

    Raises:
        ConfigError: an unknown layout, a key that has no padnet name (naming it), or torchvision / timm
            weights of ResNet-50, which are ResNet v1.5 (stride on the 3×3 convolution) while padnet's is v1.
    """
    layout = detect_layout(state)
    if layout == "padnet":
        return dict(state)
    mobilenet = model_name.lower() == "mobilenetv2"
    if not mobilenet and model_name.lower() == "resnet50":
        raise ConfigError(
            "torchvision and timm ResNet-50 weights are ResNet v1.5 (stride on the 3x3 convolution); "
            "padnet's resnet50 is v1 (stride on the first 1x1, the papers' 3.86 GMACs)"
        )
    if mobilenet:
        names = _timm_mobilenet(state) if layout == "timm" else _torchvision_mobilenet(state)
    else:
        names = {k: _resnet_key(k) for k in state}
    unmapped = [k for k in state if k not in names]
    if unmapped:
        raise ConfigError(
            f"pretrained key {unmapped[0]!r} ({layout} layout) has no place in padnet's {model_name}"
        )
    return {names[k]: v for k, v in state.items()}


@torch.no_grad()
def load_pretrained_weights(model: nn.Module, source, model_name: str) -> list[str]:
    """Copy pretrained weights into `model` (a static padnet ResNet / MobileNetV2), mapped by name.

    Returns the classifier keys left at their fresh initialisation (another number of classes). BatchNorm
    `num_batches_tracked` counters absent from the source stay 0.

    Raises:
        CheckpointError: unreadable weights.
        ConfigError: an unknown layout, or the first key that does not fit (no padnet name, a shape that differs,
            a weight the model needs and the source lacks), named.
    """
    state = to_padnet_names(read_state_dict(source), model_name)
    own = model.state_dict()
    kept_fresh = []
    for key, value in state.items():
        if key not in own:
            raise ConfigError(f"pretrained key {key!r} has no place in padnet's {model_name}")
        if tuple(value.shape) != tuple(own[key].shape):
            if key.startswith(HEADS):
                kept_fresh.append(key)
                continue
            raise ConfigError(
                f"pretrained key {key!r} has shape {tuple(value.shape)}; padnet's {model_name} needs "
                f"{tuple(own[key].shape)} (check in_chans, width and stem)"
            )
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(f"pretrained weights lack {missing[0]!r} that padnet's {model_name} needs")
    for key, value in state.items():
        if key not in kept_fresh:
            own[key].copy_(value.to(own[key].dtype))
    return kept_fresh


def load_pretrained(model: nn.Module, source, model_name: str) -> list[str]:
    """Deprecated alias of [`load_pretrained_weights`][padnet.models.pretrained.load_pretrained_weights], removed
    in 0.3.0 (the name clashed with [`padnet.load_pretrained`][padnet.adapter.model.load_pretrained], which reads
    a padnet model folder). Warns with a `FutureWarning`, then does the same."""
    deprecated("padnet.models.load_pretrained", "padnet.models.load_pretrained_weights")
    return load_pretrained_weights(model, source, model_name)
