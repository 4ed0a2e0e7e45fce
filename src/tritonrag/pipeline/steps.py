"""The steps a flow runs before generation, each filling in part of the request's state. Later stages (rerank, an
answer cache, question condensing) are more steps of this kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.sources import sources_json
from tritonrag.pipeline.stages import EmbedStage, PromptStage, RetrieveStage
from tritonrag.pipeline.types import Passage, Prompt, RagRequest


@dataclass
class RagState:
    """What the steps know so far of one request."""

    request: RagRequest
    query: str = ""  # the question the steps work on (a condense step may rewrite it)
    embedding: np.ndarray | None = None
    passages: list[Passage] = field(default_factory=list)
    prompt: Prompt | None = None

    def __post_init__(self) -> None:
        self.query = self.query or self.request.query

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
class BuildPrompt:
    prompt_builder: PromptStage
    name: str = "prompt"

    async def run(self, state: RagState) -> None:
        state.prompt = await self.prompt_builder.build(state.query, state.passages, state.request.params.template)
