"""The pipeline's stages as BLS calls to the other models of the same Triton server (for the `rag` adapter).

Each stage turns the pipeline's values into the contract's tensors and back; a model's error becomes a StageError
with the model's code, so a downstream INVALID_ARG reaches the client as one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.kb.filters import Filter
from tritonrag.pipeline.errors import StageError
from tritonrag.pipeline.events import ErrorCode
from tritonrag.pipeline.stages import PromptOptions, RetrievalOptions
from tritonrag.pipeline.types import GenerationChunk, Passage, Prompt, Retrieval, Usage
from tritonrag.prompts.history import history_json
from tritonrag.serving.contract import (
    EMBEDDER,
    GENERATOR,
    PROMPT_BUILDER,
    RERANKER,
    RETRIEVER,
    TRITON_UNAVAILABLE_WORDS,
)
from tritonrag.serving.tensors import string_tensor

DRAIN_TIMEOUT_S = 30.0  # how long a cancelled generator stream may take to close


def stage_error(model: str, error: Any) -> StageError:
    """The StageError of a model's error response, with its code (pb_utils.TritonError exists only once the stub
    runs, not while Triton imports the model for auto-complete: look it up here)."""
    codes = {getattr(pb_utils.TritonError, code.name): code for code in ErrorCode}
    code = error.code() if hasattr(error, "code") else pb_utils.TritonError.INTERNAL
    message, mapped = error.message(), codes.get(code, ErrorCode.INTERNAL)
    if mapped is ErrorCode.INTERNAL and any(words in message for words in TRITON_UNAVAILABLE_WORDS):
        mapped = ErrorCode.UNAVAILABLE
    return StageError(model, message, mapped)


def _first_string(response: Any, name: str) -> str | None:
    tensor = pb_utils.get_output_tensor_by_name(response, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0].decode("utf-8")


def _usage(response: Any) -> Usage | None:
    """The tokens a generator's final response reports (None on the others)."""
    prompt = pb_utils.get_output_tensor_by_name(response, GENERATOR.num_input_tokens)
    completion = pb_utils.get_output_tensor_by_name(response, GENERATOR.num_output_tokens)
    if prompt is None or completion is None:
        return None
    return Usage(int(prompt.as_numpy().reshape(-1)[0]), int(completion.as_numpy().reshape(-1)[0]))


class BlsStages:
    """Embedder, retriever, reranker, prompt builder and generator of this server, called with BLS."""

    def __init__(self, timeout_s: float, executor: Executor) -> None:
        self.timeout_us = int(timeout_s * 1e6)
        self.executor = executor
        self.embedder, self.retriever, self.reranker, self.prompt_builder, self.generator = (self,) * 5

    async def _infer(self, model: str, inputs: list[Any], outputs: Sequence[str],
                     parameters: Mapping[str, Any] | None = None) -> list[np.ndarray]:
        request = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=list(outputs),
                                            timeout=self.timeout_us, parameters=dict(parameters or {}))
        response = await request.async_exec()
        if response.has_error():
            raise stage_error(model, response.error())
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    async def embed(self, text: str) -> np.ndarray:
        (embedding,) = await self._infer(
            EMBEDDER.model, [string_tensor(EMBEDDER.text, [text], (1, 1))], [EMBEDDER.embedding])
        return embedding

    async def retrieve(self, embedding: np.ndarray, query: str, top_k: int | None, flt: Filter | None,
                       options: RetrievalOptions) -> Retrieval:
        R = RETRIEVER
        inputs = [pb_utils.Tensor(R.embedding, embedding), string_tensor(R.query, [query], (1, 1))]
        if top_k is not None:
            inputs.append(pb_utils.Tensor(R.top_k, np.array([[top_k]], np.int32)))
        if flt is not None:
            inputs.append(string_tensor(R.filter, [flt.to_json()], (1, 1)))
        parameters = {R.mode: options.mode, R.candidates: options.candidates, R.fusion: options.fusion}
        ids, scores, similarities, texts, metadata, found_by, timing = await self._infer(
            R.model, inputs, [R.chunk_ids, R.scores, R.similarities, R.texts, R.metadata, R.found_by, R.timing],
            {name: value for name, value in parameters.items() if value is not None})
        passages = [Passage(int(i), float(s), t.decode("utf-8"), json.loads(m), None if np.isnan(sim) else float(sim),
                            json.loads(f))
                    for i, s, sim, t, m, f in zip(ids.reshape(-1), scores.reshape(-1), similarities.reshape(-1),
                                                  texts.reshape(-1), metadata.reshape(-1), found_by.reshape(-1))]
        return Retrieval(passages, json.loads(timing.reshape(-1)[0]))

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        (scores,) = await self._infer(
            RERANKER.model, [string_tensor(RERANKER.query, [query], (1, 1)),
                             string_tensor(RERANKER.passages, list(texts), (1, len(texts)))], [RERANKER.scores])
        return [float(s) for s in scores.reshape(-1)]

    async def build(self, query: str, passages: Sequence[Passage], options: PromptOptions) -> Prompt:
        P = PROMPT_BUILDER
        inputs = [
            string_tensor(P.query, [query]),
            string_tensor(P.context, [p.text for p in passages]),
            string_tensor(P.metadata, [json.dumps(dict(p.metadata)) for p in passages]),
        ]
        optional = {P.template: options.template, P.system_prompt: options.system_prompt,
                    P.generator: options.generator, P.answer: options.answer,
                    P.json_schema: json.dumps(options.schema) if options.schema else None,
                    P.history: history_json(options.history) if options.history else None}
        inputs += [string_tensor(name, [value]) for name, value in optional.items() if value is not None]
        prompt, stop, count, json_output = await self._infer(P.model, inputs,
                                                             [P.prompt, P.stop, P.passages, P.json_output])
        return Prompt(prompt.reshape(-1)[0].decode("utf-8"), tuple(s.decode("utf-8") for s in stop.reshape(-1)),
                      int(count.reshape(-1)[0]), bool(json_output.reshape(-1)[0]))

    async def start(self, prompt: Prompt, sampling: Mapping[str, Any], stream: bool,
                    generator: str | None = None) -> BlsGeneration:
        cancel_key = uuid.uuid4().hex
        model = generator or GENERATOR.model
        request = pb_utils.InferenceRequest(
            model_name=model,
            parameters={GENERATOR.cancel_key: cancel_key},
            inputs=[
                string_tensor(GENERATOR.text_input, [prompt.text]),
                string_tensor(GENERATOR.sampling_parameters, [json.dumps(dict(sampling))]),
                pb_utils.Tensor(GENERATOR.stream, np.array([stream], bool)),
            ] + ([string_tensor(GENERATOR.stop, list(prompt.stop))] if prompt.stop else []),
            requested_output_names=[GENERATOR.text_output, GENERATOR.finish_reason, GENERATOR.num_input_tokens,
                                    GENERATOR.num_output_tokens],
            timeout=self.timeout_us,
        )
        return BlsGeneration(self, await request.async_exec(decoupled=True), cancel_key, model)


class BlsGeneration:
    """A generator stream over BLS. The response iterator's next() blocks, so it runs on the executor and other
    requests keep flowing on the event loop."""

    def __init__(self, stages: BlsStages, responses: Any, cancel_key: str, model: str = GENERATOR.model) -> None:
        self.stages, self.responses, self.cancel_key, self.model = stages, responses, cancel_key, model

    async def _next(self) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.stages.executor, next, self.responses, None)

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        while (response := await self._next()) is not None:
            if response.has_error():
                raise stage_error(self.model, response.error())
            yield GenerationChunk(_first_string(response, GENERATOR.text_output) or "",
                                  _first_string(response, GENERATOR.finish_reason), _usage(response))

    async def cancel(self) -> None:
        """Triton 2.51's BLS response iterator has no cancel() (later releases do, and it is used then), so the
        generator also accepts a cancel request naming the stream's key."""
        if hasattr(self.responses, "cancel"):
            self.responses.cancel()
            return
        request = pb_utils.InferenceRequest(
            model_name=self.model, inputs=[string_tensor(GENERATOR.text_input, [""])],
            requested_output_names=[GENERATOR.text_output], parameters={GENERATOR.cancel: self.cancel_key},
            timeout=self.stages.timeout_us,
        )
        for _ in await request.async_exec(decoupled=True):
            pass

    async def close(self) -> None:
        """Read the stream to its final response: in Triton 2.51 a BLS response iterator dropped while responses
        are still arriving corrupts the stub's memory (it crashed a few requests later)."""
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while asyncio.get_running_loop().time() < deadline:
            if await self._next() is None:
                return
