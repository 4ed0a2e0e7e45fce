"""The ingress's routes (FastAPI): OpenAI's /v1/chat/completions (streamed or not), /v1/models, /v1/embeddings, plus
/v1/documents (for a document filter), /health, /metrics and the chat page at /.

Every error is OpenAI's error shape with the status a client should see; nothing a client sends gets a 500. The
order of checks is: body size (413), API key (401), per-key limits (429), the body (400/422), the model (404); only
then does Triton see the request.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tritonrag.ingress import metrics
from tritonrag.ingress.errors import ApiError
from tritonrag.ingress.gateway import ClientGone, TritonGateway
from tritonrag.ingress.keys import KeyStore
from tritonrag.ingress.limits import Limits, per_worker
from tritonrag.ingress.schema import EmbeddingRequest
from tritonrag.ingress.translate import (
    FLOWS,
    Completion,
    RagReply,
    embeddings_response,
    finish_reason,
    parse_chat,
    sse,
    to_rag_call,
    usage_of,
    validation_error,
)
from tritonrag.serving.contract import EMBEDDER
from tritonrag.settings import IngressSettings, Settings, load_settings, resolve_model_ref

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
OVERRIDES_ENV = "TRITONRAG_INGRESS_OVERRIDES"  # JSON of [ingress] values the command line set (for workers)
MAX_EMBED_INPUTS = 2048
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# The chat page's own origin only, and never inside another site's frame (clickjacking)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; object-src 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def ingress_settings(settings: Settings) -> IngressSettings:
    """The [ingress] settings with the command line's overrides (`tritonrag ingress` passes them to its workers)."""
    overrides = json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    return replace(settings.ingress, **overrides)


def check_exposure(config: IngressSettings, keys: KeyStore) -> None:
    """Refuse to serve other hosts without API keys, unless anonymous access is asked for."""
    if keys.open and config.host not in LOOPBACK and not config.allow_anonymous:
        raise ValueError(f"the ingress would serve {config.host} without API keys: set [ingress] api_keys_file or "
                         f"${config.api_keys_env} (create a key with `tritonrag ingress-key`), or allow_anonymous = "
                         "true to serve anyone")


class Ingress:
    """What the routes share: settings, keys, limits, the Triton gateway, the embedder's token counter."""

    def __init__(self, settings: Settings, config: IngressSettings, gateway: TritonGateway | None = None) -> None:
        self.settings = settings
        self.config = config
        self.keys = KeyStore.load(config.api_keys_file, os.environ.get(config.api_keys_env))
        check_exposure(config, self.keys)
        self.limits = Limits(int(per_worker(config.max_concurrency_per_key, config.workers)),
                             per_worker(config.rate_limit_rpm, config.workers),
                             int(per_worker(config.rate_limit_burst, config.workers)))
        self.gateway = gateway or TritonGateway(config.triton_grpc, config.request_timeout_s, config.triton_health)

    def caller(self, request: Request) -> str:
        """Who is calling: the name of a valid API key (401 otherwise), or the client's address when the API is
        open."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if self.keys.open:
            return f"anonymous:{request.client.host if request.client else '?'}"
        if not header:
            metrics.REJECTED.labels("missing_key").inc()
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY' (the openai "
                           "client's api_key)", code="missing_api_key")
        if scheme.lower() != "bearer" or not token.strip():
            metrics.REJECTED.labels("invalid_key").inc()
            raise ApiError(401, "the Authorization header must be 'Bearer YOUR_KEY'", code="invalid_api_key")
        name = self.keys.identify(token.strip())
        if name is None:
            metrics.REJECTED.labels("invalid_key").inc()
            raise ApiError(401, "invalid API key: check the key, or ask the operator for one "
                           "(`tritonrag ingress-key`)", code="invalid_api_key")
        return name

    async def body(self, request: Request) -> bytes:
        """The request body, at most max_body_bytes (413 beyond, before reading it all when the length is sent)."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            metrics.REJECTED.labels("too_large").inc()
            raise _too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                metrics.REJECTED.labels("too_large").inc()
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def admit(self, caller: str) -> None:
        """Count a request of ``caller`` against its limits (429 beyond them); pair with ``limits.release``."""
        try:
            self.limits.acquire(caller)
        except ApiError:
            metrics.REJECTED.labels("rate_limited").inc()
            raise

    @asynccontextmanager
    async def admitted(self, caller: str) -> AsyncIterator[None]:
        self.admit(caller)
        try:
            yield
        finally:
            self.limits.release(caller)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body has {size} bytes or more; the limit is {limit} ([ingress] "
                    "max_body_bytes): send less text", code="request_too_large")


@lru_cache(maxsize=4)
def _tokenizer(model: str) -> Callable[[str], int] | None:
    """How many tokens the embedder reads of a text (its tokenizer.json), for the usage of /v1/embeddings."""
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(resolve_model_ref(model)) / "tokenizer.json"))
    except Exception:
        return None
    return lambda text: len(tokenizer.encode(text).ids)


def _count_tokens(model: str, texts: list[str]) -> int:
    count = _tokenizer(model)
    return sum(count(t) for t in texts) if count else sum(len(t.split()) for t in texts)


def create_app(settings: Settings | None = None, gateway: TritonGateway | None = None) -> FastAPI:
    """The ingress application (uvicorn's factory: `tritonrag ingress` runs it)."""
    settings = settings or load_settings()
    ingress = Ingress(settings, ingress_settings(settings), gateway)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await ingress.gateway.close()

    app = FastAPI(title="tritonrag ingress", summary="OpenAI-compatible RAG over Triton", lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.ingress = ingress
    if ingress.config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(ingress.config.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    _errors(app)
    _routes(app, ingress)
    return app


class _WithHeaders:
    """An ASGI app answering with ``headers`` added (the static files of the chat page)."""

    def __init__(self, app: Any, headers: dict[str, str]) -> None:
        self.app = app
        self.raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.raw]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        error = ApiError(422, f"{where}: {first.get('msg', 'invalid')}", param=where, code="invalid_value")
        return JSONResponse(error.body(), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = (f"no route {request.method} {request.url.path}: the API is under /v1 (chat/completions, "
                       "models, embeddings, documents); the chat page is at /")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        error = ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        error = ApiError(500, f"the ingress failed: {type(exc).__name__}: {exc}", code="server_error")
        return JSONResponse(error.body(), 500)


def _routes(app: FastAPI, ingress: Ingress) -> None:
    config = ingress.config

    @app.get("/health", include_in_schema=False)
    async def health(live: bool = False) -> JSONResponse:
        if live:
            return JSONResponse({"status": "live"})
        ready = await ingress.gateway.ready()
        return JSONResponse({"status": "ok" if ready else "unavailable", "triton": config.triton_grpc},
                            200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def chat_page() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            raise ApiError(404, "the chat page is not installed", code="not_found")
        return FileResponse(page, headers=PAGE_HEADERS)

    if STATIC.is_dir():
        app.mount("/static", _WithHeaders(StaticFiles(directory=STATIC), PAGE_HEADERS), name="static")

    def model_card(name: str, description: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "tritonrag", "description": description}

    def models() -> dict[str, str]:
        return {**FLOWS, EMBEDDER.model: f"Embeddings of the served embedder ({ingress.settings.embedder.model})."}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        ingress.caller(request)
        return {"object": "list", "data": [model_card(n, d) for n, d in models().items()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        ingress.caller(request)
        if name not in models():
            raise ApiError(404, f"the model {name!r} does not exist; models: {', '.join(models())}",
                           param="model", code="model_not_found")
        return model_card(name, models()[name])

    @app.get("/v1/documents")
    async def documents(request: Request) -> dict[str, Any]:
        """The knowledge base's documents (for a filter {"source": ...}) and its version."""
        ingress.caller(request)
        stats = await ingress.gateway.stats()
        return {"object": "list", "version": stats.get("version"), "data": stats.get("documents_list", []),
                "truncated": bool(stats.get("documents_list_truncated", False))}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        caller = ingress.caller(request)
        async with ingress.admitted(caller):
            body = await ingress.body(request)
            try:
                parsed = EmbeddingRequest.model_validate_json(body)
            except ValidationError as exc:
                raise validation_error(exc) from None
            if parsed.model not in (EMBEDDER.model, ingress.settings.embedder.model):
                raise ApiError(404, f"the embedding model {parsed.model!r} does not exist; use "
                               f"{EMBEDDER.model!r}", param="model", code="model_not_found")
            texts = parsed.texts
            if not texts or len(texts) > MAX_EMBED_INPUTS:
                raise ApiError(400, f"input must hold 1 to {MAX_EMBED_INPUTS} texts, got {len(texts)}",
                               param="input", code="invalid_value")
            for i, text in enumerate(texts):
                if not text.strip():
                    raise ApiError(400, f"input[{i}] is empty: send text to embed", param="input",
                                   code="invalid_value")
            if parsed.dimensions is not None:
                raise ApiError(400, "dimensions is not supported: the embedder's vectors have a fixed size; "
                               "remove it", param="dimensions", code="unsupported_parameter")
            vectors = await ingress.gateway.embed(texts)
            tokens = _count_tokens(ingress.settings.embedder.model, texts)
        metrics.REQUESTS.labels("embeddings", EMBEDDER.model, "200").inc()
        metrics.SECONDS.labels("embeddings").observe(time.perf_counter() - started)
        return embeddings_response(parsed.model, vectors.tolist(), tokens, parsed.encoding_format)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        caller = ingress.caller(request)
        ingress.admit(caller)  # held until the answer's last byte (released in _stream when streaming)
        metrics.IN_FLIGHT.inc()
        handed_over = False
        try:
            chat = parse_chat(await ingress.body(request))
            call = to_rag_call(chat, config.max_messages, config.max_history_chars, tenant=caller)
            parts = ingress.gateway.rag(call)
            first = await anext(parts)  # a request Triton rejects gets its status before any byte is sent
            completion = Completion(chat.model)
            if not chat.stream:
                reply = RagReply()
                first.add_to(reply)
                async for part in parts:
                    part.add_to(reply)
                _count(reply, chat.model, started, "chat")
                return JSONResponse(completion.response(reply))
            handed_over = True
            return StreamingResponse(
                _stream(ingress, caller, completion, first, parts, chat, started),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        except ApiError as exc:
            metrics.REQUESTS.labels("chat", "-", str(exc.status)).inc()
            raise
        finally:
            if not handed_over:
                ingress.limits.release(caller)
                metrics.IN_FLIGHT.dec()


def _count(reply: RagReply, model: str, started: float, endpoint: str) -> None:
    usage = usage_of(reply)
    metrics.TOKENS.labels("prompt").inc(usage["prompt_tokens"])
    metrics.TOKENS.labels("completion").inc(usage["completion_tokens"])
    metrics.REQUESTS.labels(endpoint, model, "200").inc()
    metrics.SECONDS.labels(endpoint).observe(time.perf_counter() - started)


async def _stream(ingress: Ingress, caller: str, completion: Completion, first: Any, parts: AsyncIterator[Any],
                  chat: Any, started: float) -> AsyncIterator[bytes]:
    """The SSE body: a role chunk carrying the sources, content chunks, the final chunk with the finish reason and
    the `rag` extras (sources, citations, query, timing), the usage chunk when asked, then [DONE]. A failure after
    the first byte is an `error` event, as OpenAI sends them."""
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    reply = RagReply()
    first_text = None
    try:
        part = first
        sent_role = False
        while True:
            part.add_to(reply)
            if not sent_role:
                sent_role = True
                extras = {"sources": part.sources} if part.sources is not None else None
                yield sse(completion.chunk({"role": "assistant", "content": ""}, extras=extras, usage=include_usage))
            if part.text:
                if first_text is None:
                    first_text = time.perf_counter()
                    metrics.TTFT.labels(chat.model).observe(first_text - started)
                yield sse(completion.chunk({"content": part.text}, usage=include_usage))
            if part.final:
                break
            part = await anext(parts)
        yield sse(completion.chunk({}, finish_reason(reply.finish_reason), reply.extras(), usage=include_usage))
        if include_usage:
            yield sse(completion.usage_chunk(reply))
        yield sse("[DONE]")
        _count(reply, chat.model, started, "chat_stream")
    except ApiError as exc:
        metrics.REQUESTS.labels("chat_stream", chat.model, str(exc.status)).inc()
        yield sse(exc.body())
    except (ClientGone, StopAsyncIteration):
        metrics.REQUESTS.labels("chat_stream", chat.model, "499").inc()
    finally:
        await parts.aclose()
        ingress.limits.release(caller)
        metrics.IN_FLIGHT.dec()
