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
