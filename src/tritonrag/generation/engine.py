"""Generation engines behind one non-blocking interface: vLLM's async engine, or transformers as a fallback.

``submit`` returns at once; the engine calls the request's sink from its own thread as text is produced,
so one Triton model instance serves many requests concurrently (continuous batching with vLLM).
"""

from __future__ import annotations

import logging
from typing import Protocol

from tritonrag.generation.sampling import Completion, SamplingParams
from tritonrag.settings import GENERATOR_ENGINES, GeneratorSettings

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


def create_engine(settings: GeneratorSettings, device: str = "auto") -> Engine:
    """The configured engine; a clear error naming the config switch when it cannot start. ``device`` is the
    transformers engine's torch device ("auto": CUDA when torch sees a GPU); vLLM finds its own from the
    environment (CUDA_VISIBLE_DEVICES, tritonrag.generation.device_settings). A packaged model's folder that has not
    been prepared raises ModelNotPrepared naming the `tritonrag prepare-models` command that creates it."""
    if settings.engine not in ENGINES:
        raise ValueError(f"[generator] engine = {settings.engine!r} is unknown; choose one of {', '.join(ENGINES)}")
    if settings.engine == "stand-in":
        from tritonrag.generation.stand_in import StandInEngine

        return StandInEngine(settings)
    from tritonrag.generation.packaged_models import check_prepared

    check_prepared(settings.model)  # a packaged model's folder that is missing: name the command that creates it
    try:
        if settings.engine == "vllm":
            from tritonrag.generation.vllm_engine import VllmEngine

            return VllmEngine(settings)
        from tritonrag.generation.transformers_engine import TransformersEngine

        return TransformersEngine(settings, device)
    except Exception as exc:
        log.exception("the %s engine failed to start", settings.engine)
        other = "transformers" if settings.engine == "vllm" else "vllm"
        raise RuntimeError(
            f"the {settings.engine} generator engine could not start ({type(exc).__name__}: {exc}); "
            f"fix the cause, or select the other engine with [generator] engine = \"{other}\" in the file "
            "named by TRITONRAG_CONFIG"
        ) from exc
