"""Shared test set-up: Triton runs in its CPU interpreter, torch is seeded and kept to the machine's cores."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any @triton.jit launch

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def embedded():
    """The embedded default model (dithered reference) and its tokenizer, loaded once per session."""
    from qlab.model import load_model

    return load_model()


@pytest.fixture
def tiny_llama():
    """A 2-block random Llama (hidden 64) for fast tests of the model plumbing."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()
