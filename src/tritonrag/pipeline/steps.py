"""The steps a flow runs before generation, each filling in part of the request's state. Later stages (rerank, an
answer cache, question condensing) are more steps of this kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.sources import sources_json
from tritonrag.pipeline.stages import EmbedStage, PromptOptions, PromptStage, RetrieveStage
from tritonrag.pipeline.types import Passage, Prompt, RagRequest


@dataclass(frozen=True)
class Abstention:
    """Why the pipeline answers without generating: the best passage scores under the request's threshold."""

    best_score: float
    min_score: float

    @property
    def message(self) -> str:
        return (f"The documents do not contain an answer to this question: the best passage scores "
                f"{self.best_score:.2f}, under the threshold {self.min_score:.2f} (parameter min_score; 0 disables).")


@dataclass
class RagState:
    """What the steps know so far of one request."""

    request: RagRequest
    query: str = ""  # the question the steps work on (a condense step may rewrite it)
    embedding: np.ndarray | None = None
    passages: list[Passage] = field(default_factory=list)
    prompt: Prompt | None = None
    abstention: Abstention | None = None  # set: answer that, generate nothing

    def __post_init__(self) -> None:
        self.query = self.query or self.request.query

    @property
    def json_answer(self) -> bool:
        """The answer is JSON: the request asks for it, or the prompt's template does (no citations, no check)."""
        return self.request.params.structured or bool(self.prompt and self.prompt.json_output)

    @property
    def sources(self) -> str:
        """The `sources` output: the passages as JSON, best first."""
        return sources_json([p.chunk_id for p in self.passages], [p.score for p in self.passages],
                            [p.metadata for p in self.passages], [p.text for p in self.passages])


class Step(Protocol):
    name: str

    async def run(self, state: RagState) -> None: ...


@dataclass(frozen=True)
class EmbedQuery:
    embedder: EmbedStage
    name: str = "embed"

    async def run(self, state: RagState) -> None:
        state.embedding = await self.embedder.embed(state.query)


@dataclass(frozen=True)
class Retrieve:
    retriever: RetrieveStage
    name: str = "retrieve"

    async def run(self, state: RagState) -> None:
        params = state.request.params
        state.passages = await self.retriever.retrieve(state.embedding, params.top_k, params.filter)
        if not state.passages:
            raise InvalidInput(f"the filter {params.filter.to_json()} matches no document in the knowledge base"
                               if params.filter else "the knowledge base is empty: ingest documents first")


@dataclass(frozen=True)
class AbstainOnWeakEvidence:
    """Abstain, without spending generation, when even the best passage scores under the request's min_score."""

    name: str = "abstain"

    async def run(self, state: RagState) -> None:
        threshold = state.request.params.min_score
        best = max((p.score for p in state.passages), default=float("-inf"))
        if threshold and best < threshold:
            state.abstention = Abstention(best, threshold)


@dataclass(frozen=True)
class BuildPrompt:
    prompt_builder: PromptStage
    name: str = "prompt"

    async def run(self, state: RagState) -> None:
        if state.abstention is not None:
            return
        params = state.request.params
        options = PromptOptions(params.template, params.system_prompt, schema=params.json_schema)
        state.prompt = await self.prompt_builder.build(state.query, state.passages, options)
