"""On-disk knowledge base: a FAISS index, a SQLite docstore of chunks, and a JSON manifest."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .chunking import Chunk

INDEX_FILE = "index.faiss"
DOCSTORE_FILE = "docstore.sqlite"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    title TEXT NOT NULL,
    section TEXT NOT NULL,
    position INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX chunks_source ON chunks(source);
"""


@dataclass(frozen=True)
class Manifest:
    """What an index was built from; the retriever refuses an index whose dimension does not match."""

    format_version: int
    embedder_model: str
    dimension: int
    metric: str
    index_type: str
    chunk_tokens: int
    overlap_tokens: int
    documents: int
    chunks: int
    created_at: str


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

    def metadata(self) -> dict[str, object]:
        return {"source": self.source, "title": self.title, "section": self.section, "position": self.position}


def write_knowledge_base(
    target: Path,
    vectors: np.ndarray,
    chunks: Sequence[Chunk],
    *,
    embedder_model: str,
    chunk_tokens: int,
    overlap_tokens: int,
) -> Manifest:
    """Write index, docstore and manifest into a temporary folder, then swap it into ``target``.

    Chunk ids are the row numbers of ``vectors``. Readers never see a half-written knowledge base.
    """
    import faiss

    if len(vectors) != len(chunks):
        raise ValueError(f"{len(vectors)} vectors for {len(chunks)} chunks")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-building-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        faiss.write_index(index, str(staging / INDEX_FILE))
        with sqlite3.connect(staging / DOCSTORE_FILE) as db:
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i, c.source, c.title, c.section, c.position, c.n_tokens, c.text) for i, c in enumerate(chunks)],
            )
        db.close()
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            embedder_model=embedder_model,
            dimension=int(vectors.shape[1]),
            metric="inner_product",
            index_type="flat",
            chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens,
            documents=len({c.source for c in chunks}),
            chunks=len(chunks),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest(path: Path) -> Manifest:
    """Read and check a knowledge base's manifest, with a hint when there is none."""
    manifest_path = Path(path) / MANIFEST_FILE
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"no knowledge base at {path}: build one with `tritonrag ingest PATH...` (or scripts/setup.sh)"
        )
    raw = json.loads(manifest_path.read_text())
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{manifest_path}: format_version {raw.get('format_version')} is not {FORMAT_VERSION}")
    return Manifest(**raw)


def is_current(path: Path, embedder_model: str, chunk_tokens: int, overlap_tokens: int) -> bool:
    """True when ``path`` holds a knowledge base built with these embedder and chunking settings."""
    try:
        manifest = read_manifest(path)
    except (FileNotFoundError, ValueError, TypeError):
        return False
    return (manifest.embedder_model, manifest.chunk_tokens, manifest.overlap_tokens) == (
        embedder_model, chunk_tokens, overlap_tokens)


class KnowledgeBase:
    """A read-only, thread-safe view of a knowledge base for search."""

    def __init__(self, path: Path) -> None:
        import faiss

        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.index = faiss.read_index(str(self.path / INDEX_FILE))
        if self.index.d != self.manifest.dimension:
            raise ValueError(f"{self.path}: index dimension {self.index.d} != manifest {self.manifest.dimension}")
        uri = f"file:{urllib.parse.quote(str(self.path.resolve() / DOCSTORE_FILE))}?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched exact inner-product search: returns (scores, ids), each [n_queries, k'] with k' <= k."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"queries must be [n, {self.dimension}], got {list(queries.shape)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        k = min(k, len(self))
        scores, ids = self.index.search(queries, k)
        return scores, ids

    def fetch(self, ids: Sequence[int], scores: Sequence[float]) -> list[Hit]:
        """Docstore rows for ``ids`` (FAISS pads missing results with -1; those are skipped)."""
        wanted = [int(i) for i in ids if i >= 0]
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT id, text, source, title, section, position FROM chunks WHERE id IN ({marks})", wanted
        ).fetchall()
        by_id = {row[0]: row for row in rows}
        hits = []
        for chunk_id, score in zip(ids, scores):
            row = by_id.get(int(chunk_id))
            if row is not None:
                hits.append(Hit(row[0], float(score), row[1], row[2], row[3], row[4], row[5]))
        return hits

    def close(self) -> None:
        self._db.close()
