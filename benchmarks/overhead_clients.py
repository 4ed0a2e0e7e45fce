"""The callers the orchestration-overhead benchmark times: `rag` over a gRPC stream and over HTTP /generate, and
the same pipeline in process (tritonrag.pipeline.RagPipeline over in-process stages)."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonrag.serving.contract import EMBEDDER, PROMPT_BUILDER, RAG, RETRIEVER

IN_PROCESS = "in-process"


@dataclass(frozen=True)
class Config:
    """One measured configuration: server variant, protocol (grpc stream / http generate / in-process), length."""

    variant: str  # a server variant, or IN_PROCESS
    protocol: str  # "grpc-stream", "http-generate" or IN_PROCESS
    max_tokens: int

    @property
    def name(self) -> str:
        return f"{self.protocol} max_tokens={self.max_tokens}"

    def row(self) -> dict[str, Any]:
        return {"variant": self.variant, "config": self.name, "protocol": self.protocol, "max_tokens": self.max_tokens}


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    pieces: int


class GrpcRag:
    """One gRPC stream to `rag`, reused for sequential requests (as a long-lived client would)."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=lambda result, error: self._results.put((result, error)))
        self._ids = iter(range(10**12))

    def ask(self, question: str, max_tokens: int, stream: bool = True) -> Sample:
        grpc = self._grpc
        text = grpc.InferInput(RAG.text_input, [1], "BYTES")
        text.set_data_from_numpy(np.array([question.encode()], dtype=np.object_))
        flag = grpc.InferInput("stream", [1], "BOOL")
        flag.set_data_from_numpy(np.array([stream], dtype=bool))
        request_id = str(next(self._ids))
        started = time.perf_counter()
        ttft, pieces = None, 0
        self.client.async_stream_infer(RAG.model, [text, flag], request_id=request_id,
                                       parameters={"max_tokens": max_tokens}, enable_empty_final_response=True)
        while True:
            result, error = self._results.get(timeout=60)
            if error is not None:
                raise RuntimeError(f"rag over gRPC: {error}")
            response = result.get_response()
            if response.id != request_id:
                raise RuntimeError(f"response for request {response.id!r} while waiting for {request_id!r}")
            if any(o.name == RAG.text_output for o in response.outputs):
                piece = result.as_numpy(RAG.text_output).reshape(-1)[0]
                if piece:
                    pieces += 1
                    if ttft is None:
                        ttft = time.perf_counter() - started
            if response.parameters["triton_final_response"].bool_param:
                total = time.perf_counter() - started
                return Sample(ttft or total, total, pieces)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


class HttpRag:
    """One keep-alive HTTP connection to `rag`'s /generate (a single JSON answer per request)."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def ask(self, question: str, max_tokens: int) -> Sample:
        body = json.dumps({RAG.text_input: question, RAG.stream: False, "parameters": {RAG.max_tokens: max_tokens}})
        started = time.perf_counter()
        self.connection.request("POST", f"/v2/models/{RAG.model}/generate", body,
                                {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        total = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"rag over HTTP: {response.status} {data[:300]!r}")
        return Sample(total, total, 1 if json.loads(data).get(RAG.text_output) else 0)

    def close(self) -> None:
        self.connection.close()


class _TimedStages:
    """The in-process stages, timing each call (embedder, retriever, prompt_builder) per request."""

    def __init__(self, stages: Any) -> None:
        self.inner = stages
        self.embedder = self.retriever = self.prompt_builder = self.generator = self
        self.reranker = stages.reranker  # untimed: the overhead benchmark does not rerank
        self.seconds: dict[str, float] = {EMBEDDER.model: 0.0, RETRIEVER.model: 0.0, PROMPT_BUILDER.model: 0.0}

    async def _timed(self, name: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.seconds[name] += time.perf_counter() - started

    async def embed(self, text: str) -> Any:
        return await self._timed(EMBEDDER.model, self.inner.embed(text))

    async def retrieve(self, embedding: Any, query: str, top_k: Any, flt: Any, options: Any) -> Any:
        return await self._timed(RETRIEVER.model, self.inner.retrieve(embedding, query, top_k, flt, options))

    async def build(self, query: str, passages: Any, template: Any) -> Any:
        return await self._timed(PROMPT_BUILDER.model, self.inner.build(query, passages, template))

    async def start(self, prompt: Any, sampling: Any, stream: bool, generator: Any = None) -> Any:
        return await self.inner.start(prompt, sampling, stream, generator)


class InProcessRag:
    """The `rag` pipeline itself (tritonrag.pipeline.RagPipeline, the code the served `rag` runs) over in-process
    stages (tritonrag.pipeline.local_stages): the served path minus Triton, BLS and the client protocol."""

    def __init__(self, settings: Any) -> None:
        import asyncio

        from tritonrag.embedding.encoder import TextEmbedder
        from tritonrag.generation.engine import create_engine
        from tritonrag.kb.search import KnowledgeBase
        from tritonrag.pipeline.flow import RagPipeline
        from tritonrag.pipeline.local_stages import LocalStages
        from tritonrag.prompts.builder import prompt_builder

        self.settings = settings
        r, p = settings.retriever, settings.prompt_builder
        self.engine = create_engine(settings.generator)
        stages = LocalStages(
            TextEmbedder(settings.embedder, "cpu"),
            KnowledgeBase(settings.index_dir, "cpu", r.nprobe, r.ef_search, r.filter_exact_max), r,
            prompt_builder(settings), p.template, self.engine, settings.generator)
        self.stages = _TimedStages(stages)
        self.pipeline = RagPipeline(self.stages)
        # One event loop for every caller thread (the closed loop asks from several at once), as in the rag stub.
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="inproc-rag", daemon=True)
        self._thread.start()
        self.reset_stages()

    def reset_stages(self) -> None:
        self.stages.seconds = dict.fromkeys(self.stages.seconds, 0.0)
        self.generator_s = 0.0
        self.calls = 0

    def stage_rows(self) -> list[dict[str, Any]]:
        """Mean time of each step since the last reset, in the shape of the served models' statistics."""
        seconds = {**self.stages.seconds, "generator": self.generator_s}
        return [{"variant": IN_PROCESS, "model": name, "calls": self.calls, "infer_us": s / self.calls * 1e6,
                 "total_us": s / self.calls * 1e6} for name, s in seconds.items() if self.calls]

    async def _ask(self, question: str, max_tokens: int) -> Sample:
        from tritonrag.pipeline.events import FailedEvent, TextEvent
        from tritonrag.pipeline.request import RagParams
        from tritonrag.pipeline.types import RagRequest

        before = sum(self.stages.seconds.values())
        started = time.perf_counter()
        first, pieces = None, 0
        async for event in self.pipeline.run(RagRequest(question, RagParams(stream=True, max_tokens=max_tokens))):
            if isinstance(event, TextEvent):
                pieces += 1
                first = first or time.perf_counter()
            elif isinstance(event, FailedEvent):
                raise RuntimeError(f"in-process pipeline failed: {event.message}")
        total = time.perf_counter() - started
        self.generator_s += total - (sum(self.stages.seconds.values()) - before)
        self.calls += 1
        return Sample((first or started + total) - started, total, pieces)

    def ask(self, question: str, max_tokens: int) -> Sample:
        import asyncio

        return asyncio.run_coroutine_threadsafe(self._ask(question, max_tokens), self.loop).result(60)

    def close(self) -> None:
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
