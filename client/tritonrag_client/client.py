"""Ask the `rag` model questions over HTTP (generate / generate_stream SSE) or gRPC (bidirectional stream)."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritonrag.serving.contract import RAG, RETRIEVER


class RagError(RuntimeError):
    """The server rejected or failed a request; the message is the server's."""


@dataclass(frozen=True)
class RagEvent:
    """One streamed piece of an answer: new text, the sources when they arrive, and on the last one the finish
    reason, the passages the answer cites (each with its number n in the sources, 1-based), the tokens the request
    cost and the question it searched with."""

    text: str = ""
    sources: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    citations: list[dict[str, Any]] | None = None
    timing: dict[str, float] | None = None  # on the last one: milliseconds of each step (embed, dense, sparse, ...)
    usage: dict[str, int] | None = None  # on the last one: prompt_tokens, completion_tokens, total_tokens
    query: str | None = None  # on the last one: the question searched (flow rag-chat: the condensed one)


@dataclass
class RagAnswer:
    text: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens, total_tokens
    query: str | None = None  # the question searched (flow rag-chat: the condensed one)

    def add(self, event: RagEvent) -> None:
        self.text += event.text
        if event.sources is not None:
            self.sources = event.sources
        if event.finish_reason:
            self.finish_reason = event.finish_reason
        if event.citations is not None:
            self.citations = event.citations
        if event.timing is not None:
            self.timing = event.timing
        if event.usage is not None:
            self.usage = event.usage
        if event.query is not None:
            self.query = event.query


def _event(outputs: dict[str, Any]) -> RagEvent:
    def first(name: str) -> str | None:
        value = outputs.get(name)
        if value is None:
            return None
        if isinstance(value, list):
            value = value[0] if value else ""
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    sources, citations, timing, usage = first(RAG.sources), first(RAG.citations), first(RAG.timing), first(RAG.usage)
    return RagEvent(first(RAG.text_output) or "", json.loads(sources) if sources else None, first(RAG.finish_reason),
                    json.loads(citations) if citations else None, json.loads(timing) if timing else None,
                    json.loads(usage) if usage else None, first(RAG.query))


class RagClient:
    """A client of the `rag` model. ``protocol`` is "http" (url host:8000) or "grpc" (url host:8001)."""

    def __init__(self, url: str = "localhost:8000", protocol: str = "http", model: str = RAG.model,
                 timeout_s: float = 600.0) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self.url = url.removeprefix("http://")
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s

    def stream(self, question: str, history: Sequence[dict[str, str]] | None = None,
               **parameters: Any) -> Iterator[RagEvent]:
        """Yield events as the answer is generated (sources come first).

        ``history`` is the conversation before ``question``: ``[{"role": "user"|"assistant", "content": ...}]``,
        oldest first (the flows rag-chat and llm read it). ``filter`` (a dict such as ``{"source": "book.txt"}``)
        restricts retrieval to matching documents.
        """
        parameters = _wire_parameters(parameters)
        if self.protocol == "http":
            yield from self._http_stream(question, parameters, _history_json(history))
        else:
            yield from self._grpc_stream(question, parameters, stream=True, history=_history_json(history))

    def ask(self, question: str, history: Sequence[dict[str, str]] | None = None, **parameters: Any) -> RagAnswer:
        """The whole answer in one response (HTTP /generate or a single gRPC response); ``history`` as for
        ``stream``."""
        answer = RagAnswer()
        parameters = _wire_parameters(parameters)
        if self.protocol == "http":
            body = _body(question, False, parameters, _history_json(history))
            answer.add(_event(self._post("generate", body)))
        else:
            for event in self._grpc_stream(question, parameters, stream=False, history=_history_json(history)):
                answer.add(event)
        return answer

    def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{self.model}/{endpoint}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RagError(_http_error_message(exc)) from None

    def _http_stream(self, question: str, parameters: dict[str, Any], history: str | None) -> Iterator[RagEvent]:
        body = _body(question, True, parameters, history)
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{self.model}/generate_stream", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"}, method="POST",
        )
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise RagError(_http_error_message(exc)) from None
        with response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                payload = json.loads(line[len("data:"):])
                if "error" in payload:
                    raise RagError(payload["error"])
                yield _event(payload)

    def _grpc_stream(self, question: str, parameters: dict[str, Any], stream: bool,
                     history: str | None = None) -> Iterator[RagEvent]:
        import tritonclient.grpc as grpcclient

        results: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(self.url)
        text = grpcclient.InferInput(RAG.text_input, [1], "BYTES")
        text.set_data_from_numpy(np.array([question.encode("utf-8")], dtype=np.object_))
        flag = grpcclient.InferInput(RAG.stream, [1], "BOOL")
        flag.set_data_from_numpy(np.array([stream], dtype=bool))
        inputs = [text, flag]
        if history is not None:
            turns = grpcclient.InferInput(RAG.history, [1], "BYTES")
            turns.set_data_from_numpy(np.array([history.encode("utf-8")], dtype=np.object_))
            inputs.append(turns)
        try:
            client.start_stream(callback=lambda result, error: results.put((result, error)),
                                stream_timeout=self.timeout_s)
            client.async_stream_infer(self.model, inputs, parameters=parameters or None,
                                      enable_empty_final_response=True)
            while True:
                result, error = results.get(timeout=self.timeout_s)
                if error is not None:
                    raise RagError(str(error.message() if hasattr(error, "message") else error))
                response = result.get_response()
                outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
                if outputs:
                    yield _event({k: v.reshape(-1).tolist() for k, v in outputs.items()})
                if response.parameters["triton_final_response"].bool_param:
                    return
        finally:
            client.stop_stream(cancel_requests=True)
            client.close()


def _history_json(history: Sequence[dict[str, str]] | None) -> str | None:
    """The history input's JSON (None: no history sent)."""
    return None if history is None else json.dumps(list(history), ensure_ascii=False)


def _body(question: str, stream: bool, parameters: dict[str, Any], history: str | None) -> dict[str, Any]:
    """An HTTP generate request: the inputs by name at the top level, the request parameters beside them."""
    body: dict[str, Any] = {RAG.text_input: question, RAG.stream: stream, "parameters": parameters}
    if history is not None:
        body[RAG.history] = history
    return body


def _wire_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Triton request parameters are scalars: a filter or a JSON schema given as a dict travels as its JSON."""
    return {name: json.dumps(value) if name in (RAG.filter, RAG.json_schema) and isinstance(value, dict) else value
            for name, value in parameters.items()}


def retriever_stats(url: str = "localhost:8000", model: str = RETRIEVER.model,
                    timeout_s: float = 30.0) -> dict[str, Any]:
    """What the running retriever serves: version, index type, vectors, memory, docstore counts (HTTP)."""
    request = urllib.request.Request(
        f"http://{url.removeprefix('http://')}/v2/models/{model}/generate",
        data=json.dumps({RETRIEVER.stats: True}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RagError(_http_error_message(exc)) from None
    stats = body[RETRIEVER.stats]
    return json.loads(stats[0] if isinstance(stats, list) else stats)


def _http_error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read()).get("error", str(exc))
    except (ValueError, OSError):
        return str(exc)
