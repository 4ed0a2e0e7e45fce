"""Fusing the dense and the sparse candidate lists of one query into one ranking (pure functions).

Reciprocal-rank fusion (Cormack et al., 2009) scores a chunk by ``sum(weight / (rrf_k + rank))`` over the lists
that hold it, so it needs no comparable scores; weighted fusion min-max normalises each list's scores to [0, 1]
and adds them with their weights (a chunk missing from a list gets 0 there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FUSIONS = ("rrf", "weighted")
SIDES = ("dense", "sparse")


@dataclass(frozen=True)
class Found:
    """Where one side found a chunk: its 1-based rank and score there (cosine similarity, or BM25)."""

    rank: int
    score: float


@dataclass(frozen=True)
class Fused:
    chunk_id: int
    score: float
    found: dict[str, Found]  # by side


def _normalised(candidates: Sequence[tuple[int, float]]) -> dict[int, float]:
    if not candidates:
        return {}
    scores = [s for _, s in candidates]
    low, high = min(scores), max(scores)
    span = high - low
    return {cid: (s - low) / span if span > 0 else 1.0 for cid, s in candidates}


def fuse(lists: dict[str, Sequence[tuple[int, float]]], k: int, method: str = "rrf", rrf_k: float = 60.0,
         weights: dict[str, float] | None = None) -> list[Fused]:
    """The best ``k`` chunks of ``lists`` (side -> (chunk id, score) best first), fused by ``method``; ties go to
    the chunk with the better best rank, then the smaller id (a stable order)."""
    if method not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {method!r}")
    weights = weights or {}
    found: dict[int, dict[str, Found]] = {}
    scores: dict[int, float] = {}
    for side, candidates in lists.items():
        weight = weights.get(side, 1.0)
        normalised = _normalised(candidates) if method == "weighted" else {}
        for rank, (chunk_id, score) in enumerate(candidates, start=1):
            if chunk_id < 0 or side in found.get(chunk_id, {}):
                continue
            found.setdefault(chunk_id, {})[side] = Found(rank, float(score))
            part = weight / (rrf_k + rank) if method == "rrf" else weight * normalised[chunk_id]
            scores[chunk_id] = scores.get(chunk_id, 0.0) + part
    order = sorted(scores, key=lambda c: (-scores[c], min(f.rank for f in found[c].values()), c))
    return [Fused(c, scores[c], found[c]) for c in order[:k]]
