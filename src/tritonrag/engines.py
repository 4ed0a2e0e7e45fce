"""Generation engines behind one non-blocking interface: vLLM's async engine, or transformers as a fallback.

``submit`` returns at once; the engine calls the request's sink from its own thread as text is produced,
so one Triton model instance serves many requests concurrently (continuous batching with vLLM).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import queue
import threading
import time
from typing import Any, Protocol

from .config import GENERATOR_ENGINES, GeneratorSettings
from .errors import InvalidInput
from .generation import Completion, SamplingParams, TransformersEngine

log = logging.getLogger(__name__)
ENGINES = GENERATOR_ENGINES  # "vllm", "transformers", "stand-in"


class GenerationSink(Protocol):
    """Receives one request's output. Callbacks run on the engine's thread: keep them short."""

    def on_text(self, text: str, tokens: int) -> bool:
        """New answer text carrying ``tokens`` new tokens; return False to cancel the request."""

    def on_finish(self, completion: Completion) -> None: ...

    def on_error(self, error: BaseException) -> None: ...


class Engine(Protocol):
    name: str

    def submit(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> str: ...

    @property
    def in_flight(self) -> int: ...

    def shutdown(self) -> None: ...


def create_engine(settings: GeneratorSettings) -> Engine:
    """The configured engine; a clear error naming the config switch when it cannot start."""
    if settings.engine not in ENGINES:
        raise ValueError(f"[generator] engine = {settings.engine!r} is unknown; choose one of {', '.join(ENGINES)}")
    if settings.engine == "stand-in":
        return StandInEngine(settings)
    try:
        return VllmEngine(settings) if settings.engine == "vllm" else ThreadedTransformersEngine(settings)
    except Exception as exc:
        log.exception("the %s engine failed to start", settings.engine)
        other = "transformers" if settings.engine == "vllm" else "vllm"
        raise RuntimeError(
            f"the {settings.engine} generator engine could not start ({type(exc).__name__}: {exc}); "
            f"fix the cause, or select the other engine with [generator] engine = \"{other}\" in the file "
            "named by TRITONRAG_CONFIG"
        ) from exc


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


class ThreadedTransformersEngine(WorkerThreadEngine):
    """The transformers fallback: one worker thread generates the queued requests one at a time."""

    name = "transformers"

    def __init__(self, settings: GeneratorSettings) -> None:
        self.engine = TransformersEngine(settings)
        super().__init__()

    def _generate(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> Completion:
        return self.engine.generate(prompt, params, functools.partial(self._forward, sink))

    def _forward(self, sink: GenerationSink, text: str) -> bool:
        return not self._stopping and sink.on_text(text, 1)


class StandInEngine(WorkerThreadEngine):
    """A model-free engine for measuring the serving path: each request gets ``max_tokens`` words taken from its
    prompt, sent at once one per ``on_text`` call from the worker thread; finish reason "length".

    Deterministic, no sleep, no weights, no tokenizer (prompt tokens are whitespace-separated words); stop strings
    are not applied.
    """

    name = "stand-in"

    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings
        super().__init__()

    @staticmethod
    def pieces(prompt: str, max_tokens: int) -> list[str]:
        """The ``max_tokens`` pieces answering ``prompt``: its words in order from an offset its length picks."""
        words = prompt.split() or ["token"]
        start = len(prompt) % len(words)
        return [" " + words[(start + i) % len(words)] for i in range(max_tokens)]

    def _generate(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> Completion:
        tokens, reason = 0, "length"
        for piece in self.pieces(prompt, params.max_tokens):
            if self._stopping or not sink.on_text(piece, 1):
                reason = "cancelled"
                break
            tokens += 1
        return Completion(reason, len(prompt.split()), tokens)


class VllmEngine:
    """vLLM's AsyncLLM on a private event loop thread; requests are scheduled onto it from any thread."""

    name = "vllm"

    def __init__(self, settings: GeneratorSettings) -> None:
        if settings.cpu_kvcache_gib > 0:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(settings.cpu_reserved_cores))
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.settings = settings
        self._ids = itertools.count()
        self._tasks: dict[str, asyncio.Future[Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(
            model=settings.model,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            max_num_seqs=settings.max_num_seqs,
            enable_prefix_caching=settings.enable_prefix_caching,
            enforce_eager=settings.enforce_eager,
            seed=0,
        )

        async def start() -> Any:
            return AsyncLLM.from_engine_args(args)

        self.engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> str:
        request_id = f"gen-{next(self._ids)}"
        future = asyncio.run_coroutine_threadsafe(self._run(request_id, prompt, params, sink), self._loop)
        self._tasks[request_id] = future
        future.add_done_callback(lambda _: self._tasks.pop(request_id, None))
        if future.done():  # finished before it was registered: the callback above already ran
            self._tasks.pop(request_id, None)
        return request_id

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VllmSamplingParams(
            n=1,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or -1,
            stop=list(params.stop),
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
            output_kind=RequestOutputKind.DELTA,
        )

    async def _run(self, request_id: str, prompt: str, params: SamplingParams, sink: GenerationSink) -> None:
        tokens, prompt_tokens, reason = 0, 0, "stop"
        try:
            async for output in self.engine.generate(prompt, self._sampling(params), request_id):
                prompt_tokens = len(output.prompt_token_ids or ())
                piece = output.outputs[0]
                tokens += len(piece.token_ids)
                if (piece.text or piece.token_ids) and not sink.on_text(piece.text, len(piece.token_ids)):
                    await self.engine.abort(request_id)
                    reason = "cancelled"
                    break
                if output.finished:
                    reason = piece.finish_reason or "stop"
        except ValueError as exc:  # vLLM's input validation, e.g. a prompt longer than max_model_len
            sink.on_error(InvalidInput(str(exc)))
            return
        except asyncio.CancelledError:
            await self.engine.abort(request_id)
            sink.on_finish(Completion("cancelled", prompt_tokens, tokens))
            raise
        except Exception as exc:
            sink.on_error(exc)
            return
        reason = reason if reason in ("stop", "length", "cancelled") else "stop"
        sink.on_finish(Completion(reason, prompt_tokens, tokens))

    def shutdown(self, drain_s: float = 10.0) -> None:
        """Let in-flight requests finish for up to ``drain_s`` seconds, abort the rest, stop the engine."""
        deadline = time.monotonic() + drain_s
        while self._tasks and time.monotonic() < deadline:
            time.sleep(0.1)
        for future in list(self._tasks.values()):
            future.cancel()
        self.engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

