"""The Rescorer protocol and the flatten/split helpers every implementation shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Rescorer(Protocol):
    """Scores passages against queries; higher is more relevant."""

    kind: str  # "bi-encoder", "cross-encoder" or "stand-in"

    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """For each query ``queries[i]``, a float32 array with one score per passage of ``passages[i]``, in order.

        All pairs of all requests go through the model together (one batched forward pass), then are split back.
        """
        ...


def pairs_of(queries: Sequence[str], passages: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Every (query, passage) pair, request after request."""
    if len(queries) != len(passages):
        raise ValueError(f"{len(queries)} queries but {len(passages)} passage lists")
    return [(query, passage) for query, group in zip(queries, passages) for passage in group]


def split_scores(flat: np.ndarray, passages: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Cut the scores of all pairs back into one float32 array per request."""
    counts = [len(group) for group in passages]
    flat = np.asarray(flat, dtype=np.float32).reshape(-1)
    if flat.size != sum(counts):
        raise ValueError(f"{flat.size} scores for {sum(counts)} pairs")
    return np.split(flat, np.cumsum(counts)[:-1]) if counts else []
