"""OpenAI requests to `rag` calls, and the `rag` model's responses back to OpenAI's responses and stream chunks.
Pure: no HTTP, no Triton (unit-tested in tests/unit/test_ingress.py)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tritonrag.ingress.errors import ApiError, bad_request
from tritonrag.ingress.schema import ChatCompletionRequest
from tritonrag.serving.contract import RAG
from tritonrag.validation import json_depth

# The deepest nesting a chat request body may have: messages' content parts take 5 levels, a response_format's
# schema up to 32 more (tritonrag.generation.structured's bound)
MAX_BODY_DEPTH = 64

# Each model the ingress lists is a flow of the `rag` model.
FLOWS: dict[str, str] = {
    "rag": "Answers the last user message from the knowledge base, citing passages as [n] (history ignored).",
    "rag-chat": "A conversation over the knowledge base: the history and the last message are condensed into a "
                "standalone question, which is retrieved for and answered with citations.",
    "qa-checked": "As rag, then a critic pass checks the answer against the passages; unsupported answers are "
                  "retried strictly, then abstained.",
    "llm": "The generator alone, with the conversation: no retrieval, no sources.",
}
# OpenAI fields this service cannot honour: what to tell a client that sends them
UNSUPPORTED_FIELDS = {
    "tools": "tools (function calling) are not supported: this service answers from its documents; remove tools",
    "tool_choice": "tool_choice is not supported (no tools); remove it",
    "functions": "functions are not supported (no function calling); remove them",
    "function_call": "function_call is not supported (no function calling); remove it",
    "parallel_tool_calls": "parallel_tool_calls is not supported (no tools); remove it",
    "logit_bias": "logit_bias is not supported; remove it",
    "top_logprobs": "top_logprobs is not supported (no logprobs); remove it",
    "audio": "audio output is not supported; remove it",
    "modalities": "only text is supported; remove modalities",
}
_FRIENDLY = {
    "n": "n must be 1: one choice per request",
    "stop": "stop is not supported: the flow's templates set the stop strings; remove stop",
    "presence_penalty": "presence_penalty must be 0 (penalties are not supported)",
    "frequency_penalty": "frequency_penalty must be 0 (penalties are not supported)",
    "logprobs": "logprobs are not supported; remove logprobs or set it to false",
}
_FINISH = {"stop": "stop", "length": "length", "abstained": "stop", "cancelled": "stop"}


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 (malformed JSON) or 422 (a field of the wrong type or value)
    naming the field and what it must be."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind in ("json_invalid", "json_type", "model_type") and not first["loc"]:
        detail = first.get("ctx", {}).get("error", first["msg"])
        return ApiError(400, f"the request body is not a JSON object: {detail}; send JSON such as "
                        '{"model": "rag", "messages": [{"role": "user", "content": "..."}]}', code="invalid_json")
    top = str(first["loc"][0]) if first["loc"] else ""
    if top in _FRIENDLY and len(first["loc"]) == 1:
        return ApiError(422, _FRIENDLY[top], param=top, code="unsupported_value")
    if kind == "extra_forbidden":
        return ApiError(422, f"unknown field {where!r}; see the OpenAI chat completions API and the README's extra "
                        "fields (top_k, filter, task, retrieval_mode, candidates, fusion, rerank, rerank_candidates, "
                        "min_score, cache)", param=where, code="unknown_field")
    if kind == "missing":
        return ApiError(422, f"{where} is required", param=where, code="missing_field")
    value = first.get("input")
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return ApiError(422, f"{where}: {first['msg'].lower()}, got {shown}", param=where, code="invalid_value")


def parse_chat(body: bytes) -> ChatCompletionRequest:
    """The validated chat request of a raw body."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON (not UTF-8: {exc.reason} at byte {exc.start}); "
                       "send a JSON object in UTF-8", code="invalid_json") from None
    if json_depth(text, MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        raise ApiError(400, f"the request body nests arrays and objects more than {MAX_BODY_DEPTH} levels deep; "
                       "send a flatter body", code="invalid_json")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object",
                       code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "the request body nests arrays and objects too deeply; send a flatter body",
                       code="invalid_json") from None
    except ValueError:  # an integer past Python's digit limit
        raise ApiError(400, "the request body holds an integer with thousands of digits; send smaller numbers",
                       code="invalid_json") from None
    if not isinstance(raw, dict):
        raise ApiError(400, f"the request body must be a JSON object, got a JSON {type(raw).__name__}",
                       code="invalid_json")
    for name, message in UNSUPPORTED_FIELDS.items():
        if raw.get(name) is not None:
            raise ApiError(422, message, param=name, code="unsupported_parameter")
    try:
        request = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    _check_text(raw)
    return request


def _check_text(value: Any, where: str = "") -> None:
    """Strings must be encodable as UTF-8 (JSON allows lone surrogates such as "\\ud800"; Triton does not)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"{where or 'a string'} holds a lone surrogate (invalid UTF-16 such as \\ud800); "
                           "send valid Unicode text", param=where or None, code="invalid_text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")


@dataclass(frozen=True)
class RagCall:
    """What the ingress asks the `rag` model: the question (the last user message), the conversation before it,
    whether to stream, and the request parameters (Triton's scalars)."""

    question: str
    history: list[dict[str, str]]
    stream: bool
    parameters: dict[str, Any] = field(default_factory=dict)


def to_rag_call(request: ChatCompletionRequest, max_messages: int, max_history_chars: int,
                flows: Mapping[str, str] = FLOWS, tenant: str = "") -> RagCall:
    """Map a chat request onto the `rag` model: system messages become the system prompt, the last message (the
    user's) the question, the others the history; OpenAI's sampling fields and the extra RAG fields become
    parameters; ``tenant`` (the caller: an API key's name) scopes the answer cache. Raises ApiError (404 unknown
    model, 400 a conversation this service cannot take)."""
    if request.model not in flows:
        raise ApiError(404, f"the model {request.model!r} does not exist; models (GET /v1/models): "
                       f"{', '.join(flows)}", param="model", code="model_not_found")
    if len(request.messages) > max_messages:
        raise ApiError(400, f"the conversation has {len(request.messages)} messages; at most {max_messages} are "
                       "accepted: drop the oldest turns", param="messages", code="context_length_exceeded")
    system = [m.text for m in request.messages if m.role in ("system", "developer")]
    turns = [m for m in request.messages if m.role not in ("system", "developer")]
    if not turns or turns[-1].role != "user":
        raise bad_request("the last message (after any system messages) must be the user's question",
                          param="messages", code="invalid_messages")
    question = turns[-1].text
    if not question.strip():
        raise bad_request("the last user message is empty: send a question", param="messages",
                          code="invalid_messages")
    history = [{"role": m.role, "content": m.text} for m in turns[:-1]]
    history_chars = sum(len(turn["content"]) for turn in history)
    if history_chars > max_history_chars:
        raise ApiError(400, f"the conversation before the last message has {history_chars} characters; at most "
                       f"{max_history_chars} are accepted: drop the oldest turns", param="messages",
                       code="context_length_exceeded")
    options: dict[str, Any] = {
        RAG.flow: request.model,
        RAG.max_tokens: request.max_completion_tokens or request.max_tokens,
        RAG.temperature: request.temperature,
        RAG.top_p: request.top_p,
        RAG.seed: request.seed,
        RAG.top_k: request.top_k,
        RAG.filter: json.dumps(request.filter) if request.filter is not None else None,
        RAG.template: request.task,
        RAG.mode: request.retrieval_mode,
        RAG.candidates: request.candidates,
        RAG.fusion: request.fusion,
        RAG.rerank: request.rerank,
        RAG.rerank_candidates: request.rerank_candidates,
        RAG.min_score: request.min_score,
        RAG.system_prompt: "\n\n".join(system) if system else None,
        RAG.cache: request.cache,
        RAG.cache_tenant: tenant or None,
    }
    form = request.response_format
    if form is not None and form.type == "json_object":
        options[RAG.json_object] = True
    elif form is not None and form.type == "json_schema":
        if form.json_schema is None:
            raise ApiError(422, "response_format.json_schema is required when type is json_schema: "
                           '{"name": "...", "schema": {...}}', param="response_format", code="missing_field")
        options[RAG.json_schema] = json.dumps(form.json_schema.schema_)
    return RagCall(question, history, request.stream, {k: v for k, v in options.items() if v is not None})


@dataclass
class RagReply:
    """What the `rag` model answered so far: text, sources, and on the final response the rest."""

    text: str = ""
    sources: list[dict[str, Any]] | None = None
    citations: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    query: str | None = None
    timing: dict[str, float] | None = None
    cache: str | None = None

    def extras(self) -> dict[str, Any]:
        """The response's `rag` field: what an OpenAI response has no place for."""
        out: dict[str, Any] = {"sources": self.sources or [], "citations": self.citations or []}
        if self.finish_reason is not None:
            out["finish_reason"] = self.finish_reason
        if self.query is not None:
            out["query"] = self.query
        if self.timing is not None:
            out["timing"] = self.timing
        if self.cache is not None:
            out["cache"] = self.cache
        return out


def finish_reason(reason: str | None) -> str:
    """OpenAI's finish reason for the pipeline's ("abstained" answers normally: "stop")."""
    return _FINISH.get(reason or "stop", "stop")


def usage_of(reply: RagReply) -> dict[str, int]:
    usage = reply.usage or {}
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Completion:
    """One chat completion's identity (id, created, model) and its OpenAI bodies: the whole response, or the
    stream's chunks."""

    def __init__(self, model: str, clock: Any = time.time) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(clock())
        self.model = model

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def response(self, reply: RagReply) -> dict[str, Any]:
        message = {"role": "assistant", "content": reply.text, "refusal": None}
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish_reason(reply.finish_reason)}],
                "usage": usage_of(reply), "rag": reply.extras()}

    def chunk(self, delta: Mapping[str, Any], finish: str | None = None,
              extras: Mapping[str, Any] | None = None, usage: bool = False) -> dict[str, Any]:
        """A ``chat.completion.chunk``; ``usage``: the stream includes usage (null on every chunk but the last)."""
        body = {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish}]}
        if usage:
            body["usage"] = None
        if extras is not None:
            body["rag"] = dict(extras)
        return body

    def usage_chunk(self, reply: RagReply) -> dict[str, Any]:
        """The last chunk when the client asked for usage (stream_options.include_usage): no choices."""
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage_of(reply)}


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event (`data: ...` and a blank line), as OpenAI streams them."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def embeddings_response(model: str, vectors: Sequence[Sequence[float]], tokens: int,
                        encoding: str = "float") -> dict[str, Any]:
    """The body of POST /v1/embeddings."""
    import base64

    import numpy as np

    def encoded(vector: Sequence[float]) -> Any:
        if encoding == "base64":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        return [float(x) for x in vector]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
