"""A model-free stand-in reranker (``[reranker] model = "stand-in"``): word overlap, no torch, microseconds."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from tritonrag.reranking.rescorer import split_scores

WORD = re.compile(r"\w+")


def words(text: str) -> frozenset[str]:
    """The lower-cased words of ``text``."""
    return frozenset(WORD.findall(text.lower()))


def overlap(query: frozenset[str], passage: frozenset[str]) -> float:
    """Cosine similarity of the two word sets: shared words / sqrt(|query| * |passage|), in [0, 1]."""
    if not query or not passage:
        return 0.0
    return len(query & passage) / math.sqrt(len(query) * len(passage))


class StandInRescorer:
    """Deterministic scores from shared words: a passage repeating the question's words ranks first. Measures the
    serving path without a model, and stands in for one in tests."""

    kind = "stand-in"

    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]]) -> list[np.ndarray]:
        flat = [overlap(words(q), words(p)) for q, group in zip(queries, passages, strict=True) for p in group]
        return split_scores(np.array(flat, dtype=np.float32), passages)
