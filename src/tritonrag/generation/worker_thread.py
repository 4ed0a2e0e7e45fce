"""An engine base that serves queued requests one at a time on a worker thread."""

from __future__ import annotations

import itertools
import queue
import threading

from tritonrag.generation.engine import GenerationSink
from tritonrag.generation.sampling import Completion, SamplingParams


class WorkerThreadEngine:
    """Serves queued requests one at a time on a worker thread; subclasses implement ``_generate``."""

    name = ""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, SamplingParams, GenerationSink] | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name=f"{self.name}-engine", daemon=True)
        self._worker.start()

    @property
    def in_flight(self) -> int:
        return self._pending

    def submit(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> str:
        with self._lock:
            self._pending += 1
        self._queue.put((prompt, params, sink))
        return f"{self.name}-{next(self._ids)}"

    def _generate(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> Completion:
        raise NotImplementedError

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            prompt, params, sink = item
            try:
                if self._stopping:
                    sink.on_finish(Completion("cancelled", 0, 0))
                    continue
                sink.on_finish(self._generate(prompt, params, sink))
            except Exception as exc:
                sink.on_error(exc)
            finally:
                with self._lock:
                    self._pending -= 1

    def shutdown(self) -> None:
        """Cancel the running and queued requests, then stop the worker."""
        self._stopping = True
        self._queue.put(None)
        self._worker.join(timeout=30)
