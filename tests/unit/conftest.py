"""Shared fixtures for the unit tests: isolate them from the caller's tritonrag environment."""

import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch):
    """A developer's $TRITONRAG_CONFIG must not change what the defaults tests see."""
    monkeypatch.delenv("TRITONRAG_CONFIG", raising=False)


def whitespace_spans(text):
    """A stand-in for the embedder's tokenizer: one token per whitespace-separated word."""
    return [m.span() for m in re.finditer(r"\S+", text)]


@pytest.fixture
def token_spans():
    return whitespace_spans
