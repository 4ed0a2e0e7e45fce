"""A model-free generator engine for measuring the serving path (``[generator] engine = "stand-in"``)."""

from __future__ import annotations

from tritonrag.generation.engine import GenerationSink
from tritonrag.generation.sampling import Completion, SamplingParams
from tritonrag.generation.structured import structured_unsupported
from tritonrag.generation.worker_thread import WorkerThreadEngine
from tritonrag.settings import GeneratorSettings


class StandInEngine(WorkerThreadEngine):
    """A model-free engine for measuring the serving path: each request gets ``max_tokens`` words taken from its
    prompt, sent at once one per ``on_text`` call from the worker thread; finish reason "length".

    Deterministic, no sleep, no weights, no tokenizer (prompt tokens are whitespace-separated words); stop strings
    are not applied. Structured output (json_schema / json_object) is refused, as the transformers engine does.
    """

    name = "stand-in"

    def __init__(self, settings: GeneratorSettings) -> None:
        self.settings = settings
        super().__init__()

    def submit(self, prompt: str, params: SamplingParams, sink: GenerationSink) -> str:
        """Queue the request; one asking for structured output is answered at once, before it is queued, with
        ``sink.on_error(Unsupported(...))`` (words from the prompt are no JSON)."""
        if params.structured is not None:
            sink.on_error(structured_unsupported(self.name))
            return f"{self.name}-refused-{next(self._ids)}"
        return super().submit(prompt, params, sink)

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
