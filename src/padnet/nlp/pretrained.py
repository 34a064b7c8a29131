"""Save and load converted Hugging Face encoders (dense, MoE, PAD-MoE, MoE-P), in the spirit of PEFT's
``save_pretrained`` / ``from_pretrained``.

A folder holds the Hugging Face ``config.json`` (and the tokenizer, when given), ``padnet_moe.json`` (the
conversion: :func:`~padnet.moe_convert.replace_ffns`'s arguments and the model class) and
``model.safetensors``. For PAD-MoE and MoE-P the experts are stored as the static parameters, dense (one FFN
per layer), and each expert's dynamic factors only at the mask's dynamic positions (``…experts.values``
(E, ‖M‖₀) with the mask as bits, ``…experts.bits``). :func:`from_pretrained` merges them into per-expert
weights once (:class:`~padnet.layers.moe.DeployedMoE`), or rebuilds the training form with
``deployed=False``.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..deploy import deploy
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, write_json
from ..layers.moe import DeployedMoE
from ..moe_codec import decode_moe, encode_moe, moe_masks
from ..moe_convert import moe_layers, replace_ffns

FORMAT = "padnet-moe-1"
WEIGHTS = "model.safetensors"
RECORD = "padnet_moe.json"


def save_pretrained(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """Write ``model`` (a Hugging Face ``PreTrainedModel``, converted with ``padnet.get_pad_model`` / ``padnet.convert`` or dense) to
    ``directory``, each file atomically. Returns the directory.

    Raises ConfigError for a model without a Hugging Face config, or one already deployed (save the training
    form; ``from_pretrained`` deploys it).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise ConfigError("save_pretrained takes a Hugging Face model (with .config)")
    if any(isinstance(m, DeployedMoE) for m in model.modules()):
        raise ConfigError("save_pretrained takes the training form; this model was deployed (its experts are "
                          "merged), so save the model before padnet.deploy / from_pretrained(deployed=True)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "config.json") as tmp:
        Path(tmp).write_text(config.to_json_string())
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    record = {"format": FORMAT, "class": type(model).__name__, "conversion": getattr(model, "padnet_moe", None)}
    masks = {name: {k: int(m.sum()) for k, m in moe_masks(layer).items()}
             for name, layer in moe_layers(model) if layer.mode != "dynamic"}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(encode_moe(model), str(tmp), metadata={"padnet": json.dumps({**record, "dynamic": masks})})
    write_json(directory / RECORD, record)
    return directory


def _model_class(name: str):
    import transformers

    cls = getattr(transformers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"the saved model class {name!r} is not a transformers model class")
    return cls


def from_pretrained(directory: str | Path, deployed: bool = True) -> nn.Module:
    """Load a folder written by :func:`save_pretrained`, in eval mode.

    ``deployed``: merge PAD-MoE / MoE-P experts into per-expert weights once (:class:`DeployedMoE`);
    ``False`` keeps the training form (masks, static parameters, scale factors) to train further.

    Raises CheckpointError for a missing, corrupt or foreign folder or one that does not fit its config.
    """
    from transformers import AutoConfig

    directory = Path(directory)
    weights = directory / WEIGHTS
    if not (directory / RECORD).is_file() or not weights.is_file():
        raise CheckpointError(f"{directory} is not a padnet model folder (needs {RECORD} and {WEIGHTS})")
    try:
        record = json.loads((directory / RECORD).read_text())
        with safe_open(str(weights), framework="pt") as fh:
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        config = AutoConfig.from_pretrained(str(directory))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{directory} is not a readable padnet model folder ({reason})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{directory / RECORD} is not a padnet MoE record (format {record.get('format')!r})"
                              if isinstance(record, dict) else f"{directory / RECORD} is not a padnet MoE record")
    model = _model_class(record.get("class"))(config)
    conversion = record.get("conversion")
    try:
        if conversion:
            replace_ffns(model, **conversion)
        model.load_state_dict(decode_moe(model, tensors))
    except (RuntimeError, KeyError, TypeError, IndexError, ConfigError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{directory} does not fit its architecture ({reason})") from None
    return deploy(model, inplace=True) if deployed else model.eval()
