"""The values that flow between the pipeline's stages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.request import RagParams
from tritonrag.prompts.history import Turn, parse_history
from tritonrag.settings import RagSettings, RetrieverSettings


@dataclass(frozen=True)
class RagRequest:
    """One question, the conversation's earlier turns (oldest first; the flows rag-chat and llm read them) and its
    validated options."""

    query: str
    params: RagParams = field(default_factory=RagParams)
    history: tuple[Turn, ...] = ()

    @property
    def stream(self) -> bool:
        return self.params.stream

    @classmethod
    def parse(cls, query: str, parameters: Mapping[str, Any], stream: bool | None, rag: RagSettings,
              retriever: RetrieverSettings, history: str | Sequence[Any] | None = None) -> RagRequest:
        """Validate a request: its text, its parameters, a `stream` input that overrides the parameter, and the
        `history` input (JSON: at most [rag] max_history_messages messages of role user or assistant)."""
        if not query.strip():
            raise InvalidInput("input 'text_input' is empty: send a question")
        params = RagParams.from_parameters(parameters, rag, retriever)
        if stream is not None and stream != params.stream:
            params = replace(params, stream=bool(stream))
        return cls(query, params, parse_history(history, rag.max_history_messages))


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk: its id and score (the last ranking's: retrieval's, or the reranker's), its text, its
    document's metadata (source, title, section, ...), its cosine similarity with the question (None when unknown),
    and where it was found (``{"dense": {"rank": 1, "score": 0.6}, "sparse": ..., "rerank": ...}``)."""

    chunk_id: int
    score: float
    text: str
    metadata: Mapping[str, Any]
    similarity: float | None = None
    found: Mapping[str, Any] = field(default_factory=dict)

    @property
    def evidence_score(self) -> float:
        """What min_score compares: the cosine similarity when known (comparable across modes), else the score."""
        return self.score if self.similarity is None else self.similarity


@dataclass(frozen=True)
class Retrieval:
    """The retriever's answer: passages best first, the milliseconds each of its steps took, and the knowledge-base
    version it searched (None: unknown)."""

    passages: list[Passage]
    timing: Mapping[str, float] = field(default_factory=dict)
    version: str | None = None


@dataclass(frozen=True)
class Prompt:
    """What the generator is asked: the prompt text, its stop strings, how many passages it holds (numbered
    1..passages: what an answer may cite), and whether its template asks for a JSON answer."""

    text: str
    stop: tuple[str, ...] = ()
    passages: int = 0
    json_output: bool = False
    order: tuple[int, ...] = ()  # BuiltPrompt.order: prompt passage n is passages[order[n - 1]] (empty: as given)


@dataclass(frozen=True)
class Usage:
    """Tokens a request cost: its prompts' and what was generated, summed over every generation it ran."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> str:
        """The `usage` output: {"prompt_tokens", "completion_tokens", "total_tokens"}."""
        return json.dumps({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                           "total_tokens": self.total_tokens})


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of generated text; the last one of a generation carries its finish reason and, when the generator
    reports it, the generation's tokens."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
