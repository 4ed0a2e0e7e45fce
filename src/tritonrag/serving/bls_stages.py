"""The pipeline's stages as BLS calls to the other models of the same Triton server (for the `rag` adapter).

Each stage turns the pipeline's values into the contract's tensors and back; a model's error becomes a StageError
with the model's code, so a downstream INVALID_ARG reaches the client as one.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import InvalidInput, Unsupported
from tritonrag.kb.filters import Filter
from tritonrag.pipeline.errors import StageError
from tritonrag.pipeline.events import ErrorCode
from tritonrag.pipeline.stages import PromptOptions, RetrievalOptions
from tritonrag.pipeline.types import GenerationChunk, Passage, Prompt, Retrieval, Usage
from tritonrag.prompts.builder import ContextDocument, PromptBuilder, prompt_builder
from tritonrag.prompts.history import history_json
from tritonrag.serving.coalescing import ThreadToLoop, merge_chunks
from tritonrag.serving.contract import (
    EMBEDDER,
    GENERATOR,
    PROMPT_BUILDER,
    RERANKER,
    RETRIEVER,
    TRITON_UNAVAILABLE_WORDS,
)
from tritonrag.serving.instance import RESERVED, served_generators
from tritonrag.serving.tensors import string_tensor
from tritonrag.settings import Settings

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


def prompt_builder_overrides(model_dir: str | Path) -> set[str] | None:
    """The names of the settings the prompt builder's rendered config.pbtxt (next to the model at ``model_dir``)
    overrides (tritonrag.serving.instance); None when there is no such file."""
    path = Path(model_dir).parent / PROMPT_BUILDER.model / "config.pbtxt"
    if not path.is_file():
        return None
    keys = re.findall(r'key:\s*"((?:[^"\\]|\\.)*)"\s*value:\s*\{\s*string_value:', path.read_text())
    return set(keys) - set(RESERVED)


def local_prompt_builder(args: Mapping[str, str], settings: Settings) -> tuple[PromptBuilder, str] | None:
    """rag's own prompt builder ([rag] build_prompt_in_process), built as the prompt_builder model builds its own,
    and its default template; None (rag calls the served prompt_builder) when the setting is off, or when the
    deployment spec overrides the prompt builder's settings (its config.pbtxt says so): rag then keeps the served one,
    which sees them."""
    if not settings.rag.build_prompt_in_process:
        return None
    overrides = prompt_builder_overrides(args.get("model_repository", ""))
    if overrides is None or overrides:
        return None
    return prompt_builder(settings, served_generators(args, settings)), settings.prompt_builder.template


class BlsStages:
    """Embedder, retriever, reranker, prompt builder and generator of this server, called with BLS; with ``prompts``
    (a PromptBuilder and its default template), prompts are built in this process instead of by the prompt_builder
    model (one BLS hop less per request; the same builder, so the same prompt and the same errors)."""

    def __init__(self, timeout_s: float, executor: Executor,
                 prompts: tuple[PromptBuilder, str] | None = None) -> None:
        self.timeout_us = int(timeout_s * 1e6)
        self.executor = executor
        self.prompts = prompts
        self.embedder, self.retriever, self.reranker, self.prompt_builder, self.generator = (self,) * 5

    @classmethod
    def for_rag(cls, args: Mapping[str, str], settings: Settings, rag: Any, executor: Executor) -> BlsStages:
        """The stages of the rag model (``args``: its initialize arguments; ``rag``: its [rag] settings as its
        config.pbtxt says)."""
        return cls(rag.bls_timeout_s, executor,
                   local_prompt_builder(args, replace(settings, rag=rag)))

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
        ids, scores, similarities, texts, metadata, found_by, timing, version = await self._infer(
            R.model, inputs,
            [R.chunk_ids, R.scores, R.similarities, R.texts, R.metadata, R.found_by, R.timing, R.kb_version],
            {name: value for name, value in parameters.items() if value is not None})
        passages = [Passage(int(i), float(s), t.decode("utf-8"), json.loads(m), None if np.isnan(sim) else float(sim),
                            json.loads(f))
                    for i, s, sim, t, m, f in zip(ids.reshape(-1), scores.reshape(-1), similarities.reshape(-1),
                                                  texts.reshape(-1), metadata.reshape(-1), found_by.reshape(-1))]
        return Retrieval(passages, json.loads(timing.reshape(-1)[0]), version.reshape(-1)[0].decode("utf-8") or None)

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        (scores,) = await self._infer(
            RERANKER.model, [string_tensor(RERANKER.query, [query], (1, 1)),
                             string_tensor(RERANKER.passages, list(texts), (1, len(texts)))], [RERANKER.scores])
        return [float(s) for s in scores.reshape(-1)]

    async def build(self, query: str, passages: Sequence[Passage], options: PromptOptions) -> Prompt:
        if self.prompts is not None:
            return self._build_here(query, passages, options)
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
        prompt, stop, count, json_output, order = await self._infer(
            P.model, inputs, [P.prompt, P.stop, P.passages, P.json_output, P.order])
        return Prompt(prompt.reshape(-1)[0].decode("utf-8"), tuple(s.decode("utf-8") for s in stop.reshape(-1)),
                      int(count.reshape(-1)[0]), bool(json_output.reshape(-1)[0]),
                      tuple(int(i) for i in order.reshape(-1)))

    def _build_here(self, query: str, passages: Sequence[Passage], options: PromptOptions) -> Prompt:
        """The prompt from this process's builder; its refusals carry the prompt_builder model's name and code, as
        they would over BLS."""
        builder, template = self.prompts
        documents = [ContextDocument.from_metadata(p.text, p.metadata) for p in passages]
        try:
            built = builder.build(options.template or template, query, documents, options.system_prompt,
                                  options.generator, json.dumps(options.schema) if options.schema else "",
                                  options.answer or "", options.history)
        except Unsupported as exc:
            raise StageError(PROMPT_BUILDER.model, str(exc), ErrorCode.UNSUPPORTED) from exc
        except InvalidInput as exc:
            raise StageError(PROMPT_BUILDER.model, str(exc), ErrorCode.INVALID_ARG) from exc
        return Prompt(built.text, built.stop, built.passages, built.json_output, built.order)

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
    """A generator stream over BLS. The response iterator's next() blocks, so one reader on the executor reads the
    whole stream, to its final response, and hands the responses to the event loop; each time the pipeline asks
    for more it gets everything that arrived meanwhile as one chunk (tritonrag.serving.coalescing), so responses
    that queue while the loop serves other requests cost one hop and one event, not one each."""

    def __init__(self, stages: BlsStages, responses: Any, cancel_key: str, model: str = GENERATOR.model) -> None:
        self.stages, self.responses, self.cancel_key, self.model = stages, responses, cancel_key, model
        loop = asyncio.get_running_loop()
        self._arrived: ThreadToLoop[Any] = ThreadToLoop(loop)
        self._reader = loop.run_in_executor(stages.executor, self._read)

    def _read(self) -> None:
        """On the executor: every response of the stream, in order (an exception of the iterator ends it)."""
        try:
            for response in self.responses:
                self._arrived.put(response)
        except Exception as exc:
            self._arrived.put(exc)
        finally:
            self._arrived.close()

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        while arrived := await self._arrived.get_all():
            chunks = []
            for response in arrived:
                if isinstance(response, BaseException) or response.has_error():
                    if chunks:  # what came before the error, as it would have come alone
                        yield merge_chunks(chunks)
                    if isinstance(response, BaseException):
                        raise response
                    raise stage_error(self.model, response.error())
                chunks.append(GenerationChunk(_first_string(response, GENERATOR.text_output) or "",
                                              _first_string(response, GENERATOR.finish_reason), _usage(response)))
            yield merge_chunks(chunks)

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
        """Wait until the stream is read to its final response: in Triton 2.51 a BLS response iterator dropped while
        responses are still arriving corrupts the stub's memory (it crashed a few requests later). The reader reads
        it to its end whether or not anyone waits; this waits at most DRAIN_TIMEOUT_S."""
        await asyncio.wait([self._reader], timeout=DRAIN_TIMEOUT_S)
