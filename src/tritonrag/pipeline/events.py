"""What the pipeline emits for one request, in order: (stream) sources first, text pieces, then exactly one terminal
event: the final answer, a failure, or a cancellation."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class SourcesEvent:
    """The retrieved sources (JSON), sent before the answer streams so a client can show them meanwhile."""

    sources: str


@dataclass(frozen=True)
class TextEvent:
    """A new piece of a streamed answer."""

    text: str


ABSTAINED = "abstained"  # the finish reason of an answer given without generating (tritonrag.pipeline.steps)


@dataclass(frozen=True)
class FinalEvent:
    """The end of the answer: the whole text when not streamed (else ""), the sources when not sent before, and
    the passages the answer cites (JSON, tritonrag.pipeline.citations; None for a JSON answer)."""

    text: str
    finish_reason: str
    sources: str | None = None
    citations: str | None = None
    # JSON: milliseconds of each step (embed, retrieve, dense, sparse, rerank, ...); not part of equality
    timing: str | None = field(default=None, compare=False)
    # JSON: tokens of every generation the request ran (tritonrag.pipeline.types.Usage); not part of equality
    usage: str | None = field(default=None, compare=False)
    # the question the flow searched with (rag-chat: the condensed one); not part of equality
    query: str | None = field(default=None, compare=False)
    # the answer cache's part: "exact", "semantic", "miss" or "off" (tritonrag.pipeline.answer_cache); not part of
    # equality
    cache: str | None = field(default=None, compare=False)


class ErrorCode(Enum):
    """How a failure maps onto the serving layer's status codes (Triton: TritonError codes; HTTP: 4xx/5xx)."""

    INVALID_ARG = "invalid_arg"  # the request is at fault: the message says what to change
    NOT_FOUND = "not_found"  # something the request names does not exist
    UNSUPPORTED = "unsupported"  # the request asks for something this deployment does not do
    UNAVAILABLE = "unavailable"  # a stage cannot answer now (not loaded, no knowledge base yet, overloaded)
    INTERNAL = "internal"  # a bug or a fault of the server


@dataclass(frozen=True)
class FailedEvent:
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class CancelledEvent:
    """The client went away; nobody reads an answer or an error."""


Event = SourcesEvent | TextEvent | FinalEvent | FailedEvent | CancelledEvent
TERMINAL = (FinalEvent, FailedEvent, CancelledEvent)
