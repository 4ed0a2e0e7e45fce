"""Hot reload: serve the published version of a knowledge base and swap in a newly published one.

A watcher thread polls the pointer. A new version is loaded completely beside the old one, then swapped in
under a lock that searches hold only while they run, so no request fails or waits for a load; the old
version is closed (its memory released) right after the swap.

A pointer that is unreadable or names a version that is not on disk, or a version that does not load (a file not
matching its manifest, a corrupt index), is never swapped in: the served version keeps serving, the problem is
logged once and reported by ``stats()`` (``reload_error``) until the pointer names a version that loads.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tritonrag.kb.errors import MissingVersion
from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.versions import MANIFEST_FILE, missing_version_error, published_version, versions_dir

log = logging.getLogger(__name__)


Loader = Callable[[Path], KnowledgeBase]


class NoKnowledgeBase(RuntimeError):
    """Nothing has been published yet."""


class LiveKnowledgeBase:
    """The published version of the knowledge base at ``root``, kept current by ``check()`` (or a thread)."""

    def __init__(self, root: Path, loader: Loader = KnowledgeBase, interval_s: float = 1.0,
                 on_swap: Callable[[KnowledgeBase], None] | None = None) -> None:
        self.root = Path(root)
        self._loader = loader
        self._on_swap = on_swap
        self._lock = threading.RLock()  # stats() may run inside use()
        self._current: KnowledgeBase | None = None
        if published_version(self.root) is None:  # a new cluster may build its index through its own embedder
            log.warning("no knowledge base published at %s yet; serving none until one is", self.root)
        else:
            self._current = loader(self.root)
            if on_swap:
                on_swap(self._current)
        self.reloads = 0
        self.last_error: str | None = None
        self._error: dict[str, Any] | None = None  # the pointer's problem: version, error, since
        self._failed: str | None = None  # a version that did not load, not retried until the pointer moves
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval_s > 0:
            self._thread = threading.Thread(target=self._watch, args=(interval_s,), name="kb-reload", daemon=True)
            self._thread.start()

    @contextmanager
    def use(self) -> Iterator[KnowledgeBase]:
        """The current version, guaranteed not to be swapped out (and closed) while the block runs."""
        with self._lock:
            if self._current is None:
                raise NoKnowledgeBase(
                    f"no knowledge base published at {self.root} yet: build one with `tritonrag ingest PATH...`")
            yield self._current

    @property
    def version(self) -> str | None:
        return self._current.version if self._current else None

    def _report(self, version: str | None, error: str) -> None:
        """Record why the published pointer is not served (logged once per problem)."""
        if self._error is None or (self._error["version"], self._error["error"]) != (version, error):
            log.error("knowledge base %s: not switching to %s, still serving %s: %s", self.root, version or "?",
                      self.version, error)
            self._error = {"version": version, "error": error, "serving": self.version,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.last_error = f"{version}: {error}" if version else error

    def _clear(self) -> None:
        if self._error is not None:
            log.info("knowledge base %s: the pointer names the served version %s again", self.root, self.version)
        self._error = self._failed = self.last_error = None

    def check(self) -> bool:
        """Load and swap in the published version if it changed; True when a new one is now served. A version that
        is missing or does not load is not swapped in (see ``stats()["reload_error"]``)."""
        try:
            name = published_version(self.root)
        except MissingVersion as exc:  # an unreadable pointer: keep serving, look again next time
            self._report(None, str(exc))
            return False
        if name is None:
            return False
        if name == self.version:
            self._clear()
            return False
        if name == self._failed:
            return False
        path = versions_dir(self.root) / name
        if not (path / MANIFEST_FILE).exists():  # looked for again next time: it may be restored
            self._report(name, str(missing_version_error(self.root, name)))
            return False
        try:
            new = self._loader(path)
        except Exception as exc:  # keep serving the old version; retry only when the pointer moves again
            self._failed = name
            self._report(name, str(exc))
            return False
        with self._lock:
            old, self._current = self._current, new
        if old is not None:
            old.close()
            del old
            gc.collect()
        self.reloads += 1
        self._clear()
        if self._on_swap:
            self._on_swap(new)
        log.info("knowledge base %s now serves version %s", self.root, name)
        return True

    def _watch(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.check()
            except Exception:  # a transient read of the pointer must not end the watcher
                log.exception("knowledge base reload check failed")

    def stats(self) -> dict[str, Any]:
        with self.use() as kb:
            stats = kb.stats()
        stats["reloads"] = self.reloads
        if self._error is not None:
            stats["last_reload_error"] = self.last_error
            stats["reload_error"] = dict(self._error)
        return stats

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._current is not None:
                self._current.close()
