"""The RAG pipeline, framework-free: a flow's steps, then generation streamed as events.

A flow is a named composition of steps (embed -> retrieve -> prompt for the standard one); generation ends every
flow. ``RagPipeline.run`` turns one request into events: sources first when streaming, the answer's pieces, then
exactly one terminal event (final answer, failure or cancellation). A cancelled client, or a stage failing
mid-stream, stops the generator: the stream is cancelled and read to its end before the terminal event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.errors import RequestCancelled, failure
from tritonrag.pipeline.events import ABSTAINED, CancelledEvent, Event, FinalEvent, SourcesEvent, TextEvent
from tritonrag.pipeline.stages import GenerateStage, Stages
from tritonrag.pipeline.steps import AbstainOnWeakEvidence, BuildPrompt, EmbedQuery, RagState, Retrieve, Step
from tritonrag.pipeline.types import RagRequest

DEFAULT_FLOW = "rag"
# Asking whether the client went away may be a round trip to the server (Triton's is_cancelled): at most this often.
CANCEL_CHECK_S = 0.05


@dataclass(frozen=True)
class Flow:
    """A named sequence of steps that prepare the prompt; the pipeline then generates."""

    name: str
    steps: tuple[Step, ...]


def standard_flows(stages: Stages) -> dict[str, Flow]:
    """The flows every deployment serves: ``rag`` (embed the question, retrieve passages, abstain when even the best
    scores under the request's min_score, build the prompt)."""
    rag = Flow(DEFAULT_FLOW, (EmbedQuery(stages.embedder), Retrieve(stages.retriever), AbstainOnWeakEvidence(),
                              BuildPrompt(stages.prompt_builder)))
    return {rag.name: rag}


class CancelWatch:
    """Polls ``is_cancelled`` at most every ``interval_s`` (it may be a round trip); remembers a yes."""

    def __init__(self, is_cancelled: Callable[[], bool], interval_s: float = CANCEL_CHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ask, self._interval, self._clock = is_cancelled, interval_s, clock
        self._next = 0.0
        self.cancelled = False

    def check(self) -> bool:
        now = self._clock()
        if not self.cancelled and now >= self._next:
            self._next = now + self._interval
            self.cancelled = bool(self._ask())
        return self.cancelled


class RagPipeline:
    """Runs requests through named flows over one set of stages."""

    def __init__(self, stages: Stages, flows: Mapping[str, Flow] | None = None,
                 cancel_check_s: float = CANCEL_CHECK_S) -> None:
        self.stages = stages
        self.flows = dict(flows) if flows is not None else standard_flows(stages)
        self.cancel_check_s = cancel_check_s

    async def run(self, request: RagRequest, is_cancelled: Callable[[], bool] = lambda: False,
                  flow: str = DEFAULT_FLOW) -> AsyncIterator[Event]:
        """The events answering ``request``; never raises (a failure is the terminal event)."""
        watch = CancelWatch(is_cancelled, self.cancel_check_s)
        try:
            state = RagState(request)
            for step in self._flow(flow).steps:
                await step.run(state)
            answer = abstain(state) if state.abstention else generate(self.stages.generator, state, watch)
            async for event in answer:
                yield event
        except Exception as exc:
            yield CancelledEvent() if _client_gone(is_cancelled) else failure(exc)

    def _flow(self, name: str) -> Flow:
        if name not in self.flows:
            raise InvalidInput(f"unknown flow {name!r}; available flows: {', '.join(sorted(self.flows))}")
        return self.flows[name]


def _client_gone(is_cancelled: Callable[[], bool]) -> bool:
    try:
        return bool(is_cancelled())
    except Exception:  # asking failed: the client is most likely gone, and there is nobody to tell
        return True


async def abstain(state: RagState) -> AsyncIterator[Event]:
    """The answer of an abstention, in the shape of a generated one: (stream) sources, the message as text, final."""
    message = state.abstention.message
    if state.request.stream:
        yield SourcesEvent(state.sources)
        yield TextEvent(message)
        yield FinalEvent("", ABSTAINED)
    else:
        yield FinalEvent(message, ABSTAINED, state.sources)


async def generate(generator: GenerateStage, state: RagState, watch: CancelWatch) -> AsyncIterator[Event]:
    """Stream the answer to ``state.prompt``: sources first (streaming), text pieces, then the final event.

    Raises RequestCancelled when the client goes away, and whatever the generator raised; either way the
    generator is told to stop and its stream is read to its end first.
    """
    stream_mode = state.request.stream
    sources = state.sources
    if stream_mode:
        yield SourcesEvent(sources)
    stream = await generator.start(state.prompt, state.request.params.sampling(), stream_mode)
    pieces, finish_reason, complete = [], "stop", False
    try:
        async for chunk in stream:
            if watch.check():
                raise RequestCancelled
            if chunk.finish_reason:
                finish_reason = chunk.finish_reason
            if stream_mode and chunk.text:
                yield TextEvent(chunk.text)
            elif not stream_mode:
                pieces.append(chunk.text)
        complete = True
    finally:
        if not complete:  # cancelled by the client, or failed: stop the generator working for nobody
            await stream.cancel()
            await stream.close()
    yield FinalEvent("".join(pieces), finish_reason, None if stream_mode else sources)
