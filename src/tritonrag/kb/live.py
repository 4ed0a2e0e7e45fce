"""Hot reload: serve the published version of a knowledge base and swap in a newly published one.

A watcher thread polls the pointer. A new version is loaded completely beside the old one, then swapped in
under a lock that searches hold only while they run, so no request fails or waits for a load; the old
version is closed (its memory released) right after the swap.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.versions import published_version, versions_dir

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
        self._failed: str | None = None
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

    def check(self) -> bool:
        """Load and swap in the published version if it changed; True when a new one is now served."""
        name = published_version(self.root)
        if name is None or name == self.version or name == self._failed:
            return False
        try:
            new = self._loader(versions_dir(self.root) / name)
        except Exception as exc:  # keep serving the old version; retry only when the pointer moves again
            self._failed, self.last_error = name, f"{name}: {exc}"
            log.error("could not load knowledge base version %s, still serving %s: %s", name, self.version, exc)
            return False
        with self._lock:
            old, self._current = self._current, new
        if old is not None:
            old.close()
            del old
            gc.collect()
        self.reloads += 1
        self._failed = self.last_error = None
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
        if self.last_error:
            stats["last_reload_error"] = self.last_error
        return stats

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._current is not None:
                self._current.close()
