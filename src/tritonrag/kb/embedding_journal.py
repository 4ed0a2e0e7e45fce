"""Embeddings of a build in progress, journalled batch by batch so that an interrupted build resumes."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

JOURNAL_FILE = ".embedding-journal.sqlite"



class Embedder(Protocol):
    """What ingestion needs of an embedder (in-process or the served Triton `embedder`)."""

    model_name: str

    def encode(self, texts: Sequence[str], instruction: str = "") -> np.ndarray: ...

    def token_spans(self, text: str) -> Sequence[tuple[int, int]]: ...


class EmbeddingJournal:
    """Embeddings of the build in progress, committed batch by batch so an interrupted build resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    @staticmethod
    def key(model: str, instruction: str, text: str) -> str:
        return hashlib.sha256(f"{model}\0{instruction}\0{text}".encode()).hexdigest()

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            marks = ",".join("?" * len(part))
            for key, blob in self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                 [(k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in zip(keys, vectors)])

    def close(self, delete: bool = False) -> None:
        self._db.close()
        if delete:
            self.path.unlink(missing_ok=True)


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or total == 0, dynamic_ncols=True)


def embed_chunks(texts: Sequence[str], embedder: Embedder, instruction: str, journal: EmbeddingJournal,
                 batch_size: int, progress: bool) -> tuple[np.ndarray, int]:
    """Vectors of ``texts``, taking those already in the journal; returns (vectors, how many were resumed)."""
    keys = [EmbeddingJournal.key(embedder.model_name, instruction, t) for t in texts]
    done = journal.get(keys)
    todo = [i for i, k in enumerate(keys) if k not in done]
    with progress_bar(len(todo), "embedding", "chunk", progress) as bar:
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            vectors = embedder.encode([texts[i] for i in rows], instruction)
            journal.put([keys[i] for i in rows], vectors)
            done.update({keys[i]: v for i, v in zip(rows, vectors)})
            bar.update(len(rows))
    resumed = len(texts) - len(todo)
    if not texts:
        return np.zeros((0, 0), np.float32), 0
    return np.stack([done[k] for k in keys]).astype(np.float32), resumed
