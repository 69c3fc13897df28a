"""Shared fixtures: tiny random-weight models (no download) and the default model."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("PEFT_TEACH_PROGRESS", "0")


@pytest.fixture(scope="session")
def tiny_bert():
    """A 2-layer BERT with random weights: fast, and needs no download."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from peft_teach.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def default_encoder():
    from peft_teach.models import load_base_model

    return load_base_model()
