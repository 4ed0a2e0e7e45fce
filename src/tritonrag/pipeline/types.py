"""The values that flow between the pipeline's stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.request import RagParams
from tritonrag.settings import RagSettings, RetrieverSettings


@dataclass(frozen=True)
class RagRequest:
    """One question and its validated options."""

    query: str
    params: RagParams = field(default_factory=RagParams)

    @property
    def stream(self) -> bool:
        return self.params.stream

    @classmethod
    def parse(cls, query: str, parameters: Mapping[str, Any], stream: bool | None, rag: RagSettings,
              retriever: RetrieverSettings) -> RagRequest:
        """Validate a request: its text, its parameters, and a `stream` input that overrides the parameter."""
        if not query.strip():
            raise InvalidInput("input 'text_input' is empty: send a question")
        params = RagParams.from_parameters(parameters, rag, retriever)
        if stream is not None and stream != params.stream:
            params = replace(params, stream=bool(stream))
        return cls(query, params)


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
    """The retriever's answer: passages best first, and the milliseconds each of its steps took."""

    passages: list[Passage]
    timing: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Prompt:
    """What the generator is asked: the prompt text, its stop strings, how many passages it holds (numbered
    1..passages: what an answer may cite), and whether its template asks for a JSON answer."""

    text: str
    stop: tuple[str, ...] = ()
    passages: int = 0
    json_output: bool = False


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of generated text; the last one of a generation carries its finish reason."""

    text: str
    finish_reason: str | None = None
