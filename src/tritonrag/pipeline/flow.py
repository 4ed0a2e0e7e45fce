"""The RAG pipeline, framework-free: a flow's steps, then generation streamed as events.

A flow is a named composition of steps (embed -> retrieve -> prompt for the standard one; rag-chat condenses a
conversation's question first; llm only builds a chat prompt); generation ends every flow. ``RagPipeline.run`` turns
one request into events: sources first when streaming, the answer's pieces, then exactly one terminal event (final
answer, failure or cancellation), which carries the tokens of every generation the request ran. A cancelled client,
or a stage failing mid-stream, stops the generator: the stream is cancelled and read to its end before the terminal
event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace

from tritonrag.errors import InvalidInput, Unavailable
from tritonrag.pipeline.answer_cache import EXACT, MISS, OFF, AnswerCache, CachedAnswer, Hit, LiveAnswer, Plan
from tritonrag.pipeline.citations import CitationFilter, citations_json
from tritonrag.pipeline.critic import AnswerCheck
from tritonrag.pipeline.errors import RequestCancelled, failure
from tritonrag.pipeline.events import ABSTAINED, CancelledEvent, Event, FinalEvent, SourcesEvent, TextEvent
from tritonrag.pipeline.stages import GenerateStage, Stages, stopped_unless_read
from tritonrag.pipeline.steps import (
    CHAT_TEMPLATE,
    AbstainOnWeakEvidence,
    BuildPrompt,
    Condense,
    EmbedQuery,
    RagState,
    Rerank,
    Retrieve,
    Step,
)
from tritonrag.pipeline.types import RagRequest

DEFAULT_FLOW = "rag"
CHECKED_FLOW = "qa-checked"
CHAT_FLOW = "rag-chat"
LLM_FLOW = "llm"
# Asking whether the client went away may be a round trip to the server (Triton's is_cancelled): at most this often.
CANCEL_CHECK_S = 0.05


@dataclass(frozen=True)
class Flow:
    """A named sequence of steps that prepare the prompt; the pipeline then generates, and with ``check``, has the
    answer checked before anyone sees it. ``cite``: the answer cites the passages retrieved (its citations are
    checked and listed); a flow without retrieval has none."""

    name: str
    steps: tuple[Step, ...]
    check: AnswerCheck | None = None
    cite: bool = True

    @property
    def retrieves(self) -> bool:
        """Its answers read the knowledge base (so they are only as current as its version)."""
        return any(isinstance(step, Retrieve) for step in self.steps)

    @property
    def reads_history(self) -> bool:
        """Its answers depend on the conversation's earlier turns."""
        return any(isinstance(step, Condense) or (isinstance(step, BuildPrompt) and step.conversation)
                   for step in self.steps)

    @property
    def embeds(self) -> bool:
        return any(isinstance(step, EmbedQuery) for step in self.steps)


def standard_flows(stages: Stages, critic_generator: str | None = None, critic_max_tokens: int = 12,
                   rerank_fusion: str = "none", rerank_max_chars: int = 8000,
                   condense_max_tokens: int = 64) -> dict[str, Flow]:
    """The flows every deployment serves: ``rag`` (embed the question, retrieve passages, rerank them when the
    request says so, abstain when even the best is less similar than the request's min_score, build the prompt),
    ``qa-checked`` (the same, then a critic pass on ``critic_generator`` asks whether the passages support the
    answer: tritonrag.pipeline.critic), ``rag-chat`` (a conversation's question rewritten into a standalone one
    first, in at most ``condense_max_tokens`` tokens, then ``rag``'s steps on it; without history: ``rag``) and
    ``llm`` (no retrieval: the conversation and the question in the chat template). ``rag`` and ``qa-checked``
    ignore the request's history."""
    steps = (EmbedQuery(stages.embedder), Retrieve(stages.retriever),
             Rerank(stages.reranker, rerank_fusion, rerank_max_chars), AbstainOnWeakEvidence(),
             BuildPrompt(stages.prompt_builder))
    check = AnswerCheck(stages.prompt_builder, stages.generator, critic_generator, critic_max_tokens)
    condense = Condense(stages.prompt_builder, stages.generator, condense_max_tokens)
    flows = (Flow(DEFAULT_FLOW, steps), Flow(CHECKED_FLOW, steps, check), Flow(CHAT_FLOW, (condense, *steps)),
             Flow(LLM_FLOW, (BuildPrompt(stages.prompt_builder, CHAT_TEMPLATE, conversation=True),), cite=False))
    return {flow.name: flow for flow in flows}


class CancelWatch:
    """Polls ``is_cancelled`` at most every ``interval_s`` (it may be a round trip); remembers a yes."""

    def __init__(self, is_cancelled: Callable[[], bool], interval_s: float = CANCEL_CHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ask, self._interval, self._clock = is_cancelled, interval_s, clock
        self._next = 0.0
        self.cancelled = False

    @property
    def interval(self) -> float:
        return self._interval

    def check(self) -> bool:
        now = self._clock()
        if not self.cancelled and now >= self._next:
            self._next = now + self._interval
            self.cancelled = bool(self._ask())
        return self.cancelled


class RagPipeline:
    """Runs requests through named flows over one set of stages."""

    def __init__(self, stages: Stages, flows: Mapping[str, Flow] | None = None,
                 cancel_check_s: float = CANCEL_CHECK_S, cache: AnswerCache | None = None) -> None:
        self.stages = stages
        self.flows = dict(flows) if flows is not None else standard_flows(stages)
        self.cancel_check_s = cancel_check_s
        self.cache = cache

    async def run(self, request: RagRequest, is_cancelled: Callable[[], bool] = lambda: False,
                  flow: str = DEFAULT_FLOW) -> AsyncIterator[Event]:
        """The events answering ``request``; never raises (a failure is the terminal event). With an answer cache:
        an exact hit skips every step, a semantic one every step after embedding; an answer generated after a miss
        is cached (tritonrag.pipeline.answer_cache)."""
        watch = CancelWatch(is_cancelled, self.cancel_check_s)
        plan, live = None, None
        try:
            chosen = self._flow(request.params.flow or flow)
            state = RagState(request, cite=chosen.cite)
            plan, hit = await self._look_up(chosen, state)
            shown = Shown()
            if hit is not None and hit.live is not None:  # the same question is being answered now: follow it
                async for event in follow(state, hit.live, watch, self.cache.settings.coalesce_wait_s, shown):
                    if isinstance(event, FinalEvent):
                        self.cache.followed()
                        event = replace(event, timing=state.timing_json(), usage=state.usage.to_json(),
                                        query=state.query, cache=EXACT)
                    yield event
                if shown.finished:
                    return
                hit = None  # it ended uncached before this request was sent any text: answer it anew
            live = self.cache.lead(plan) if plan is not None and hit is None else None
            if hit is None:
                hit = await self._prepare(chosen, state, plan)
            if hit is not None:
                answer = replay(state, hit.answer)
            elif state.abstention:
                answer = abstain(state)
            elif chosen.check is not None:
                answer = chosen.check.answer(state, watch, lambda: generate(self.stages.generator, state, watch,
                                                                            stream=False))
            else:
                answer = generate(self.stages.generator, state, watch)
            status = hit.tier if hit is not None else MISS if plan is not None else OFF
            kept = (live or LiveAnswer()) if plan is not None and hit is None and not state.abstention else None
            async for event in answer:
                if kept is not None:
                    kept.add(event)  # followers get it as this request's client does
                if isinstance(event, SourcesEvent) and shown.sources is not None and event.sources == shown.sources:
                    continue  # sent already while following
                if isinstance(event, FinalEvent):
                    if kept is not None and event.finish_reason in CACHEABLE_FINISHES:
                        cached = kept.answer_of(event, state.query)
                        await self.cache.put(plan, cached, state.embedding, state.kb_version)
                        if live is not None:
                            self.cache.done(plan, live, cached)
                    event = replace(event, timing=state.timing_json(), usage=state.usage.to_json(), query=state.query,
                                    cache=status)
                yield event
        except Exception as exc:
            yield CancelledEvent() if _client_gone(is_cancelled) else failure(exc)
        finally:
            if live is not None:
                self.cache.done(plan, live, None)  # (no-op when it ended with its answer)

    async def _look_up(self, chosen: Flow, state: RagState) -> tuple[Plan | None, Hit | None]:
        """The request's cache plan (None: no cache, or bypassed) and its exact hit."""
        if self.cache is None:
            return None, None
        started = time.perf_counter()
        plan = await self.cache.plan(state.request, chosen.name, chosen.retrieves, chosen.reads_history,
                                     chosen.embeds)
        hit = await self.cache.exact(plan) if plan is not None else None
        state.timed("cache", started)
        return plan, hit

    async def _prepare(self, chosen: Flow, state: RagState, plan: Plan | None) -> Hit | None:
        """Run the flow's steps; once the question is embedded, ask the cache's semantic tier (a hit ends them)."""
        for step in chosen.steps:
            await step.run(state)
            if plan is not None and isinstance(step, EmbedQuery):
                started = time.perf_counter()
                hit = await self.cache.semantic(plan, state.embedding)
                state.timed("cache_semantic", started)
                if hit is not None:
                    return hit
        if plan is not None:
            self.cache.missed()
        return None

    def _flow(self, name: str) -> Flow:
        if name not in self.flows:
            raise InvalidInput(f"unknown flow {name!r}; available flows: {', '.join(sorted(self.flows))}")
        return self.flows[name]


def _client_gone(is_cancelled: Callable[[], bool]) -> bool:
    try:
        return bool(is_cancelled())
    except Exception:  # asking failed: the client is most likely gone, and there is nobody to tell
        return True


CACHEABLE_FINISHES = ("stop", "length")  # answers worth replaying (not abstentions, errors or cancellations)


@dataclass
class Shown:
    """What a request following a live answer was sent: its sources, whether any text, and whether it finished."""

    sources: str | None = None
    text: str = ""
    finished: bool = False


FOLLOW_POLL_MIN_S = 0.01
FOLLOW_CUT = ("the identical request this one was sharing an answer with was cancelled or failed after part of the "
              "answer was sent; retry")


async def follow(state: RagState, live: LiveAnswer, watch: CancelWatch, wait_s: float,
                 shown: Shown) -> AsyncIterator[Event]:
    """Another request's answer to the same question as it is generated: (stream) what it has sent so far at once,
    then each piece as it comes, then its final event from the cached answer; or the final alone. Ends without a
    final (``shown.finished`` False) when it ends uncached, or stalls for ``wait_s``, before any text was sent here;
    raises Unavailable after that. Raises RequestCancelled when this request's client goes away."""
    stream, idle = state.request.stream, 0.0
    poll_s = max(watch.interval, FOLLOW_POLL_MIN_S)  # how often an idle wait looks at this request's client
    while True:
        if stream and shown.sources is None and live.sources is not None:
            shown.sources = live.sources
            yield SourcesEvent(live.sources)
        text = "".join(live.pieces)
        if stream and len(text) > len(shown.text):
            piece, shown.text = text[len(shown.text):], text
            yield TextEvent(piece)
        if live.ended or idle >= wait_s:
            break
        step = min(poll_s, wait_s - idle)
        try:
            await live.changed(step)
            idle = 0.0
        except TimeoutError:
            idle += step
        if watch.check():
            raise RequestCancelled
    answer = live.answer if live.ended else None
    if answer is None or not answer.text.startswith(shown.text):
        if shown.text:
            raise Unavailable(FOLLOW_CUT)
        return
    shown.finished = True
    if not stream:
        yield FinalEvent(answer.text, answer.finish_reason, answer.sources, answer.citations)
        return
    if shown.sources is None:
        yield SourcesEvent(answer.sources)
    if len(answer.text) > len(shown.text):
        yield TextEvent(answer.text[len(shown.text):])
    yield FinalEvent("", answer.finish_reason, citations=answer.citations)


async def replay(state: RagState, answer: CachedAnswer) -> AsyncIterator[Event]:
    """A cached answer in the shape of a generated one: (stream) sources, the text, final; or the final alone."""
    if state.request.stream:
        yield SourcesEvent(answer.sources)
        if answer.text:
            yield TextEvent(answer.text)
        yield FinalEvent("", answer.finish_reason, citations=answer.citations)
    else:
        yield FinalEvent(answer.text, answer.finish_reason, answer.sources, answer.citations)


async def abstain(state: RagState) -> AsyncIterator[Event]:
    """The answer of an abstention, in the shape of a generated one: (stream) sources, the message as text, final."""
    message = state.abstention.message
    if state.request.stream:
        yield SourcesEvent(state.sources)
        yield TextEvent(message)
        yield FinalEvent("", ABSTAINED, citations="[]")
    else:
        yield FinalEvent(message, ABSTAINED, state.sources, "[]")


async def generate(generator: GenerateStage, state: RagState, watch: CancelWatch,
                   stream: bool | None = None) -> AsyncIterator[Event]:
    """Stream the answer to ``state.prompt``: sources first (streaming), text pieces, then the final event with the
    passages cited (invalid citations dropped; none for a JSON answer; [] for a flow without retrieval, whose answer
    is not filtered). ``stream`` overrides the request's mode; the generation's tokens are counted in ``state``.

    Raises RequestCancelled when the client goes away, and whatever the generator raised; either way the
    generator is told to stop and its stream is read to its end first.
    """
    stream_mode = state.request.stream if stream is None else stream
    params, prompt = state.request.params, state.prompt
    sampling = params.sampling()
    if prompt.json_output and not params.structured:
        sampling["json_object"] = True  # a JSON template without a schema: any JSON object
    citations = None if state.json_answer or not state.cite else CitationFilter(prompt.passages, prompt.order)
    sources = state.sources
    if stream_mode:
        yield SourcesEvent(sources)
    pieces, finish_reason = [], "stop"
    started = time.perf_counter()
    async with stopped_unless_read(await generator.start(prompt, sampling, stream_mode)) as generation:
        async for chunk in generation:
            if watch.check():
                raise RequestCancelled
            if chunk.text and "first_token_ms" not in state.timing:
                state.timed("first_token", started)
            if chunk.finish_reason:
                finish_reason = chunk.finish_reason
            state.count(chunk)
            text = citations.feed(chunk.text) if citations else chunk.text
            if stream_mode and text:
                yield TextEvent(text)
            elif not stream_mode:
                pieces.append(text)
    state.timed("generate", started)
    rest = citations.flush() if citations else ""
    if stream_mode and rest:
        yield TextEvent(rest)
    if citations:
        cited = citations_json(citations.cited, state.passages)
    else:
        cited = None if state.json_answer else "[]"
    yield FinalEvent("" if stream_mode else "".join(pieces) + rest, finish_reason,
                     None if stream_mode else sources, cited)
