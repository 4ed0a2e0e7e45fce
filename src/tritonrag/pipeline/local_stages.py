"""The pipeline's stages as direct calls in this process: the same functions the served models call, without Triton.

The reference the orchestration-overhead benchmark compares the served pipeline with, and a way to run RAG in
one process (a notebook, a test).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np

from tritonrag.embedding.encoder import TextEmbedder
from tritonrag.errors import Unsupported
from tritonrag.generation.engine import Engine
from tritonrag.generation.sampling import Completion, SamplingParams
from tritonrag.kb.batched_search import parse_search, run_searches
from tritonrag.kb.filters import Filter
from tritonrag.kb.search import KnowledgeBase
from tritonrag.pipeline.stages import PromptOptions, RetrievalOptions
from tritonrag.pipeline.types import GenerationChunk, Passage, Prompt, Retrieval, Usage
from tritonrag.prompts.builder import ContextDocument, PromptBuilder
from tritonrag.reranking.rescorer import Rescorer
from tritonrag.serving.contract import RETRIEVER
from tritonrag.settings import GeneratorSettings, RetrieverSettings


class LocalStages:
    """Embedder, knowledge base, reranker, prompt builder and engine of this process, as the pipeline's stages
    (``rescorer`` None: requests with rerank true are refused)."""

    def __init__(self, embedder: TextEmbedder, kb: KnowledgeBase, retriever: RetrieverSettings,
                 builder: PromptBuilder, template: str, engine: Engine, generator: GeneratorSettings,
                 rescorer: Rescorer | None = None) -> None:
        self._embedder, self._kb, self._retriever = embedder, kb, retriever
        self._builder, self._template = builder, template
        self._engine, self._generator = engine, generator  # one engine: every generator name runs on it
        self._rescorer = rescorer
        self.embedder, self.retriever, self.reranker, self.prompt_builder, self.generator = (self,) * 5

    async def embed(self, text: str) -> np.ndarray:
        return self._embedder.encode_mixed([text], [""])

    async def retrieve(self, embedding: np.ndarray, query: str, top_k: int | None, flt: Filter | None,
                       options: RetrievalOptions) -> Retrieval:
        parameters = {RETRIEVER.mode: options.mode, RETRIEVER.candidates: options.candidates,
                      RETRIEVER.fusion: options.fusion}
        search = parse_search(embedding, self._kb.dimension, top_k, flt.to_json() if flt else None,
                              {k: v for k, v in parameters.items() if v is not None}, self._retriever, [query])
        (result,) = run_searches(self._kb, [search], self._retriever)
        return Retrieval([Passage(h.chunk_id, h.score, h.text, h.metadata(), h.similarity, h.found_json())
                          for h in result.rows[0]], result.timing, self._kb.version)

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        if self._rescorer is None:
            raise Unsupported("no reranker in this process: set rerank false")
        (scores,) = self._rescorer.score([query], [list(texts)])
        return [float(s) for s in scores]

    async def build(self, query: str, passages: Sequence[Passage], options: PromptOptions) -> Prompt:
        documents = [ContextDocument.from_metadata(p.text, p.metadata) for p in passages]
        built = self._builder.build(options.template or self._template, query, documents, options.system_prompt,
                                    options.generator, json.dumps(options.schema) if options.schema else "",
                                    options.answer or "", options.history)
        return Prompt(built.text, built.stop, built.passages, built.json_output, built.order)

    async def start(self, prompt: Prompt, sampling: Mapping[str, Any], stream: bool,
                    generator: str | None = None) -> LocalGeneration:
        params = SamplingParams.from_request({**sampling, "stop": list(prompt.stop)}, self._generator)
        generation = LocalGeneration(asyncio.get_running_loop())
        self._engine.submit(prompt.text, params, generation)
        return generation


class LocalGeneration:
    """An engine request seen as a stream: the engine's callbacks (on its own thread) feed an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[GenerationChunk | BaseException | None] = asyncio.Queue()
        self._stopped = False
        self._done = False

    def _put(self, item: GenerationChunk | BaseException | None) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # GenerationSink, called on the engine's thread
    def on_text(self, text: str, tokens: int) -> bool:
        if not self._stopped:
            self._put(GenerationChunk(text))
        return not self._stopped

    def on_finish(self, completion: Completion) -> None:
        self._put(GenerationChunk("", completion.finish_reason,
                                  Usage(completion.prompt_tokens, completion.completion_tokens)))
        self._put(None)

    def on_error(self, error: BaseException) -> None:
        self._put(error)
        self._put(None)

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, BaseException):
                self._done = True
                raise item
            yield item
        self._done = True

    async def cancel(self) -> None:
        self._stopped = True  # the engine aborts the request at its next piece of text

    async def close(self) -> None:
        while not self._done and await self._queue.get() is not None:
            pass
        self._done = True
