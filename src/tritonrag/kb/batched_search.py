"""The retriever's pure logic: per-request options, grouping a dynamic batch into few searches, results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonrag.errors import InvalidInput
from tritonrag.kb.filters import Filter, parse_filter
from tritonrag.kb.search import Hit, KnowledgeBase
from tritonrag.serving.contract import RETRIEVER
from tritonrag.settings import RetrieverSettings
from tritonrag.validation import as_int

MAX_NPROBE = 65536
MAX_EF_SEARCH = 32768


@dataclass(frozen=True)
class SearchRequest:
    """One request's query vectors and options."""

    queries: np.ndarray
    top_k: int
    filter: Filter | None = None
    nprobe: int | None = None
    ef_search: int | None = None

    @property
    def group(self) -> tuple:
        """Requests with equal groups are searched together in one FAISS call."""
        return self.filter, self.nprobe, self.ef_search


def parse_search(queries: np.ndarray, dimension: int, top_k: Any, raw_filter: Any, parameters: Mapping[str, Any],
                 settings: RetrieverSettings) -> SearchRequest:
    """Validate one request: [n, dimension] finite vectors, top_k, filter, nprobe / ef_search parameters."""
    if queries.ndim != 2 or queries.shape[1] != dimension:
        raise InvalidInput(
            f"input 'embedding' must be [batch, {dimension}] (the index's dimension), got {list(queries.shape)}")
    if not np.isfinite(queries).all():
        raise InvalidInput("input 'embedding' contains NaN or infinite values")
    known = set(RETRIEVER.search_parameters)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise InvalidInput(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    nprobe = parameters.get(RETRIEVER.nprobe)
    if nprobe is not None:
        nprobe = as_int(nprobe, RETRIEVER.nprobe)
        if not 1 <= nprobe <= MAX_NPROBE:
            raise InvalidInput(f"nprobe must be between 1 and {MAX_NPROBE}, got {nprobe}")
    ef_search = parameters.get(RETRIEVER.ef_search)
    if ef_search is not None:
        ef_search = as_int(ef_search, RETRIEVER.ef_search)
        if not 1 <= ef_search <= MAX_EF_SEARCH:
            raise InvalidInput(f"ef_search must be between 1 and {MAX_EF_SEARCH}, got {ef_search}")
    k = settings.top_k_default if top_k is None else check_top_k(top_k, settings)
    return SearchRequest(np.ascontiguousarray(queries, np.float32), k, parse_filter(raw_filter), nprobe, ef_search)


def run_searches(kb: KnowledgeBase, requests: Sequence[SearchRequest]) -> list[list[list[Hit]]]:
    """Search every request (one FAISS call per group of requests with the same options); for each request,
    for each query row, its hits best first."""
    results: list[list[list[Hit]] | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.group, []).append(i)
    for (flt, nprobe, ef_search), members in groups.items():
        stacked = np.concatenate([requests[i].queries for i in members])
        k = max(requests[i].top_k for i in members)
        if flt is None:
            scores, ids = kb.search(stacked, k, nprobe, ef_search)
        else:
            scores, ids = kb.search_filtered(stacked, k, flt, nprobe, ef_search)
        row = 0
        for i in members:
            n, top_k = len(requests[i].queries), requests[i].top_k
            results[i] = [kb.fetch(ids[r, :top_k], scores[r, :top_k]) for r in range(row, row + n)]
            row += n
    return results  # type: ignore[return-value]


def check_top_k(value: Any, retriever: RetrieverSettings) -> int:
    """Validate a requested number of passages against the retriever's limit."""
    top_k = as_int(value, "top_k")
    if not 1 <= top_k <= retriever.top_k_max:
        raise InvalidInput(f"top_k must be between 1 and {retriever.top_k_max}, got {top_k}")
    return top_k
