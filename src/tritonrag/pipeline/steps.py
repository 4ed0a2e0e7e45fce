"""The steps a flow runs before generation, each filling in part of the request's state. Reranking and rag-chat's
question condensing are steps of this kind; the answer cache asks before the first and after EmbedQuery
(tritonrag.pipeline.flow)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.errors import RequestCancelled
from tritonrag.pipeline.sources import sources_json
from tritonrag.pipeline.stages import (
    EmbedStage,
    GenerateStage,
    GenerationStream,
    PromptOptions,
    PromptStage,
    RerankStage,
    RetrievalOptions,
    RetrieveStage,
    stopped_unless_read,
)
from tritonrag.pipeline.types import GenerationChunk, Passage, Prompt, RagRequest, Usage

CONDENSE_TEMPLATE = "condense"
CHAT_TEMPLATE = "chat"


@dataclass(frozen=True)
class Abstention:
    """Why the pipeline answers without generating: the best passage scores under the request's threshold."""

    best_score: float
    min_score: float

    @property
    def message(self) -> str:
        return (f"The documents do not contain an answer to this question: the best passage's similarity with it "
                f"is {self.best_score:.2f}, under the threshold {self.min_score:.2f} "
                "(parameter min_score; 0 disables).")


@dataclass
class RagState:
    """What the steps know so far of one request."""

    request: RagRequest
    query: str = ""  # the question the steps work on (a condense step may rewrite it)
    embedding: np.ndarray | None = None
    passages: list[Passage] = field(default_factory=list)
    prompt: Prompt | None = None
    abstention: Abstention | None = None  # set: answer that, generate nothing
    cite: bool = True  # the answer may cite passages (its citations are checked); False: a flow without retrieval
    usage: Usage = field(default_factory=Usage)  # tokens of every generation so far (the response's `usage`)
    kb_version: str | None = None  # the knowledge-base version the passages came from (None: none read)
    timing: dict[str, float] = field(default_factory=dict)  # milliseconds of each step (the response's `timing`)
    started: float = field(default_factory=time.perf_counter)

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
                            [p.metadata for p in self.passages], [p.text for p in self.passages],
                            [_retrieval(p) for p in self.passages])

    def timing_json(self) -> str:
        """The `timing` output: each step's milliseconds, and the total so far."""
        return json.dumps({**self.timing, "total_ms": round(1000 * (time.perf_counter() - self.started), 3)})

    def timed(self, name: str, since: float) -> None:
        """Record that step ``name`` ran from ``since`` (time.perf_counter) until now."""
        self.timing[f"{name}_ms"] = round(1000 * (time.perf_counter() - since), 3)

    def count(self, chunk: GenerationChunk) -> None:
        """Add the tokens a generation reports (on its last chunk) to the request's usage."""
        if chunk.usage is not None:
            self.usage += chunk.usage


async def read_text(generation: GenerationStream, state: RagState,
                    cancelled: Callable[[], bool] = lambda: False) -> str:
    """The whole text of a generation that is not streamed to the client, its tokens counted in ``state``. Raises
    RequestCancelled when ``cancelled()`` says the client went away (the generator is stopped first)."""
    pieces = []
    async with stopped_unless_read(generation) as chunks:
        async for chunk in chunks:
            if cancelled():
                raise RequestCancelled
            state.count(chunk)
            pieces.append(chunk.text)
    return "".join(pieces)


def _retrieval(passage: Passage) -> dict[str, object]:
    out: dict[str, object] = dict(passage.found)
    if passage.similarity is not None:
        out["similarity"] = round(passage.similarity, 4)
    return out


class Step(Protocol):
    name: str

    async def run(self, state: RagState) -> None: ...


@dataclass(frozen=True)
class EmbedQuery:
    embedder: EmbedStage
    name: str = "embed"

    async def run(self, state: RagState) -> None:
        started = time.perf_counter()
        state.embedding = await self.embedder.embed(state.query)
        state.timed(self.name, started)


@dataclass(frozen=True)
class Retrieve:
    """Search the knowledge base; with reranking on, for the reranker's candidates rather than top_k."""

    retriever: RetrieveStage
    name: str = "retrieve"

    async def run(self, state: RagState) -> None:
        params = state.request.params
        started = time.perf_counter()
        options = RetrievalOptions(params.mode, params.candidates, params.fusion)
        found = await self.retriever.retrieve(state.embedding, state.query, params.retrieved, params.filter, options)
        state.timed(self.name, started)
        state.timing.update(found.timing)
        state.passages = found.passages
        state.kb_version = found.version
        if not state.passages:
            if params.filter:
                raise InvalidInput(f"the filter {params.filter.to_json()} matches no document in the knowledge base")
            if params.mode == "sparse":
                raise InvalidInput("no passage shares a word with the question (mode sparse searches words): "
                                   "rephrase it, or use mode hybrid or dense")
            raise InvalidInput("the knowledge base is empty: ingest documents first")


def rerank_order(scores: Sequence[float], fusion: str = "none",
                 rrf_k: float = 60.0) -> tuple[list[int], list[int], list[float]]:
    """How the rerank step orders candidates given in retrieval order: their indices in the new order, each one's
    reranker rank (1-based) and final score. "none": the reranker's score; "rrf": 1 / (rrf_k + retrieval rank) +
    1 / (rrf_k + reranker rank). Ties go to the better reranker rank."""
    by_rerank = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    rerank_rank = [0] * len(scores)
    for rank, i in enumerate(by_rerank, start=1):
        rerank_rank[i] = rank
    if fusion == "rrf":
        final = [1 / (rrf_k + i + 1) + 1 / (rrf_k + rerank_rank[i]) for i in range(len(scores))]
    else:
        final = [float(s) for s in scores]
    order = sorted(range(len(scores)), key=lambda i: (-final[i], rerank_rank[i]))
    return order, rerank_rank, final


@dataclass(frozen=True)
class Rerank:
    """Score the retrieved candidates with the reranker and keep the request's top_k, best first. With
    ``fusion`` "rrf", a passage's final score fuses its retrieval rank and its reranker rank (reciprocal-rank
    fusion, as the retriever fuses dense and sparse), which suits a bi-encoder re-scorer; "none" trusts the
    reranker alone, as a cross-encoder deserves. Passages longer than ``max_chars`` (the reranker's limit) are
    scored on their beginning (the model reads only its first tokens anyway)."""

    reranker: RerankStage
    fusion: str = "none"
    max_chars: int = 8000
    rrf_k: float = 60.0
    name: str = "rerank"

    async def run(self, state: RagState) -> None:
        params = state.request.params
        if not params.rerank or not state.passages:
            return
        started = time.perf_counter()
        scores = await self.reranker.rerank(state.query, [p.text[:self.max_chars] for p in state.passages])
        state.timed(self.name, started)
        order, rerank_rank, final = rerank_order(scores, self.fusion, self.rrf_k)
        state.passages = [replace(state.passages[i], score=final[i],
                                  found={**state.passages[i].found, "retrieval_rank": i + 1,
                                         "rerank": {"rank": rerank_rank[i], "score": round(float(scores[i]), 6)}})
                          for i in order[: params.keep]]


@dataclass(frozen=True)
class AbstainOnWeakEvidence:
    """Abstain, without spending generation, when even the best passage scores under the request's min_score."""

    name: str = "abstain"

    async def run(self, state: RagState) -> None:
        threshold = state.request.params.min_score
        best = max((p.evidence_score for p in state.passages), default=float("-inf"))
        if threshold and best < threshold:
            state.abstention = Abstention(best, threshold)


LABELS = ("standalone question:", "rewritten question:", "question:")  # what a model may put before its rewrite


def standalone_question(rewrite: str, question: str, max_chars: int = 200) -> str:
    """The question a condense generation gives: its first line, without a label or quotes. The original question
    instead when the rewrite is empty, longer than ``max_chars`` or four times the question (absurd), or no question
    where the original was one (a small model may answer instead of rewriting)."""
    lines = [line.strip() for line in rewrite.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for label in LABELS:
        if text.lower().startswith(label):
            text = text[len(label):].strip()
    text = text.strip().strip('"“”').strip()
    original = question.strip()
    if not text or len(text) > max(max_chars, 4 * len(original)):
        return original
    if original.endswith("?") and "?" not in text:
        return original
    return text


@dataclass(frozen=True)
class Condense:
    """rag-chat's first step: when the request has earlier turns, the generator (greedy, at most ``max_tokens``)
    rewrites the question into a standalone one from the conversation (the ``condense`` template), which the
    following steps search and answer with; without history it does nothing."""

    prompt_builder: PromptStage
    generator: GenerateStage
    max_tokens: int = 64
    template: str = CONDENSE_TEMPLATE
    name: str = "condense"

    async def run(self, state: RagState) -> None:
        history = state.request.history
        if not history:
            return
        started = time.perf_counter()
        prompt = await self.prompt_builder.build(state.query, [], PromptOptions(self.template, history=history))
        sampling = {"max_tokens": self.max_tokens, "temperature": 0.0}
        rewrite = await read_text(await self.generator.start(prompt, sampling, False), state)
        state.query = standalone_question(rewrite, state.query)
        state.timed(self.name, started)


@dataclass(frozen=True)
class BuildPrompt:
    """Build the answer's prompt over the passages found, with the request's template (else ``template``, else the
    prompt builder's default); with ``conversation``, the request's earlier turns go with it (the llm flow)."""

    prompt_builder: PromptStage
    template: str | None = None
    conversation: bool = False
    name: str = "prompt"

    async def run(self, state: RagState) -> None:
        if state.abstention is not None:
            return
        params = state.request.params
        started = time.perf_counter()
        options = PromptOptions(params.template or self.template, params.system_prompt, schema=params.json_schema,
                                history=state.request.history if self.conversation else ())
        state.prompt = await self.prompt_builder.build(state.query, state.passages, options)
        state.timed(self.name, started)
