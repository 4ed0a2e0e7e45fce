"""What can go wrong with a knowledge base on disk, each error saying what to do about it.

All are RuntimeErrors (the CLI prints their message and exits 1); none leaves the published version changed.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VERSIONS_HINT = "`tritonrag kb versions` lists the stored versions and `tritonrag kb rollback VERSION` publishes one"


class KnowledgeBaseError(RuntimeError):
    """A knowledge base cannot be read or written as asked; the message says what to do."""


class NoSpaceLeft(KnowledgeBaseError):
    """The disk filled up while writing a new version (which was removed; the published one is unchanged)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        super().__init__(f"no space left on device writing {path}: free space or point --index-dir elsewhere, "
                         "then rerun")


class DocstoreLocked(KnowledgeBaseError):
    """Another process holds a write transaction on a docstore for longer than the busy timeout."""

    def __init__(self, path: Path | str, timeout_s: float) -> None:
        self.path = str(path)
        super().__init__(f"the docstore {path} is locked by another writer (another ingest?): wait for it to "
                         f"finish and rerun (waited {timeout_s:g}s; TRITONRAG_DOCSTORE_BUSY_TIMEOUT_S sets how long)")


class CorruptVersion(KnowledgeBaseError, ValueError):
    """A stored version's files do not match its manifest, or do not load."""


class MissingVersion(KnowledgeBaseError):
    """The pointer names a version that is not on disk (or the pointer itself is unreadable)."""


def is_disk_full(exc: BaseException) -> bool:
    """True for the ways a full disk (or quota) shows: OSError ENOSPC/EDQUOT, SQLite's SQLITE_FULL, faiss's write
    error (a RuntimeError quoting strerror)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)
    return isinstance(exc, RuntimeError) and "No space left on device" in str(exc)


@contextmanager
def disk_full_as_error(path: Path | str) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into NoSpaceLeft (other errors pass through)."""
    try:
        yield
    except NoSpaceLeft:
        raise
    except (OSError, sqlite3.OperationalError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise NoSpaceLeft(path) from exc
        raise
