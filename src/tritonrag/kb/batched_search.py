"""The retriever's pure logic: per-request options, grouping a dynamic batch into few searches, dense, sparse and
hybrid (fused) search, results with where each chunk was found and each step's time."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritonrag.errors import InvalidInput
from tritonrag.kb.filters import Filter, parse_filter
from tritonrag.kb.fusion import FUSIONS, Found, fuse
from tritonrag.kb.search import Hit, KnowledgeBase
from tritonrag.serving.contract import RETRIEVER
from tritonrag.settings import RetrieverSettings
from tritonrag.validation import as_choice, as_int

MAX_NPROBE = 65536
MAX_EF_SEARCH = 32768
MODES = ("dense", "sparse", "hybrid")


@dataclass(frozen=True)
class SearchRequest:
    """One request's query vectors and texts, and its options."""

    queries: np.ndarray | None  # [n, dimension]; None for a sparse search sent without vectors
    top_k: int
    filter: Filter | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    texts: tuple[str, ...] | None = None  # the questions, for sparse and hybrid search
    mode: str = "dense"
    candidates: int = 0  # hybrid: each side's list is max(candidates, top_k) long
    fusion: str = "rrf"

    @property
    def rows(self) -> int:
        return len(self.queries) if self.queries is not None else len(self.texts or ())

    @property
    def group(self) -> tuple:
        """Requests with equal groups are searched together (one FAISS call for the group)."""
        return (self.filter, self.nprobe, self.ef_search, self.mode, self.candidates, self.fusion,
                self.queries is None)


@dataclass(frozen=True)
class SearchResult:
    """For each query row of a request, its hits best first; and the time each step of its batch took (ms)."""

    rows: list[list[Hit]]
    timing: dict[str, float] = field(default_factory=dict)


def parse_search(queries: np.ndarray | None, dimension: int, top_k: Any, raw_filter: Any,
                 parameters: Mapping[str, Any], settings: RetrieverSettings,
                 texts: Sequence[str] | None = None, sparse_index: bool = True) -> SearchRequest:
    """Validate one request: [n, dimension] finite vectors and/or n question texts (sparse and hybrid search need
    them), top_k, filter, and the parameters mode, candidates, fusion, nprobe, ef_search.

    A request that sets no mode gets the settings' where it can: dense when it sends no question text or the
    knowledge base has no ``sparse_index`` (a version from before format 3)."""
    known = set(RETRIEVER.search_parameters)
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise InvalidInput(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    default = settings.mode if (texts or queries is None) and sparse_index else "dense"
    mode = as_choice(parameters.get(RETRIEVER.mode, default), RETRIEVER.mode, MODES)
    if mode != "dense" and not sparse_index:
        raise InvalidInput(f"mode {mode} needs the knowledge base's sparse index, which this version predates: run "
                           "`tritonrag kb reindex` to add it, or use mode dense")
    if queries is not None:
        if queries.ndim != 2 or queries.shape[1] != dimension:
            raise InvalidInput(f"input '{RETRIEVER.embedding}' must be [batch, {dimension}] (the index's dimension), "
                               f"got {list(queries.shape)}")
        if not np.isfinite(queries).all():
            raise InvalidInput(f"input '{RETRIEVER.embedding}' contains NaN or infinite values")
        queries = np.ascontiguousarray(queries, np.float32)
    elif mode != "sparse":
        raise InvalidInput(f"mode {mode} needs input '{RETRIEVER.embedding}' (the question's vector from the embedder)"
                           f"; only mode sparse searches with '{RETRIEVER.query}' alone")
    if mode != "dense":
        texts = _check_texts(texts, queries, mode, settings)
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
    candidates = check_top_k(parameters.get(RETRIEVER.candidates, settings.candidates), settings, RETRIEVER.candidates)
    fusion = as_choice(parameters.get(RETRIEVER.fusion, settings.fusion), RETRIEVER.fusion, FUSIONS)
    k = settings.top_k_default if top_k is None else check_top_k(top_k, settings)
    return SearchRequest(queries, k, parse_filter(raw_filter), nprobe, ef_search,
                         tuple(texts) if mode != "dense" else None, mode,
                         candidates if mode == "hybrid" else 0, fusion if mode == "hybrid" else "rrf")


def _check_texts(texts: Sequence[str] | None, queries: np.ndarray | None, mode: str,
                 settings: RetrieverSettings) -> Sequence[str]:
    if not texts:
        raise InvalidInput(f"mode {mode} needs input '{RETRIEVER.query}' (the question's text, one row per query); "
                           f"send it, or set parameter mode to dense")
    if queries is not None and len(texts) != len(queries):
        raise InvalidInput(f"input '{RETRIEVER.query}' has {len(texts)} rows but '{RETRIEVER.embedding}' has "
                           f"{len(queries)}: send one question per vector")
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"input '{RETRIEVER.query}' row {i} is empty: send the question's text")
        if len(text) > settings.max_query_chars:
            raise InvalidInput(f"input '{RETRIEVER.query}' row {i} has {len(text)} characters; the limit is "
                               f"{settings.max_query_chars}")
    return texts


def _ms(since: float) -> float:
    return round(1000 * (time.perf_counter() - since), 3)


def _dense(kb: KnowledgeBase, stacked: np.ndarray, k: int, flt: Filter | None, nprobe: int | None,
           ef_search: int | None) -> list[list[tuple[int, float]]]:
    if flt is None:
        scores, ids = kb.search(stacked, k, nprobe, ef_search)
    else:
        scores, ids = kb.search_filtered(stacked, k, flt, nprobe, ef_search)
    return [[(int(i), float(s)) for i, s in zip(id_row, score_row) if i >= 0] for id_row, score_row in zip(ids, scores)]


def _search_group(kb: KnowledgeBase, members: Sequence[SearchRequest], settings: RetrieverSettings
                  ) -> tuple[list[list[list[Hit]]], dict[str, float]]:
    first = members[0]
    mode, flt = first.mode, first.filter
    k = max(r.top_k for r in members)
    depth = max(first.candidates, k) if mode == "hybrid" else k
    timing: dict[str, float] = {}
    queries = None if first.queries is None else np.concatenate([r.queries for r in members])
    texts = [t for r in members for t in (r.texts or ())]
    dense = sparse = None
    if mode != "sparse":
        started = time.perf_counter()
        dense = _dense(kb, queries, depth, flt, first.nprobe, first.ef_search)
        timing["dense_ms"] = _ms(started)
    if mode != "dense":
        started = time.perf_counter()
        sparse = kb.sparse_search(texts, depth, flt)
        timing["sparse_ms"] = _ms(started)
    started = time.perf_counter()
    ranked: list[tuple[list[int], list[float], list[float] | None, list[dict[str, Found]]]] = []
    for row in range(len(queries) if queries is not None else len(texts)):
        if mode == "hybrid":
            lists = {"dense": dense[row], "sparse": sparse[row]}
            weights = {"dense": settings.dense_weight, "sparse": settings.sparse_weight}
            fused = fuse(lists, depth, first.fusion, settings.rrf_k, weights)
            ids, scores, found = [f.chunk_id for f in fused], [f.score for f in fused], [f.found for f in fused]
        else:
            side = dense[row] if mode == "dense" else sparse[row]
            ids, scores = [c for c, _ in side], [s for _, s in side]
            found = [{mode: Found(rank, score)} for rank, score in enumerate(scores, start=1)]
        similarities = None
        if mode == "dense":
            similarities = scores
        elif queries is not None:
            similarities = kb.similarities(queries[row], ids).tolist()
        ranked.append((ids, scores, similarities, found))
    if mode != "dense":
        timing["fusion_ms"] = _ms(started)
    started = time.perf_counter()
    wanted = []  # (ids, scores, similarities, found) of each query row of each request, cut to its top_k
    for request in members:
        n = request.top_k
        for ids, scores, similarities, found in ranked[len(wanted):len(wanted) + request.rows]:
            wanted.append((ids[:n], scores[:n], None if similarities is None else similarities[:n], found[:n]))
    rows = _fetch_rows(kb, wanted)
    results, row = [], 0
    for request in members:
        results.append(rows[row:row + request.rows])
        row += request.rows
    timing["fetch_ms"] = _ms(started)
    return results, timing


def _fetch_rows(kb: KnowledgeBase, wanted: Sequence[tuple[list[int], list[float], list[float] | None,
                                                          list[dict[str, Found]]]]) -> list[list[Hit]]:
    """The hits of every query row of a group from one docstore query (not one per row): ``kb.fetch`` of all rows
    at once, split back by row. ``fetch`` keeps the order and only drops chunks the docstore lacks, so each row's hits
    are the next ones whose ids are its ids, in order."""
    if len(wanted) == 1:
        return [kb.fetch(*wanted[0])]
    if len({row[2] is None for row in wanted}) > 1:  # rows with and without similarities: not in one group
        return [kb.fetch(*row) for row in wanted]
    hits = kb.fetch([i for row in wanted for i in row[0]], [s for row in wanted for s in row[1]],
                    None if wanted[0][2] is None else [s for row in wanted for s in row[2]],
                    [f for row in wanted for f in row[3]])
    out, at = [], 0
    for row_ids, *_ in wanted:
        row_hits = []
        for chunk_id in row_ids:
            if at < len(hits) and hits[at].chunk_id == int(chunk_id):
                row_hits.append(hits[at])
                at += 1
        out.append(row_hits)
    return out


def run_searches(kb: KnowledgeBase, requests: Sequence[SearchRequest],
                 settings: RetrieverSettings) -> list[SearchResult]:
    """Search every request, the requests with the same options together; each request's result holds, for each
    query row, its hits best first, and its batch's step times."""
    results: list[SearchResult | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.group, []).append(i)
    for members in groups.values():
        rows, timing = _search_group(kb, [requests[i] for i in members], settings)
        for i, hits in zip(members, rows):
            results[i] = SearchResult(hits, timing)
    return results  # type: ignore[return-value]


def check_top_k(value: Any, retriever: RetrieverSettings, name: str = "top_k") -> int:
    """Validate a requested number of passages (top_k, a hybrid search's candidates, the reranker's) against the
    retriever's limit."""
    top_k = as_int(value, name)
    if not 1 <= top_k <= retriever.top_k_max:
        raise InvalidInput(f"{name} must be between 1 and {retriever.top_k_max}, got {top_k}")
    return top_k
