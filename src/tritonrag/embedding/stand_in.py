"""A model-free stand-in embedder (``[embedder] model = "stand-in"`` or ``"stand-in:DIM"``): each text's hash
seeds a vector, so serving-path benchmarks can measure everything but the model (no torch is imported)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

STAND_IN = "stand-in"
STAND_IN_DIMENSION = 384  # all-MiniLM-L6-v2's, so the stand-in queries the sample knowledge base


def stand_in_dimension(model: str) -> int | None:
    """The vector size when ``model`` names the stand-in (``stand-in`` or ``stand-in:DIM``), else None."""
    name, _, dim = model.partition(":")
    if name != STAND_IN:
        return None
    if not dim:
        return STAND_IN_DIMENSION
    if not dim.isdigit() or not 1 <= int(dim) <= 65536:
        raise ValueError(f"[embedder] model = {model!r}: write {STAND_IN!r} or '{STAND_IN}:DIM' with DIM 1 to 65536")
    return int(dim)


class StandInEncoder:
    """Deterministic model-free vectors: a hash of (instruction, text) seeds a Gaussian vector (microseconds).

    Equal texts get equal vectors and different texts unrelated ones; the ranking means nothing, the cost is
    the point. Tokens are whitespace-separated words, and the whole text is read (no truncation).
    """

    def __init__(self, dimension: int, normalize: bool = True) -> None:
        self.dimension = dimension
        self.normalize = normalize

    def vector(self, text: str, instruction: str = "") -> np.ndarray:
        digest = hashlib.blake2b(f"{instruction}\0{text}".encode(), digest_size=8).digest()
        v = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(self.dimension, np.float32)
        return v / np.linalg.norm(v) if self.normalize else v

    def encode(self, texts: Sequence[str], instruction: str = "") -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.vector(text, instruction)
        return out

    @staticmethod
    def token_spans(text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]
