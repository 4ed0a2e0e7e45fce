"""Search one version of a knowledge base: FAISS index (dense), the docstore's FTS5 index (sparse, BM25), vectors,
metadata filters, stats."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonrag.kb.docstore import DocstoreReader
from tritonrag.kb.errors import CorruptVersion
from tritonrag.kb.faiss_index import index_type_of, on_gpu, place_index, search_parameters
from tritonrag.kb.filters import Filter
from tritonrag.kb.fusion import Found
from tritonrag.kb.sparse import fts_query
from tritonrag.kb.versions import (
    DOCSTORE_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    POINTER_FILE,
    VECTORS_FILE,
    Manifest,
    check_files,
    current_manifest,
    published_path,
    read_manifest,
)

STATS_DOCUMENTS = 1000  # documents listed by stats() (documents_list); more: documents_list_truncated

@dataclass(frozen=True)
class Hit:
    """One retrieved chunk."""

    chunk_id: int
    score: float
    text: str
    source: str
    title: str
    section: str
    position: int
    doc_metadata: str = "{}"
    similarity: float | None = None  # cosine similarity with the query (None: no query vector was sent)
    found: dict[str, Found] | None = None  # by side (dense, sparse): where it was found, when fused

    def found_json(self) -> dict[str, object]:
        """Where the chunk was found and how it scored, for sources: ``{"dense": {"rank": 1, "score": 0.61},
        "sparse": {...}, "similarity": 0.61}``."""
        out: dict[str, object] = {side: {"rank": f.rank, "score": round(f.score, 6)}
                                  for side, f in (self.found or {}).items()}
        if self.similarity is not None:
            out["similarity"] = round(self.similarity, 6)
        return out

    def metadata(self) -> dict[str, object]:
        extra = json.loads(self.doc_metadata)
        core = {"source": self.source, "title": self.title, "section": self.section, "position": self.position}
        return {**extra, **core}


def _no_results(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n_queries, 0), np.float32), np.zeros((n_queries, 0), np.int64)


def resolve(path: Path) -> Path:
    """A version folder as given, or the published version of a knowledge base root."""
    path = Path(path)
    if (path / POINTER_FILE).exists() or not (path / MANIFEST_FILE).exists():
        return published_path(path)
    return path


def is_current(root: Path, embedder_model: str, chunk_tokens: int, overlap_tokens: int,
               index_type: str | None = None) -> bool:
    """True when ``root`` has a published version built with these embedder, chunking (and index) settings, and
    with a sparse index (a version from before format 3 is not current: rebuilding it reuses its vectors)."""
    manifest = current_manifest(root)
    if manifest is None:
        return False
    same = (manifest.embedder_model, manifest.chunk_tokens, manifest.overlap_tokens) == (
        embedder_model, chunk_tokens, overlap_tokens)
    return same and manifest.has_sparse and (index_type is None or manifest.index_type == index_type)


class KnowledgeBase:
    """A read-only view of one version for search; ``search`` and ``fetch`` may be called from any thread.

    FAISS ids are rows of the version's vectors; ``ids`` maps rows to the stable chunk ids of the docstore.
    """

    def __init__(self, path: Path, device: str = "cpu", nprobe: int = 16, ef_search: int = 128,
                 filter_exact_max: int = 50000, gpu: int = 0, memory_cap_gib: float | None = None) -> None:
        import faiss

        self.path = resolve(path)
        self.manifest: Manifest = read_manifest(self.path)
        self.nprobe, self.ef_search, self.filter_exact_max = nprobe, ef_search, filter_exact_max
        check_files(self.path, self.manifest)  # a damaged file is reported, never handed to faiss or served
        try:
            cpu_index = faiss.read_index(str(self.path / INDEX_FILE))
        except RuntimeError as exc:
            raise CorruptVersion(f"version {self.version} is damaged: {self.path / INDEX_FILE} does not load "
                                 f"({str(exc).splitlines()[-1]}): `tritonrag kb reindex` rebuilds it from the "
                                 "stored vectors, or `tritonrag kb rollback VERSION` publishes another "
                                 "(`tritonrag kb versions` lists them)") from None
        if cpu_index.d != self.manifest.dimension:
            raise ValueError(f"{self.path}: index dimension {cpu_index.d} != manifest {self.manifest.dimension}")
        self.index = place_index(cpu_index, device, gpu, memory_cap_gib)
        self.vectors = np.load(self.path / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        self.docstore = DocstoreReader(self.path / DOCSTORE_FILE)
        try:
            self.ids = self.docstore.chunk_ids()
        except Exception:
            self.docstore.close()
            raise
        if not (len(self.ids) == len(self.vectors) == self.index.ntotal):
            raise ValueError(f"{self.path}: {len(self.ids)} chunks, {len(self.vectors)} vectors and "
                             f"{self.index.ntotal} indexed vectors differ; rebuild it")

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def __len__(self) -> int:
        return len(self.ids)

    def _check(self, queries: np.ndarray, k: int) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"queries must be [n, {self.dimension}], got {list(queries.shape)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return queries

    def _to_chunk_ids(self, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, self.ids[np.clip(rows, 0, None)], -1) if len(self.ids) else rows

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batched search: (scores, chunk ids), each [n_queries, min(k, len)]; missing results are id -1."""
        queries = self._check(queries, k)
        k = min(k, len(self))
        if k == 0:
            return _no_results(len(queries))
        params = search_parameters(self.index, nprobe or self.nprobe, ef_search or self.ef_search)
        scores, rows = self.index.search(queries, k, params=params) if params else self.index.search(queries, k)
        return scores, self._to_chunk_ids(rows)

    @property
    def has_sparse(self) -> bool:
        """True when this version has a BM25 index (format 3 and later)."""
        return self.manifest.has_sparse

    def sparse_search(self, texts: Sequence[str], k: int, flt: Filter | None = None) -> list[list[tuple[int, float]]]:
        """BM25 search: for each text, (chunk id, score) of its best ``k`` chunks (matching ``flt``), best first."""
        if not self.has_sparse:
            raise ValueError(f"knowledge base version {self.version} has no sparse index (it was built before "
                             "format 3): run `tritonrag kb reindex` to add one, or search in mode dense")
        return [self.docstore.sparse_search(fts_query(text), k, flt) for text in texts]

    def similarities(self, query: np.ndarray, chunk_ids: Sequence[int]) -> np.ndarray:
        """Cosine similarity (inner product of normalised vectors) of ``query`` [dim] with each chunk."""
        rows = np.searchsorted(self.ids, np.asarray(chunk_ids, np.int64))
        if not len(rows):
            return np.zeros(0, np.float32)
        return (np.asarray(self.vectors[rows], np.float32) @ np.asarray(query, np.float32)).astype(np.float32)

    def filter_rows(self, flt: Filter) -> np.ndarray:
        """Rows (FAISS ids) of the chunks that match ``flt``."""
        chunk_ids = self.docstore.matching_chunk_ids(flt)
        return np.searchsorted(self.ids, chunk_ids)

    def search_filtered(self, queries: np.ndarray, k: int, flt: Filter, nprobe: int | None = None,
                        ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Search only chunks matching ``flt``: exactly over them when they are few, else the index with an
        ID selector (exact again where the index cannot take one, e.g. on a GPU)."""
        import faiss

        queries = self._check(queries, k)
        rows = self.filter_rows(flt)
        k = min(k, len(rows))
        if k == 0:
            return _no_results(len(queries))
        if len(rows) > self.filter_exact_max and not on_gpu(self.index):
            selector = faiss.IDSelectorBatch(rows.astype(np.int64))
            params = search_parameters(self.index, nprobe or self.nprobe, ef_search or self.ef_search, selector)
            scores, found = self.index.search(queries, k, params=params)
            return scores, self._to_chunk_ids(found)
        sims = queries @ np.asarray(self.vectors[rows]).T  # [n_queries, len(rows)]
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(rows) else np.tile(np.arange(len(rows)),
                                                                                             (len(queries), 1))
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        best = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(top_scores, order, axis=1).astype(np.float32), self.ids[rows[best]]

    def fetch(self, chunk_ids: Sequence[int], scores: Sequence[float], similarities: Sequence[float] | None = None,
              found: Sequence[dict[str, Found] | None] | None = None) -> list[Hit]:
        """Docstore rows for ``chunk_ids``, in the given order (ids of -1 are skipped), with their scores and, when
        given, their similarities and where they were found."""
        wanted = [int(i) for i in chunk_ids if i >= 0]
        if not wanted:
            return []
        by_id = self.docstore.chunk_rows(wanted)
        hits = []
        for i, (chunk_id, score) in enumerate(zip(chunk_ids, scores)):
            row = by_id.get(int(chunk_id))
            if row is not None:
                hits.append(Hit(row[0], float(score), *row[1:],
                                similarity=None if similarities is None else float(similarities[i]),
                                found=None if found is None else found[i]))
        return hits

    def documents(self, limit: int = 0) -> list[tuple[str, str, int]]:
        """(source, title, chunks) of the stored documents, by source; ``limit`` 0 means all."""
        return self.docstore.documents(limit)

    def stats(self) -> dict[str, Any]:
        """Version, index type and size, vector count and dimension, docstore counts, and the documents (source,
        title, chunks; by source, the first STATS_DOCUMENTS of them) a client may offer as a filter."""
        m = self.manifest
        documents = self.docstore.document_count()
        listed = self.docstore.documents(STATS_DOCUMENTS)
        return {
            "version": m.version,
            "parent": m.parent,
            "created_at": m.created_at,
            "path": str(self.path),
            "index": {**m.index, "device": "gpu" if on_gpu(self.index) else "cpu",
                      "loaded_type": index_type_of(self.index),
                      "bytes": (self.path / INDEX_FILE).stat().st_size},
            "query": {"nprobe": self.nprobe, "ef_search": self.ef_search},
            "vectors": int(self.index.ntotal),
            "dimension": m.dimension,
            "vectors_bytes": (self.path / VECTORS_FILE).stat().st_size,
            "docstore": {"documents": documents, "chunks": len(self.ids),
                         "bytes": (self.path / DOCSTORE_FILE).stat().st_size},
            "sparse": {**m.sparse} if m.has_sparse else None,
            "embedder_model": m.embedder_model,
            "chunking": {"chunk_tokens": m.chunk_tokens, "overlap_tokens": m.overlap_tokens},
            "build": m.build,
            "documents_list": [{"source": source, "title": title, "chunks": int(chunks)}
                               for source, title, chunks in listed],
            "documents_list_truncated": documents > len(listed),
        }

    def close(self) -> None:
        """Release the index, vectors and docstore (memory of an old version after a swap)."""
        self.docstore.close()
        self.index = None
        self.vectors = None
