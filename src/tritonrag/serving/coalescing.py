"""Merging streamed text that is already queued, so one response carries it instead of one response per piece.

Framework-free (no Triton import), used by the generator adapter (tritonrag.serving.models.generator) and rag's BLS
generation stream (tritonrag.serving.bls_stages), and unit tested. The rule on both sides: never wait for more text
to merge; a piece that finds its reader idle goes out alone, at once. Only what piles up while the reader is busy
(sending the previous response, or the event loop serving other requests) goes out together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tritonrag.pipeline.types import GenerationChunk, Usage

T = TypeVar("T")


@dataclass
class Batch:
    """What a stream's outbox held when its sender took it: the text queued (joined), and its end if it came."""

    text: str
    end: Any = None  # whatever the producer ended the stream with (a completion, an error); None: not ended
    ended: bool = False


class Outbox:
    """One stream's pieces of text on their way from a producer thread to a sender thread.

    ``put`` and ``finish`` return True when the outbox was idle (nothing waiting for the sender): then the caller
    hands the outbox to the sender, exactly once until the sender ``take``s it. Text put before ``finish`` is
    taken with the end, so the final response may carry the last text too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._end: Any = None
        self._ended = False
        self._scheduled = False

    def _schedule(self) -> bool:
        if self._scheduled:
            return False
        self._scheduled = True
        return True

    def put(self, text: str) -> bool:
        with self._lock:
            if self._ended:
                return False
            self._pieces.append(text)
            return self._schedule()

    def finish(self, end: Any) -> bool:
        """The stream ended with ``end`` (the first end counts; later ones are ignored)."""
        with self._lock:
            if self._ended:
                return False
            self._end, self._ended = end, True
            return self._schedule()

    def take(self) -> Batch:
        with self._lock:
            pieces, self._pieces = self._pieces, []
            self._scheduled = False
            return Batch("".join(pieces), self._end, self._ended)


class SenderThread:
    """One thread that runs ``send(item)`` for each item scheduled, in order: the generator's sends (an item is a
    stream, scheduled when its outbox turns non-idle; ``send`` takes the outbox's batch), the retriever's metric
    updates (each a round trip to the server that a request need not wait for)."""

    def __init__(self, send: Callable[[Any], None], name: str = "sender",
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._send, self._on_error = send, on_error
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def schedule(self, item: Any) -> None:
        self._queue.put(item)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._send(item)
            except Exception as exc:  # a send that failed must not stop the other streams' sends
                if self._on_error is not None:
                    with contextlib.suppress(Exception):
                        self._on_error(exc)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)


def merge_chunks(chunks: Sequence[GenerationChunk]) -> GenerationChunk:
    """Consecutive chunks of one generation as one: their text joined, the last finish reason and usage (only the
    final chunk carries them)."""
    if len(chunks) == 1:
        return chunks[0]
    finish: str | None = None
    usage: Usage | None = None
    for chunk in chunks:
        finish = chunk.finish_reason or finish
        usage = chunk.usage or usage
    return GenerationChunk("".join(c.text for c in chunks), finish, usage)


class ThreadToLoop(Generic[T]):
    """Items from one producer thread to one asyncio reader, who gets everything queued at once.

    The producer wakes the loop only when the reader is waiting (one call_soon_threadsafe per wait, not per item).
    ``close`` (producer) ends the stream; ``get_all`` then returns an empty list once the queue is empty.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_resolve, waiter)

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            self._wake()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake()

    async def get_all(self) -> list[T]:
        """Every item queued (waiting for one if none is); [] once closed and empty."""
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
                if self._closed:
                    return []
                self._waiter = waiter = self._loop.create_future()
            await waiter


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
