"""Fixtures shared by several test files."""

from __future__ import annotations

import os

import pytest
import torch

from hf_folders import save_with_minilm_tokenizer


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer BERT (hidden 16, FFN 32) with MiniLM's tokenizer, saved as a local model folder (skips without
    the nlp extra)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    return str(save_with_minilm_tokenizer(transformers.BertForSequenceClassification(config), folder))


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz",
        action="store_true",
        help="run tests/test_fuzz.py with 20 times the examples, not derandomised",
    )


def pytest_configure(config):
    if config.getoption("--fuzz"):
        os.environ["PADNET_FUZZ"] = "1"  # read by tests/test_fuzz.py when it is imported
