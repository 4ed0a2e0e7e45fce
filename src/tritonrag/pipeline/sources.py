"""The sources a RAG answer reports: one object per retrieved chunk, best first."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

SNIPPET_CHARS = 160


def sources_json(
    chunk_ids: Sequence[int],
    scores: Sequence[float],
    metadata: Sequence[Mapping[str, Any]],
    texts: Sequence[str] | None = None,
    retrieval: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The `sources` output: one object per retrieved chunk, best first, with a snippet when texts are given and,
    when given, how each was found (``retrieval``: its rank and score on each side, its similarity)."""
    sources = [
        {"chunk_id": int(cid), "score": round(float(score), 4), **dict(meta)}
        for cid, score, meta in zip(chunk_ids, scores, metadata)
    ]
    for source, found in zip(sources, retrieval or ()):
        if found:
            source["retrieval"] = dict(found)
    for source, text in zip(sources, texts or ()):
        text = " ".join(text.split())
        source["snippet"] = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."
    return json.dumps(sources)
