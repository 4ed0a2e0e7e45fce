"""Triton adapter for the RAG orchestrator (decoupled, async BLS): embed -> retrieve -> prompt -> generate.

Each request streams `text_output` pieces; the first response also carries `sources` (JSON). Requests
of one execute call run concurrently on the instance's event loop; a cancelled request cancels its
generator stream.
"""

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.request import RagParams
from tritonrag.pipeline.sources import sources_json
from tritonrag.serving.instance import placed
from tritonrag.serving.tensors import error_response, read_scalar, read_string, request_parameters, string_tensor
from tritonrag.settings import load_settings

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
DRAIN_TIMEOUT_S = 30.0  # how long a cancelled generator stream may take to close
CANCEL_CHECK_S = 0.05  # is_cancelled() is a round trip to the server: ask at most this often, not per token


class StageError(Exception):
    """A downstream model answered with an error; keeps its code so bad input stays INVALID_ARG."""

    def __init__(self, stage, error):
        super().__init__(f"{stage}: {error.message()}")
        self.code = error.code() if hasattr(error, "code") else pb_utils.TritonError.INTERNAL


class RequestCancelled(Exception):
    """The client cancelled or went away."""


def _error(exc):
    if isinstance(exc, StageError):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc), exc.code))
    return error_response(exc)


class TritonPythonModel:
    def initialize(self, args):
        settings = load_settings()
        self.rag, _ = placed(args, settings, "rag")
        self.retriever = settings.retriever
        self.timeout_us = int(self.rag.bls_timeout_s * 1e6)
        # BLS async_exec runs on the loop's default executor (6 threads on 2 cores): widen it.
        self.executor = ThreadPoolExecutor(self.rag.max_concurrency, thread_name_prefix="rag-bls")
        self._loop_ready = False

    async def _infer(self, model, inputs, outputs, parameters=None):
        request = pb_utils.InferenceRequest(
            model_name=model, inputs=inputs, requested_output_names=outputs,
            parameters=parameters or {}, timeout=self.timeout_us,
        )
        response = await request.async_exec()
        if response.has_error():
            raise StageError(model, response.error())
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    async def _serve(self, request):
        sender = request.get_response_sender()
        try:
            query = read_string(request, "text_input")
            if not query.strip():
                raise InvalidInput("input 'text_input' is empty: send a question")
            params = RagParams.from_parameters(request_parameters(request), self.rag, self.retriever)
            stream = read_scalar(request, "stream")
            stream = params.stream if stream is None else bool(stream)
            (embedding,) = await self._infer(
                "embedder", [pb_utils.Tensor("text", np.array([[query.encode()]], np.object_))], ["embedding"]
            )
            retrieve = [
                pb_utils.Tensor("embedding", embedding),
                pb_utils.Tensor("top_k", np.array([[params.top_k]], np.int32)),
            ]
            if params.filter is not None:
                retrieve.append(pb_utils.Tensor("filter", np.array([[params.filter.to_json().encode()]], np.object_)))
            ids, scores, texts, metadata = await self._infer(
                "retriever", retrieve, ["chunk_ids", "scores", "texts", "metadata"]
            )
            if ids.size == 0:
                raise InvalidInput(f"the filter {params.filter.to_json()} matches no document in the knowledge base"
                                   if params.filter else "the knowledge base is empty: ingest documents first")
            prompt, stop = await self._infer(
                "prompt_builder",
                [
                    pb_utils.Tensor("query", np.array([query.encode()], np.object_)),
                    pb_utils.Tensor("context", texts.reshape(-1)),
                    pb_utils.Tensor("metadata", metadata.reshape(-1)),
                    pb_utils.Tensor("template", np.array([params.template.encode()], np.object_)),
                ],
                ["prompt", "stop"],
            )
            sources = sources_json(
                ids[0], scores[0], [json.loads(m) for m in metadata.reshape(-1)],
                [t.decode("utf-8") for t in texts.reshape(-1)],
            )
            await self._generate(request, sender, prompt, stop, params, sources, stream)
        except Exception as exc:
            try:
                if request.is_cancelled():
                    sender.send(flags=FINAL)  # close the cancelled request; nobody reads an error
                else:
                    sender.send(_error(exc), flags=FINAL)
            except Exception:  # the client is gone; nothing left to tell it
                pass

    async def _generate(self, request, sender, prompt, stop, params, sources, stream):
        cancel_key = uuid.uuid4().hex
        generate = pb_utils.InferenceRequest(
            model_name="generator",
            parameters={"cancel_key": cancel_key},
            inputs=[
                pb_utils.Tensor("text_input", prompt.reshape(1)),
                pb_utils.Tensor("stop", stop.reshape(-1)),
                pb_utils.Tensor("sampling_parameters", np.array([json.dumps(params.sampling()).encode()], np.object_)),
                pb_utils.Tensor("stream", np.array([stream], bool)),
            ],
            requested_output_names=["text_output", "finish_reason"],
            timeout=self.timeout_us,
        )
        loop = asyncio.get_running_loop()
        if stream:  # sources first, so a client can show them while the answer streams
            first = [string_tensor("text_output", [""]), string_tensor("sources", [sources])]
            sender.send(pb_utils.InferenceResponse(first))
        responses = await generate.async_exec(decoupled=True)
        pieces, finish_reason, complete = [], "stop", False
        next_cancel_check = 0.0
        try:
            while True:
                # The iterator's next() blocks: run it off the event loop so other requests keep flowing.
                response = await loop.run_in_executor(self.executor, next, responses, None)
                if response is None:
                    complete = True
                    break
                if (now := time.monotonic()) >= next_cancel_check:
                    next_cancel_check = now + CANCEL_CHECK_S
                    if request.is_cancelled():
                        raise RequestCancelled
                if response.has_error():
                    raise StageError("generator", response.error())
                reason = pb_utils.get_output_tensor_by_name(response, "finish_reason")
                if reason is not None:
                    finish_reason = reason.as_numpy().reshape(-1)[0].decode()
                text = pb_utils.get_output_tensor_by_name(response, "text_output")
                text = "" if text is None else text.as_numpy().reshape(-1)[0].decode("utf-8")
                if stream and text:
                    sender.send(pb_utils.InferenceResponse([string_tensor("text_output", [text])]))
                elif not stream:
                    pieces.append(text)
        finally:
            if not complete:  # cancelled by the client, or failed: stop the generator working for nobody
                await self._cancel_generation(responses, cancel_key)
                await self._drain(responses)
        outputs = [string_tensor("text_output", ["".join(pieces)]), string_tensor("finish_reason", [finish_reason])]
        if not stream:
            outputs.append(string_tensor("sources", [sources]))
        sender.send(pb_utils.InferenceResponse(outputs), flags=FINAL)

    async def _drain(self, responses):
        """Read a cancelled stream to its final response: in Triton 2.51 a BLS response iterator dropped while
        responses are still arriving corrupts the stub's memory (it crashed a few requests later)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while loop.time() < deadline:
            if await loop.run_in_executor(self.executor, next, responses, None) is None:
                return

    async def _cancel_generation(self, responses, cancel_key):
        """Cancel a generator stream. Triton 2.51's BLS response iterator has no cancel(), so the generator
        also accepts a cancel request naming the stream's key."""
        if hasattr(responses, "cancel"):
            responses.cancel()
            return
        cancel = pb_utils.InferenceRequest(
            model_name="generator",
            inputs=[pb_utils.Tensor("text_input", np.array([b""], np.object_))],
            requested_output_names=["text_output"],
            parameters={"cancel": cancel_key},
            timeout=self.timeout_us,
        )
        for _ in await cancel.async_exec(decoupled=True):
            pass

    async def execute(self, requests):
        if not self._loop_ready:
            asyncio.get_running_loop().set_default_executor(self.executor)
            self._loop_ready = True
        await asyncio.gather(*(self._serve(request) for request in requests))
        return None

    def finalize(self):
        self.executor.shutdown(wait=False, cancel_futures=True)
