"""What the pipeline needs of each stage, as protocols: the Triton adapter supplies BLS-backed stages
(tritonrag.serving.bls_stages), the benchmarks in-process ones (tritonrag.pipeline.local_stages), the unit tests fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tritonrag.kb.filters import Filter
from tritonrag.pipeline.types import GenerationChunk, Passage, Prompt, Retrieval
from tritonrag.prompts.history import Turn


class EmbedStage(Protocol):
    async def embed(self, text: str) -> np.ndarray:
        """The query's vector, [1, dim] float32."""


@dataclass(frozen=True)
class RetrievalOptions:
    """How a request searches; None: the retriever's default ([retriever] mode, candidates, fusion)."""

    mode: str | None = None
    candidates: int | None = None
    fusion: str | None = None


class RetrieveStage(Protocol):
    async def retrieve(self, embedding: np.ndarray, query: str, top_k: int | None, flt: Filter | None,
                       options: RetrievalOptions) -> Retrieval:
        """The best passages for the question (its vector and its text), best first (``top_k`` None: the
        retriever's default)."""


class RerankStage(Protocol):
    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        """A relevance score of each text for ``query`` (higher is better)."""


@dataclass(frozen=True)
class PromptOptions:
    """What a request may set of its prompt; None: the prompt builder's default."""

    template: str | None = None
    system_prompt: str | None = None
    generator: str | None = None  # the served generator the prompt is for (its chat template)
    schema: Mapping[str, Any] | None = None  # shown to the model by templates that ask for JSON
    answer: str | None = None  # the answer a critic template reviews
    history: tuple[Turn, ...] = ()  # a conversation's earlier turns (the prompt builder bounds them by tokens)


class PromptStage(Protocol):
    async def build(self, query: str, passages: Sequence[Passage], options: PromptOptions) -> Prompt:
        """The prompt for ``query`` over ``passages``."""


class GenerationStream(Protocol):
    """One generation in flight: its chunks as they come; ``cancel`` asks the generator to stop, ``close`` reads
    what is left so the stream ends cleanly (Triton 2.51's BLS streams must be read to their end)."""

    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...

    async def cancel(self) -> None: ...

    async def close(self) -> None: ...


@asynccontextmanager
async def stopped_unless_read(stream: GenerationStream) -> AsyncIterator[GenerationStream]:
    """Read ``stream`` inside this block; leaving it by an exception (the client cancelled, a stage failed, the
    caller went away) first stops the generator working for nobody: cancel, then read what is left."""
    try:
        yield stream
    except BaseException:
        await stream.cancel()
        await stream.close()
        raise


class GenerateStage(Protocol):
    async def start(self, prompt: Prompt, sampling: Mapping[str, Any], stream: bool,
                    generator: str | None = None) -> GenerationStream:
        """Start generating on the served generator named ``generator`` (None: the default one); ``sampling`` holds
        only what the request set (the generator has the defaults)."""


class Stages(Protocol):
    """The stages of the standard RAG flow."""

    embedder: EmbedStage
    retriever: RetrieveStage
    reranker: RerankStage
    prompt_builder: PromptStage
    generator: GenerateStage
