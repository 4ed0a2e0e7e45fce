"""Triton over gRPC for the ingress (tritonclient.grpc.aio): the `rag` model streamed, the embedder, the retriever's
statistics, readiness. One channel per worker process, shared by every request (HTTP/2 multiplexes them).

Streams run in Triton's strict gRPC error mode (header ``triton_grpc_error``): a failed request ends its stream
with a real gRPC status (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...), which the ingress turns into the HTTP status
a client should see. Without it, Triton 2.51 sends only an error message on the stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tritonrag.ingress.errors import ApiError
from tritonrag.ingress.translate import RagCall, RagReply
from tritonrag.serving.contract import EMBEDDER, RAG, RETRIEVER, TRITON_UNAVAILABLE_WORDS

STRICT_ERRORS = {"triton_grpc_error": "true"}
_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNIMPLEMENTED: 400,  # Unsupported: the deployment does not do what the request asks
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
READY_CACHE_S = 1.0
# Triton 2.51 never ends a decoupled request whose stub died mid-answer: the stream would hang until
# request_timeout_s. With the supervisor's readiness URL known, a stream waiting longer than this for its next
# response asks it whether a process died since the request began, and ends with a 503 if one did.
DEATH_CHECK_S = 1.0
STRANDED = ("a process serving this request died (the supervisor is restoring it; it was not this request's "
            "fault): retry")


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  (an operator-set http URL)
            return response.status == 200
    except OSError:
        return False


def _deaths(url: str) -> int | None:
    """The supervisor's count of processes that died, from its readiness JSON (None if it cannot say)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  (an operator-set http URL)
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503 while something is broken: the body still counts
        body = exc.read()
    except OSError:
        return None
    try:
        return int(json.loads(body)["deaths"])
    except (ValueError, KeyError, TypeError):
        return None


_CODES = {"invalid_arg": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
          "unsupported": grpc.StatusCode.UNIMPLEMENTED, "unavailable": grpc.StatusCode.UNAVAILABLE,
          "internal": grpc.StatusCode.INTERNAL}


def _coded_error(message: str) -> ApiError:
    """The ApiError of a rag error streamed as "[code] message" (RAG.coded_errors); an error without a code (from
    Triton itself: a model not loaded, a stub that died) is INTERNAL, or UNAVAILABLE by its words."""
    code, _, rest = message.partition("] ")
    if message.startswith("[") and code[1:] in _CODES:
        return _status_error(_CODES[code[1:]], rest, "the rag model")
    return _status_error(grpc.StatusCode.INTERNAL, message, "the rag model")


async def _finish(stream: Any, timeout_s: float = 5.0) -> bool:
    """Wait for the gRPC call that just sent its final response to end (Triton closes it right after); True when
    it did. Cancelling a call Triton considers complete makes Triton 2.51 log "HandleCancellation called even when
    the context was not cancelled" and, under load, segfault: only a call still answering is cancelled."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in stream:  # nothing more is expected but the end of the call
                pass
    except (TimeoutError, grpc.aio.AioRpcError):
        return False
    return True


class ClientGone(Exception):
    """The stream was cancelled (the HTTP client went away)."""


def _status_error(code: grpc.StatusCode | None, message: str, what: str) -> ApiError:
    if code == grpc.StatusCode.INTERNAL and any(words in message for words in TRITON_UNAVAILABLE_WORDS):
        code = grpc.StatusCode.UNAVAILABLE
    status = _STATUS.get(code, 500)
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"{what} is not reachable or not ready ({message}); retry shortly"
    kind = {400: "invalid_request", 404: "not_found", 503: "triton_unavailable", 504: "timeout"}.get(status)
    return ApiError(status, message or f"{what} failed", code=kind or "server_error")


def api_error(exc: BaseException, what: str = "Triton") -> ApiError:
    """The ApiError of a failed gRPC call: the model's message, with the status its code maps to. Streams raise
    AioRpcError; unary calls come wrapped in tritonclient's InferenceServerException, the status kept as text."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return _status_error(exc.code(), exc.details() or f"{what} failed with {exc.code().name}", what)
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        return _status_error(next((c for c in _STATUS if status.endswith(c.name)), None), exc.message() or "", what)
    return ApiError(500, f"{what} failed: {type(exc).__name__}: {exc}", code="server_error")


def _bytes_input(name: str, values: Sequence[str], shape: Sequence[int]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(shape), "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(shape))
    return tensor


def _first(result: Any, name: str) -> str | None:
    value = result.as_numpy(name)
    if value is None or value.size == 0:
        return None
    item = value.reshape(-1)[0]
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


@dataclass
class RagPart:
    """One response of the `rag` model: text, and whichever of the other outputs it carries."""

    text: str
    sources: list[dict[str, Any]] | None
    final: bool
    finish_reason: str | None = None
    citations: list[dict[str, Any]] | None = None
    usage: dict[str, int] | None = None
    query: str | None = None
    timing: dict[str, float] | None = None
    cache: str | None = None

    def add_to(self, reply: RagReply) -> None:
        reply.text += self.text
        for name in ("sources", "citations", "finish_reason", "usage", "query", "timing", "cache"):
            value = getattr(self, name)
            if value is not None:
                setattr(reply, name, value)


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


class TritonGateway:
    """The Triton models the ingress calls, over one gRPC channel."""

    def __init__(self, url: str, timeout_s: float = 600.0, health_url: str = "") -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.health_url = health_url  # the supervisor's readiness of that Triton ([ingress] triton_health), if any
        self.client = grpcclient.InferenceServerClient(url)
        self._ready: tuple[float, bool] = (0.0, False)
        self._deaths: tuple[float, int | None] = (-DEATH_CHECK_S, None)
        self._embed_batch: int | None = None

    async def close(self) -> None:
        await self.client.close()

    async def ready(self) -> bool:
        """Triton is ready and serves `rag`, and its supervisor (when ``health_url`` names one) sees nothing broken
        (cached for a second: load balancers poll often)."""
        stamp, value = self._ready
        if time.monotonic() - stamp < READY_CACHE_S:
            return value
        try:
            value = bool(await self.client.is_server_ready(client_timeout=2)
                         and await self.client.is_model_ready(RAG.model, client_timeout=2))
        except Exception:
            value = False
        if value and self.health_url:
            value = await asyncio.to_thread(_answers_200, self.health_url)
        self._ready = (time.monotonic(), value)
        return value

    async def deaths(self) -> int | None:
        """The supervisor's death count (cached for DEATH_CHECK_S; None without a supervisor or an answer)."""
        if not self.health_url:
            return None
        stamp, value = self._deaths
        if time.monotonic() - stamp >= DEATH_CHECK_S:
            value = await asyncio.to_thread(_deaths, self.health_url)
            self._deaths = (time.monotonic(), value)
        return value

    async def _results(self, stream: Any) -> AsyncIterator[tuple[Any, Any]]:
        """``stream``'s items; ends with ApiError 503 when a process died while it waited (never cancels the
        read it waits on: that would end the gRPC call)."""
        before = await self.deaths()
        iterator = stream.__aiter__()
        while True:
            pending = asyncio.ensure_future(iterator.__anext__())
            while not (await asyncio.wait({pending}, timeout=DEATH_CHECK_S))[0]:
                now = await self.deaths()
                if before is None:
                    before = now
                elif now is not None and now != before:
                    pending.cancel()
                    raise ApiError(503, STRANDED, code="triton_unavailable", headers={"Retry-After": "5"})
            try:
                yield pending.result()
            except StopAsyncIteration:
                return

    async def rag(self, call: RagCall) -> AsyncIterator[RagPart]:
        """The `rag` model's responses to ``call``, the last one final. Raises ApiError for a failed request and
        ClientGone when the stream is cancelled."""
        inputs = [_bytes_input(RAG.text_input, [call.question], [1])]
        flag = grpcclient.InferInput(RAG.stream, [1], "BOOL")
        flag.set_data_from_numpy(np.array([call.stream], dtype=bool))
        inputs.append(flag)
        if call.history:
            inputs.append(_bytes_input(RAG.history, [json.dumps(call.history, ensure_ascii=False)], [1]))
        parameters = {**call.parameters, "triton_enable_empty_final_response": True, RAG.coded_errors: True}

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": RAG.model, "inputs": inputs, "parameters": parameters}

        # Not Triton's strict error mode on streams: with it, every failed stream makes Triton 2.51 log
        # "HandleCancellation called even when the context was not cancelled", and a few hundred of them crash it
        # (Signal 11; reproduced with bad requests and with a dead stage). rag prefixes its errors' codes instead.
        stream = self.client.stream_infer(requests(), stream_timeout=self.timeout_s)
        ended = False  # the call is over (or about to be): cancelling it now would crash Triton (see _finish)
        try:
            async for result, error in self._results(stream):
                if error is not None:
                    ended = await _finish(stream)
                    raise _coded_error(error.message() or "")
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                names = {output.name for output in response.outputs}
                part = RagPart(
                    text=_first(result, RAG.text_output) or "" if RAG.text_output in names else "",
                    sources=_json(_first(result, RAG.sources)) if RAG.sources in names else None,
                    final=final,
                    finish_reason=_first(result, RAG.finish_reason) if RAG.finish_reason in names else None,
                    citations=_json(_first(result, RAG.citations)) if RAG.citations in names else None,
                    usage=_json(_first(result, RAG.usage)) if RAG.usage in names else None,
                    query=_first(result, RAG.query) if RAG.query in names else None,
                    timing=_json(_first(result, RAG.timing)) if RAG.timing in names else None,
                    cache=_first(result, RAG.cache_status) if RAG.cache_status in names else None,
                )
                if final:
                    ended = await _finish(stream)
                    yield part
                    return
                yield part
        except grpc.aio.AioRpcError as exc:
            ended = True  # the call ended with this status
            if exc.code() == grpc.StatusCode.CANCELLED:
                raise ClientGone from None
            raise api_error(exc, "the rag model") from None
        finally:
            if not ended:  # the client went away mid-answer: stop the work on Triton
                stream.cancel()

    async def embed_batch_size(self) -> int:
        """Rows per embedder request: its max_batch_size."""
        if self._embed_batch is None:
            try:
                config = await self.client.get_model_config(EMBEDDER.model, as_json=True, client_timeout=10)
            except Exception as exc:
                raise api_error(exc, "the embedder") from None
            self._embed_batch = max(1, int(config["config"].get("max_batch_size", 0)) or 1)
        return self._embed_batch

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The embedder's vectors of ``texts``, [len(texts), dim], sent in batches of its max_batch_size."""
        batch = await self.embed_batch_size()
        parts = []
        for start in range(0, len(texts), batch):
            rows = list(texts[start:start + batch])
            try:
                result = await self.client.infer(EMBEDDER.model, [_bytes_input(EMBEDDER.text, rows, [len(rows), 1])],
                                                 client_timeout=self.timeout_s, headers=STRICT_ERRORS)
            except (InferenceServerException, grpc.aio.AioRpcError) as exc:
                raise api_error(exc, "the embedder") from None
            parts.append(result.as_numpy(EMBEDDER.embedding))
        return np.concatenate(parts).astype(np.float32)

    async def stats(self) -> dict[str, Any]:
        """The retriever's statistics (version, index, documents)."""
        flag = grpcclient.InferInput(RETRIEVER.stats, [1, 1], "BOOL")
        flag.set_data_from_numpy(np.array([[True]]))
        try:
            result = await self.client.infer(RETRIEVER.model, [flag], outputs=[grpcclient.InferRequestedOutput(
                RETRIEVER.stats)], client_timeout=30)
        except InferenceServerException as exc:
            raise api_error(exc, "the retriever") from None
        return json.loads(_first(result, RETRIEVER.stats) or "{}")
