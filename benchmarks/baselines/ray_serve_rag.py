"""The design tritonrag comes from, as a baseline: the RAG pipeline as Ray Serve deployments.

    Ingress (FastAPI) -> Orchestrator (async) -> Embedder (sentence-transformers)
                                              -> ChromaDBReader (ChromaDB, same vectors as tritonrag's FAISS index)
                                              -> PromptBuilder (tritonrag's templates)
                                              -> Chat (vLLM AsyncLLM or transformers, streamed back token by token)

Every stage calls the next through a DeploymentHandle (``await handle.method.remote(...)``; the Chat stream through
``handle.options(stream=True)``). Models, vectors, prompt template and sampling are tritonrag's own (see
README.md next to this file), so only the serving stack differs. Start it with ``serve_baseline.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from tritonrag.errors import InvalidInput
from tritonrag.pipeline.request import RagParams
from tritonrag.pipeline.sources import sources_json
from tritonrag.serving.contract import RAG
from tritonrag.settings import GeneratorSettings, Settings

HEALTH_TIMEOUT_S = 2.0
MODEL_NAME = RAG.model  # the name Triton's routes and events carry, so one client drives both systems
COLLECTION = "tritonrag_kb"
DEPLOYMENTS = ("ingress", "orchestrator", "embedder", "retriever", "prompt_builder", "chat")
# CPU shares that fit ray.init(num_cpus=2) with one replica each (a scheduling reservation, not a limit).
DEFAULT_NUM_CPUS = {"ingress": 0.1, "orchestrator": 0.1, "embedder": 0.5, "retriever": 0.1,
                    "prompt_builder": 0.05, "chat": 1.0}


@dataclass(frozen=True)
class BaselineOptions:
    """How the baseline is deployed; the pipeline's own settings come from tritonrag's Settings."""

    engine: str | None = None  # None: [generator] engine from the settings
    replicas: Mapping[str, int] = field(default_factory=dict)  # deployment -> replicas (default 1)
    num_cpus: Mapping[str, float] = field(default_factory=dict)  # deployment -> ray_actor_options num_cpus
    ray_cpus: float = 2.0  # what ray.init(num_cpus=...) offers; all replicas' shares must fit in it
    max_ongoing_requests: int = 0  # per replica; 0: [rag] max_concurrency (Ray Serve's own default is 5)
    embed_batching: bool = False  # @serve.batch on the Embedder (the original design encodes one query a call)
    embed_max_batch_size: int = 16
    embed_batch_wait_s: float = 0.002
    omp_threads: int = 0  # OMP_NUM_THREADS of the replicas; 0: all cores (Ray would set 1 for shares below 1)

    def replicas_of(self, name: str) -> int:
        return int(self.replicas.get(name, 1))

    def cpus_of(self, name: str) -> float:
        return float(self.num_cpus.get(name, DEFAULT_NUM_CPUS[name]))

    def check(self) -> None:
        """Unknown deployment names and CPU reservations Ray could never place fail here, not as hung replicas."""
        for label, mapping in (("replicas", self.replicas), ("num_cpus", self.num_cpus)):
            unknown = sorted(set(mapping) - set(DEPLOYMENTS))
            if unknown:
                raise ValueError(f"{label}: unknown deployment(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(DEPLOYMENTS)}")
        if any(self.replicas_of(name) < 1 for name in DEPLOYMENTS):
            raise ValueError("every deployment needs at least one replica")
        total = sum(self.replicas_of(name) * self.cpus_of(name) for name in DEPLOYMENTS)
        if total > self.ray_cpus + 1e-9:
            raise ValueError(f"the replicas reserve {total:g} CPUs but Ray has {self.ray_cpus:g}: lower num_cpus or "
                             "replicas (e.g. --num-cpus chat=0.5)")


# ---------------------------------------------------------------------------------------------- ChromaDB collection


def chroma_path(settings: Settings) -> Path:
    """Where the baseline's ChromaDB lives: $TRITONRAG_HOME/baselines/chroma."""
    return settings.home / "baselines" / "chroma"


def chroma_client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False))


def _kb_fingerprint(version_path: Path) -> str:
    from tritonrag.kb.versions import read_manifest

    manifest = read_manifest(version_path)
    return f"{manifest.version}@{manifest.created_at}#{manifest.chunks}"


def ensure_collection(settings: Settings, log: Any = print) -> dict[str, Any]:
    """Build the ChromaDB collection from the published knowledge base unless it already holds that version.

    Chunk texts, metadata and the stored vectors (``vectors.npy``) all come from tritonrag's published version,
    so both systems search the same vectors (inner product; Chroma's "ip" distance is 1 - dot product).
    """
    from tritonrag.kb.search import KnowledgeBase
    from tritonrag.kb.versions import published_path

    version_path = published_path(settings.index_dir)
    fingerprint = _kb_fingerprint(version_path)
    client = chroma_client(chroma_path(settings))
    existing = {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}
    if COLLECTION in existing:
        collection = client.get_collection(COLLECTION)
        if (collection.metadata or {}).get("kb_fingerprint") == fingerprint:
            return {"fingerprint": fingerprint, "chunks": collection.count(), "built": False}
        client.delete_collection(COLLECTION)
    kb = KnowledgeBase(version_path)
    try:
        collection = client.create_collection(
            COLLECTION, configuration={"hnsw": {"space": "ip"}}, embedding_function=None,
            metadata={"kb_fingerprint": fingerprint, "kb_path": str(version_path)},
        )
        step = client.get_max_batch_size()
        for start in range(0, len(kb), step):
            ids = kb.ids[start:start + step]
            hits = kb.fetch(ids, np.zeros(len(ids)))
            collection.add(
                ids=[str(h.chunk_id) for h in hits],
                embeddings=np.asarray(kb.vectors[start:start + step], dtype=np.float32),
                documents=[h.text for h in hits],
                metadatas=[_chroma_metadata(h) for h in hits],
            )
        count = collection.count()
    finally:
        kb.close()
    log(f"baseline: built ChromaDB collection {COLLECTION} ({count} chunks, {fingerprint}) in {chroma_path(settings)}")
    return {"fingerprint": fingerprint, "chunks": count, "built": True}


def _chroma_metadata(hit: Any) -> dict[str, Any]:
    """Chroma takes scalar metadata only; the document's own metadata travels as its JSON."""
    return {"chunk_id": hit.chunk_id, "source": hit.source, "title": hit.title, "section": hit.section,
            "position": hit.position, "doc_metadata": hit.doc_metadata}


# ---------------------------------------------------------------------------------------------------- deployments


@serve.deployment
class Embedder:
    """sentence-transformers on CPU, L2-normalised: tritonrag's TextEmbedder, one query per call by default."""

    def __init__(self, settings: Settings, batching: bool, max_batch_size: int, batch_wait_s: float) -> None:
        from tritonrag.embedding.encoder import TextEmbedder

        self.embedder = TextEmbedder(settings.embedder, device="cpu")
        self.instruction = settings.embedder.query_instruction
        self.batching = batching
        self._embed_batch.set_max_batch_size(max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(batch_wait_s)

    def ping(self) -> bool:
        return True

    async def embed(self, text: str) -> np.ndarray:
        if self.batching:
            return await self._embed_batch(text)
        return self.embedder.encode([text], self.instruction)[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.embedder.encode(texts, self.instruction))


@serve.deployment
class ChromaDBReader:
    """Nearest chunks of a query vector from the ChromaDB collection ``ensure_collection`` built."""

    def __init__(self, settings: Settings) -> None:
        self.collection = chroma_client(chroma_path(settings)).get_collection(COLLECTION)

    def ping(self) -> bool:
        return True

    def search(self, vector: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        """Best first: chunk_id, score (inner product), text, and metadata shaped as tritonrag's retriever's."""
        from tritonrag.kb.search import Hit

        found = self.collection.query(query_embeddings=np.asarray(vector, np.float32).reshape(1, -1),
                                      n_results=top_k, include=["documents", "metadatas", "distances"])
        hits = []
        for text, meta, distance in zip(found["documents"][0], found["metadatas"][0], found["distances"][0]):
            hit = Hit(int(meta["chunk_id"]), 1.0 - float(distance), text, str(meta["source"]), str(meta["title"]),
                      str(meta["section"]), int(meta["position"]), str(meta.get("doc_metadata", "{}")))
            hits.append({"chunk_id": hit.chunk_id, "score": hit.score, "text": text, "metadata": hit.metadata()})
        return hits


@serve.deployment
class PromptBuilder:
    """tritonrag's Jinja2 templates, called as its prompt_builder model calls them; returns (prompt, stop)."""

    def __init__(self, settings: Settings) -> None:
        from tritonrag.prompts.builder import prompt_builder

        self.builder = prompt_builder(settings)

    def ping(self) -> bool:
        return True

    def build(self, query: str, hits: list[dict[str, Any]], template: str) -> tuple[str, list[str]]:
        from tritonrag.prompts.builder import ContextDocument

        documents = [ContextDocument.from_metadata(h["text"], h["metadata"]) for h in hits]
        built = self.builder.build(template, query, documents)
        return built.text, list(built.stop)


class _QueueSink:
    """A tritonrag GenerationSink that hands the engine thread's callbacks to the replica's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = False

    def _put(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the replica's loop is closed: nobody is listening any more
            self.cancelled = True

    def on_text(self, text: str, tokens: int) -> bool:
        if self.cancelled:
            return False
        if text:
            self._put("text", text)
        return True

    def on_finish(self, completion: Any) -> None:
        self._put("finish", completion.finish_reason)

    def on_error(self, error: BaseException) -> None:
        self._put("error", error)


@serve.deployment
class Chat:
    """The generator: tritonrag's engine (vLLM AsyncLLM with the same engine args, or transformers), streamed."""

    def __init__(self, settings: GeneratorSettings) -> None:
        from tritonrag.generation.engine import create_engine

        self.settings = settings
        self.engine = create_engine(settings)

    def ping(self) -> bool:
        return True

    async def generate(self, prompt: str, sampling: dict[str, Any], stop: list[str]) -> AsyncIterator[dict[str, str]]:
        """Yield ``{"text_output": piece}`` as tokens arrive, then ``{"finish_reason": ...}`` (the rag model's
        output names)."""
        from tritonrag.generation.sampling import SamplingParams

        params = SamplingParams.from_request({**sampling, "stop": stop}, self.settings)
        sink = _QueueSink(asyncio.get_running_loop())
        self.engine.submit(prompt, params, sink)
        try:
            while True:
                kind, value = await sink.queue.get()
                if kind == "text":
                    yield {RAG.text_output: value}
                elif kind == "finish":
                    yield {RAG.finish_reason: value}
                    return
                else:
                    raise value
        finally:
            sink.cancelled = True  # a client that went away: the engine aborts the request at its next token

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            self.engine = None
            engine.shutdown()


@serve.deployment
class Orchestrator:
    """embed -> retrieve -> build prompt -> stream generate; yields the sources first, then the answer."""

    def __init__(self, embedder: Any, retriever: Any, prompt_builder: Any, chat: Any, settings: Settings) -> None:
        self.embedder, self.retriever, self.prompt_builder, self.chat = embedder, retriever, prompt_builder, chat
        self.settings = settings

    async def ready(self) -> bool:
        """True once every stage has a replica that answers (a call waits while a replica still starts)."""
        stages = (self.embedder, self.retriever, self.prompt_builder, self.chat)
        return all(await asyncio.gather(*(stage.ping.remote() for stage in stages)))

    async def answer(self, query: str, parameters: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
        """What a request leaves unset gets the stage's default, as in tritonrag (sampling: the Chat's)."""
        params = parse_params(query, parameters, self.settings)
        top_k = self.settings.retriever.top_k_default if params.top_k is None else params.top_k
        template = params.template or self.settings.prompt_builder.template
        vector = await self.embedder.embed.remote(query)
        hits = await self.retriever.search.remote(vector, top_k)
        if not hits:
            raise InvalidInput("the knowledge base is empty: ingest documents first")
        prompt, stop = await self.prompt_builder.build.remote(query, hits, template)
        yield {RAG.sources: sources_json([h["chunk_id"] for h in hits], [h["score"] for h in hits],
                                       [h["metadata"] for h in hits], [h["text"] for h in hits])}
        async for event in self.chat.options(stream=True).generate.remote(prompt, params.sampling(), stop):
            yield event


def parse_params(query: str, parameters: Any, settings: Settings) -> RagParams:
    """The rag model's request validation (same parameters and limits); filters are not supported here."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput(f"input '{RAG.text_input}' is empty: send a question")
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    if parameters.get(RAG.filter) is not None:
        raise InvalidInput("the Ray Serve baseline does not support metadata filters")
    return RagParams.from_parameters(parameters, settings.rag, settings.retriever)


# ------------------------------------------------------------------------------------------------------ HTTP ingress

api = FastAPI(title="tritonrag Ray Serve baseline")


def _unwrap(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrappers (an error raised in another replica arrives as RayTaskError)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return exc


def _error(exc: BaseException) -> JSONResponse:
    """Triton's error shape: {"error": message}, 400 for bad input, else 500."""
    exc = _unwrap(exc)
    return JSONResponse({"error": str(exc)}, status_code=400 if isinstance(exc, ValueError) else 500)


def _event(outputs: dict[str, str]) -> str:
    return f"data: {json.dumps({'model_name': MODEL_NAME, 'model_version': '1', **outputs})}\n\n"


async def _read_body(request: Request) -> tuple[str, dict[str, Any]]:
    try:
        body = json.loads(await request.body())
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    return body.get(RAG.text_input, ""), body.get("parameters") or {}


@serve.deployment
@serve.ingress(api)
class Ingress:
    """Triton-shaped HTTP routes: /generate (one JSON answer) and /generate_stream (SSE), also under /v2/models/rag/."""

    def __init__(self, orchestrator: Any, settings: Settings) -> None:
        self.orchestrator = orchestrator
        self.settings = settings

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 once every stage answers (the Chat replica loads its model for minutes), else 503."""
        response = self.orchestrator.ready.remote()
        try:
            ready = await asyncio.wait_for(response, HEALTH_TIMEOUT_S)
        except Exception as exc:  # still starting (timeout), or a stage failed
            response.cancel()
            return JSONResponse({"status": "starting", "detail": type(_unwrap(exc)).__name__}, status_code=503)
        return JSONResponse({"status": "ok" if ready else "starting"}, status_code=200 if ready else 503)

    def _events(self, query: str, parameters: dict[str, Any]) -> Any:
        return self.orchestrator.options(stream=True).answer.remote(query, parameters)

    @api.post("/generate")
    @api.post(f"/v2/models/{MODEL_NAME}/generate")
    async def generate(self, request: Request) -> JSONResponse:
        """The whole answer: text_output, finish_reason and sources (a JSON string, as Triton sends it)."""
        try:
            query, parameters = await _read_body(request)
            parse_params(query, parameters, self.settings)
            pieces, sources, finish_reason = [], "[]", "stop"
            async for event in self._events(query, parameters):
                pieces.append(event.get(RAG.text_output, ""))
                sources = event.get(RAG.sources, sources)
                finish_reason = event.get(RAG.finish_reason, finish_reason)
        except Exception as exc:
            return _error(exc)
        return JSONResponse({"model_name": MODEL_NAME, "model_version": "1", RAG.text_output: "".join(pieces),
                             RAG.finish_reason: finish_reason, RAG.sources: sources})

    @api.post("/generate_stream")
    @api.post(f"/v2/models/{MODEL_NAME}/generate_stream")
    async def generate_stream(self, request: Request) -> Any:
        """SSE, token by token (always; a "stream" flag is accepted and ignored): sources first, then text,
        then an event with the finish_reason, the events Triton's generate_stream sends for the rag model."""
        try:
            query, parameters = await _read_body(request)
            parse_params(query, parameters, self.settings)
        except Exception as exc:
            return _error(exc)
        return StreamingResponse(self._sse(query, parameters), media_type="text/event-stream")

    async def _sse(self, query: str, parameters: dict[str, Any]) -> AsyncIterator[str]:
        try:
            async for event in self._events(query, parameters):
                if RAG.sources in event:
                    yield _event({RAG.text_output: "", RAG.sources: event[RAG.sources]})
                elif RAG.finish_reason in event:
                    yield _event({RAG.text_output: "", RAG.finish_reason: event[RAG.finish_reason]})
                else:
                    yield _event({RAG.text_output: event[RAG.text_output]})
        except Exception as exc:
            yield f"data: {json.dumps({'error': str(_unwrap(exc))})}\n\n"


# ---------------------------------------------------------------------------------------------------------- the app


def build_app(settings: Settings, options: BaselineOptions) -> Any:
    """Bind the deployments into one Serve application (the Ingress at its root)."""
    options.check()
    generator = settings.generator
    if options.engine:
        generator = dataclasses.replace(generator, engine=options.engine)
    max_ongoing = options.max_ongoing_requests or settings.rag.max_concurrency
    threads = str(options.omp_threads or os.cpu_count() or 1)

    def configured(deployment: Any, name: str) -> Any:
        cpus = options.cpus_of(name)
        actor = {"num_cpus": cpus, "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads}}}
        return deployment.options(name=name, num_replicas=options.replicas_of(name), max_ongoing_requests=max_ongoing,
                                  ray_actor_options=actor)

    embedder = configured(Embedder, "embedder").bind(settings, options.embed_batching, options.embed_max_batch_size,
                                                     options.embed_batch_wait_s)
    retriever = configured(ChromaDBReader, "retriever").bind(settings)
    prompt_builder = configured(PromptBuilder, "prompt_builder").bind(settings)
    chat = configured(Chat, "chat").bind(generator)
    orchestrator = configured(Orchestrator, "orchestrator").bind(embedder, retriever, prompt_builder, chat, settings)
    return configured(Ingress, "ingress").bind(orchestrator, settings)


def parse_counts(text: str, kind: type = int) -> dict[str, Any]:
    """``"embedder=1,chat=2"`` -> {"embedder": 1, "chat": 2} (values parsed with ``kind``)."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected NAME=VALUE")
        number = kind(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"{item!r}: not a finite number")
        out[name.strip().replace("-", "_")] = number
    return out
