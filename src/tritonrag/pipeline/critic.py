"""The ``qa-checked`` flow's answer check: a critic pass asks a generator whether the passages support the answer.

The answer is generated whole first (nobody sees it yet). The critic (the ``critic`` template, on the generator the
[rag] critic_generator setting names, decoding constrained to ``{"supported": true|false}``) reads the passages, the
question and the answer. Supported: the answer goes out. Not: the answer is generated again with the stricter
``qa_strict`` template and checked again; still not: the pipeline abstains, saying why. A JSON answer (structured
output) is not checked. Costs one or two more generations: benchmarks/answer_quality.py measures it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tritonrag.pipeline.events import ABSTAINED, Event, FinalEvent, SourcesEvent, TextEvent
from tritonrag.pipeline.stages import GenerateStage, PromptOptions, PromptStage
from tritonrag.pipeline.steps import RagState, read_text

if TYPE_CHECKING:  # flow.py imports this module
    from tritonrag.pipeline.flow import CancelWatch

log = logging.getLogger(__name__)

SUPPORT_SCHEMA = {"type": "object", "properties": {"supported": {"type": "boolean"}}, "required": ["supported"],
                  "additionalProperties": False}
CRITIC_TEMPLATE = "critic"
STRICT_TEMPLATE = "qa_strict"
UNSUPPORTED = ("The documents do not contain an answer to this question that the passages support: a check of the "
               "answer against the passages found it unsupported twice (flow qa-checked).")


def parse_verdict(text: str) -> bool:
    """The critic's verdict; anything but a JSON object with "supported": true counts as unsupported."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("supported") is True


@dataclass(frozen=True)
class AnswerCheck:
    prompt_builder: PromptStage
    generator: GenerateStage
    critic_generator: str | None = None  # a served generator's name; None: the default one
    max_tokens: int = 12

    async def verdict(self, state: RagState, answer: str, watch: CancelWatch) -> bool:
        """Whether the critic finds ``answer`` supported by the request's passages."""
        if not answer.strip():
            return False
        prompt = await self.prompt_builder.build(
            state.query, state.passages, PromptOptions(CRITIC_TEMPLATE, generator=self.critic_generator,
                                                       answer=answer))
        sampling = {"max_tokens": self.max_tokens, "temperature": 0.0, "json_schema": SUPPORT_SCHEMA}
        generation = await self.generator.start(prompt, sampling, False, self.critic_generator)
        text = await read_text(generation, state, watch.check)
        supported = parse_verdict(text)
        log.debug("critic verdict %s for %r: %r", supported, answer[:80], text)
        return supported

    async def answer(self, state: RagState, watch: CancelWatch,
                     generate: Callable[[], AsyncIterator[Event]]) -> AsyncIterator[Event]:
        """The checked answer as events: (stream) sources, the whole answer as one text piece, then final."""
        stream = state.request.stream
        if stream:
            yield SourcesEvent(state.sources)
        final = await _final(generate())
        if not state.json_answer and not await self.verdict(state, final.text, watch):
            params = state.request.params
            state.prompt = await self.prompt_builder.build(
                state.query, state.passages, PromptOptions(STRICT_TEMPLATE, params.system_prompt))
            final = await _final(generate())
            if not await self.verdict(state, final.text, watch):
                final = FinalEvent(UNSUPPORTED, ABSTAINED, final.sources, "[]")
        if stream:
            if final.text:
                yield TextEvent(final.text)
            yield FinalEvent("", final.finish_reason, None, final.citations)
        else:
            yield final


async def _final(events: AsyncIterator[Event]) -> FinalEvent:
    final = None
    async for event in events:
        if isinstance(event, FinalEvent):
            final = event
    if final is None:  # generate always ends with a FinalEvent or raises
        raise RuntimeError("the generation ended without a final answer")
    return final
