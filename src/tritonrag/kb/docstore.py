"""The docstore of a knowledge base version: one SQLite file of documents, chunks, the chunks' BM25 (FTS5) index, and
metadata filters as SQL. Every docstore SQL statement of the package is in this module.

The FTS5 index is an external-content table over ``chunks`` kept in step by triggers, so a new version starts from
a copy of the published docstore and only the chunks that changed are deleted and inserted (tritonrag.kb.sparse
says how a question is searched).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonrag.kb.chunking import Chunk
from tritonrag.kb.errors import VERSIONS_HINT, CorruptVersion, DocstoreLocked, disk_full_as_error
from tritonrag.kb.filters import Filter
from tritonrag.kb.sparse import TOKENIZER

BUSY_TIMEOUT_ENV = "TRITONRAG_DOCSTORE_BUSY_TIMEOUT_S"
BUSY_TIMEOUT_S = 10.0  # how long a build waits for a docstore another process holds a write transaction on


def busy_timeout_s() -> float:
    """Seconds a build waits for a docstore locked by another writer before failing (DocstoreLocked)."""
    try:
        return max(float(os.environ.get(BUSY_TIMEOUT_ENV, BUSY_TIMEOUT_S)), 0.0)
    except ValueError:
        return BUSY_TIMEOUT_S


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{urllib.parse.quote(str(Path(path).resolve()))}?{query}"


@contextmanager
def _locked_as_error(path: Path, timeout_s: float) -> Iterator[None]:
    """Turn SQLite's "database is locked" (after the busy timeout) into DocstoreLocked, a full disk into
    NoSpaceLeft."""
    try:
        with disk_full_as_error(path):
            yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(exc):
            raise DocstoreLocked(path, timeout_s) from exc
        raise


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the docstore at ``path`` that waits (a bounded time) for another writer's lock."""
    timeout = busy_timeout_s()
    with _locked_as_error(path, timeout):
        db = sqlite3.connect(_uri(path, mode="ro"), uri=True, timeout=timeout)
        try:
            yield db
        finally:
            db.close()

SCHEMA = """
CREATE TABLE documents (
    source TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    metadata TEXT NOT NULL,
    n_chunks INTEGER NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL REFERENCES documents(source),
    title TEXT NOT NULL,
    section TEXT NOT NULL,
    position INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX chunks_source ON chunks(source);
CREATE VIRTUAL TABLE chunks_fts USING fts5(title, text, content='chunks', content_rowid='id', tokenize='TOKENIZER');
CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
END;
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
END;
""".replace("TOKENIZER", TOKENIZER)


@dataclass(frozen=True)
class DocumentRecord:
    """A document row of the docstore."""

    source: str
    title: str
    content_hash: str
    metadata: dict[str, Any]
    n_chunks: int


@dataclass(frozen=True)
class VersionContents:
    """Everything a new version is written from: chunks sorted by id, their vectors (same order), documents."""

    chunk_ids: np.ndarray
    chunks: Sequence[Chunk]
    vectors: np.ndarray
    documents: Sequence[DocumentRecord]

    def __post_init__(self) -> None:
        if not (len(self.chunk_ids) == len(self.chunks) == len(self.vectors)):
            raise ValueError(f"{len(self.chunk_ids)} ids, {len(self.chunks)} chunks, {len(self.vectors)} vectors")
        if len(self.chunk_ids) > 1 and not (np.diff(self.chunk_ids) > 0).all():
            raise ValueError("chunk ids must be strictly increasing")


# Filter fields stored as columns; any other field is looked up in the document's JSON metadata.
_FILTER_COLUMNS = {"source": "c.source", "title": "d.title", "section": "c.section"}
_CHUNK_ROW = ("SELECT c.id, c.text, c.source, c.title, c.section, c.position, d.metadata "
              "FROM chunks c JOIN documents d ON c.source = d.source")


def filter_clause(flt: Filter) -> tuple[str, list[Any]]:
    """A WHERE clause over ``chunks c JOIN documents d`` and its bound parameters (values never inlined)."""
    clauses, params = [], []
    for name, values in flt.fields:
        marks = ",".join("?" * len(values))
        if name in _FILTER_COLUMNS:
            clauses.append(f"{_FILTER_COLUMNS[name]} IN ({marks})")
        else:
            clauses.append(f"json_extract(d.metadata, ?) IN ({marks})")
            params.append(f'$."{name}"')
        params += list(values)
    return " AND ".join(clauses), params


@dataclass(frozen=True)
class DocstoreWrite:
    """How a docstore was written: from scratch, or from a copy of the previous version's with only the changes."""

    incremental: bool
    inserted: int
    deleted: int


def has_sparse_index(path: Path) -> bool:
    """True when the docstore at ``path`` holds the chunks' FTS5 index (docstores before format 3 do not)."""
    with _reading(path) as db:
        found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks_fts'").fetchone()
    return found is not None


def count_chunks(path: Path) -> int:
    """How many chunks the docstore at ``path`` holds (CorruptVersion when it is not a readable docstore)."""
    try:
        with _reading(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise CorruptVersion(f"version {Path(path).parent.name} is damaged: {path} does not load ({exc}): "
                             f"{VERSIONS_HINT}, or rebuild with `tritonrag ingest`") from None


def copy_docstore(base: Path, path: Path) -> None:
    """Copy the docstore ``base`` to ``path`` holding a read lock on it, so no writer changes it midway (another
    process's write transaction is waited for, a bounded time, then DocstoreLocked)."""
    with _reading(base) as db:
        db.execute("BEGIN")
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # takes the shared lock
        with disk_full_as_error(path):
            shutil.copyfile(base, path)
        db.rollback()


def write_docstore(path: Path, contents: VersionContents, base: Path | None = None) -> DocstoreWrite:
    """Write the docstore of ``contents`` at ``path``. With ``base`` (the docstore of the version ``contents`` was
    made from, chunk ids being stable across versions), start from a copy of it and only delete the chunks that are
    gone and insert the new ones: the FTS5 index of unchanged chunks is not rebuilt."""
    incremental = base is not None and has_sparse_index(base)
    if incremental:
        copy_docstore(base, path)
    timeout = busy_timeout_s()
    with _locked_as_error(path, timeout), sqlite3.connect(path, timeout=timeout) as db:
        if not incremental:
            db.executescript(SCHEMA)
        old_ids = {row[0] for row in db.execute("SELECT id FROM chunks")}
        new_ids = {int(i) for i in contents.chunk_ids}
        doomed = sorted(old_ids - new_ids)
        db.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in doomed])
        db.execute("DELETE FROM documents")
        db.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?)",
            [(d.source, d.title, d.content_hash, json.dumps(d.metadata), d.n_chunks) for d in contents.documents],
        )
        added = [(int(i), c.source, c.title, c.section, c.position, c.n_tokens, c.text)
                 for i, c in zip(contents.chunk_ids, contents.chunks) if int(i) not in old_ids]
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", added)
        if not incremental:
            db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")
    db.close()
    return DocstoreWrite(incremental, len(added), len(doomed))


def read_contents(path: Path) -> tuple[dict[str, DocumentRecord], np.ndarray, list[Chunk]]:
    """Everything a docstore holds: its documents by source, and its chunk ids (ascending) with their chunks."""
    with _reading(path) as db:
        documents = {
            row[0]: DocumentRecord(row[0], row[1], row[2], json.loads(row[3]), row[4])
            for row in db.execute("SELECT source, title, content_hash, metadata, n_chunks FROM documents")
        }
        rows = db.execute(
            "SELECT id, source, title, section, position, n_tokens, text FROM chunks ORDER BY id").fetchall()
    chunk_ids = np.array([r[0] for r in rows], np.int64)
    chunks = [Chunk(source=r[1], title=r[2], section=r[3], position=r[4], n_tokens=r[5], text=r[6]) for r in rows]
    return documents, chunk_ids, chunks


class DocstoreReader:
    """Read-only queries of one docstore, safe to call from any thread.

    A published version never changes, so the docstore is opened ``immutable``: SQLite takes no locks on it, and a
    process holding a write transaction on the file (an sqlite3 shell's BEGIN EXCLUSIVE) cannot stall or fail the
    searches of a served version.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(_uri(path, mode="ro", immutable="1"), uri=True, check_same_thread=False)

    def chunk_ids(self) -> np.ndarray:
        """Every chunk id, ascending (row ``i`` of the version's vectors is chunk ``chunk_ids()[i]``)."""
        return np.array([row[0] for row in self._db.execute("SELECT id FROM chunks ORDER BY id")], np.int64)

    def matching_chunk_ids(self, flt: Filter) -> np.ndarray:
        """Ids of the chunks whose document matches ``flt``, ascending."""
        where, params = filter_clause(flt)
        sql = f"SELECT c.id FROM chunks c JOIN documents d ON c.source = d.source WHERE {where} ORDER BY c.id"
        return np.array([r[0] for r in self._db.execute(sql, params)], np.int64)

    def sparse_search(self, match: str, k: int, flt: Filter | None = None) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) of the best ``k`` chunks for an FTS5 MATCH expression (tritonrag.kb.sparse), best
        first, among the chunks matching ``flt`` when given."""
        if not match:
            return []
        if flt is None:
            sql = "SELECT rowid, -rank FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?"
            return self._db.execute(sql, (match, k)).fetchall()
        where, params = filter_clause(flt)
        sql = ("SELECT chunks_fts.rowid, -chunks_fts.rank FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
               f"JOIN documents d ON c.source = d.source WHERE chunks_fts MATCH ? AND {where} "
               "ORDER BY chunks_fts.rank LIMIT ?")
        return self._db.execute(sql, [match, *params, k]).fetchall()

    def chunk_rows(self, chunk_ids: Sequence[int]) -> dict[int, tuple]:
        """(id, text, source, title, section, position, document metadata JSON) of each chunk, by id."""
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        rows = self._db.execute(f"{_CHUNK_ROW} WHERE c.id IN ({marks})", list(chunk_ids)).fetchall()
        return {row[0]: row for row in rows}

    def documents(self, limit: int = 0) -> list[tuple[str, str, int]]:
        """(source, title, chunks) of the stored documents, by source; ``limit`` 0 means all."""
        sql = "SELECT source, title, n_chunks FROM documents ORDER BY source"
        return self._db.execute(sql + (" LIMIT ?" if limit > 0 else ""), (limit,) if limit > 0 else ()).fetchall()

    def document_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def close(self) -> None:
        self._db.close()
