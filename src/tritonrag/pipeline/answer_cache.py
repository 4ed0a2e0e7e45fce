"""The answer cache: a question answered before is answered again without embedding, retrieving or generating.

Two tiers. The exact tier matches the question itself (Unicode-normalised, case, spacing and end punctuation aside);
the semantic tier, once the question is embedded, the cached question whose unit vector is most similar, if at least
``semantic_threshold``. Either tier matches only within one *scope*: everything else that shapes an answer is equal —
the knowledge-base version served (an answer never outlives the version it was read from), the flow, every option of
the request but ``stream`` (template, system prompt, sampling, filter, retrieval and rerank options, min_score), the
conversation for flows that read it, this deployment's settings (a fingerprint), and the tenant (the API key the
ingress authenticated, unless [cache] share_across_keys). Only deterministic answers are cached (temperature 0 or a
seed) unless [cache] only_deterministic is off; abstentions, failures, cancelled and JSON-schema-failed answers never.

Concurrent requests for one exact key are coalesced in each process (single flight): while one of them generates,
the others follow it (a ``LiveAnswer``): they are sent what it has sent so far at once, then each piece as it is
generated, instead of generating the same answer again. If the first fails, is cancelled or stalls for [cache]
coalesce_wait_s before a follower was sent any text, the follower answers itself; after that, it fails as
UNAVAILABLE (retry), since the text it was sent cannot be taken back.

The cache never fails a request: a store that errs (Redis down) counts an error and the request runs uncached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tritonrag.pipeline.cache_store import CacheStore, MemoryStore, RedisStore
from tritonrag.pipeline.events import Event, FinalEvent, SourcesEvent, TextEvent
from tritonrag.pipeline.request import RagParams
from tritonrag.pipeline.types import RagRequest
from tritonrag.prompts.history import history_json
from tritonrag.settings import CacheSettings

log = logging.getLogger(__name__)

FORMAT = 1  # of cached values and keys: bump when either changes
NO_VERSION = ""  # the version of answers that read no knowledge base (the llm flow)

# What a response's `cache` output says: answered from the exact or the semantic tier, looked up and not found
# (the answer is then cached), or not looked up (the request said cache false, the cache is off, or the answer
# would not be deterministic).
EXACT, SEMANTIC, MISS, OFF = "exact", "semantic", "miss", "off"

_SPACES = re.compile(r"\s+")
_END_PUNCTUATION = " ?!.。？！"


def normalised_question(text: str) -> str:
    """The question as the exact tier compares it: NFKC, case-folded, runs of whitespace as one space, without
    surrounding spaces and end punctuation ("What is  Fogg's club?" == "what is fogg's club")."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return text.rstrip(_END_PUNCTUATION).strip()


def _digest(value: Any) -> str:
    raw = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def settings_fingerprint(sections: Mapping[str, Any]) -> str:
    """A digest of the settings that shape answers (pass the dataclasses of the embedder, retriever, prompt builder,
    generator, reranker and rag sections): a deployment whose settings differ never reads another's entries."""
    return _digest({name: asdict(section) if hasattr(section, "__dataclass_fields__") else section
                    for name, section in sections.items()})


def request_options(params: RagParams) -> dict[str, Any]:
    """Every option of a request that shapes its answer: all but ``stream``, the cache's own, and ``flow`` (the scope
    names the flow that runs)."""
    options = {name: value for name, value in asdict(params).items()
               if name not in ("stream", "cache", "tenant", "flow")}
    options["filter"] = params.filter.to_json() if params.filter is not None else None
    return options


@dataclass(frozen=True)
class CachedAnswer:
    """What a hit answers with: the answer's text, finish reason, sources and citations (JSON, as the pipeline
    produced them), the question it was the answer to, and when it was cached (time.time())."""

    text: str
    finish_reason: str
    sources: str
    citations: str | None
    question: str
    cached_at: float

    def to_bytes(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAnswer | None:
        """The answer stored in ``raw``; None when it is of another format or damaged (then it is a miss)."""
        try:
            value = json.loads(raw)
            if value.pop("format", None) != FORMAT:
                return None
            return cls(**value)
        except (ValueError, TypeError):
            return None


class LiveAnswer:
    """An answer as it is generated after a miss: the sources and text its client was sent so far and, once it
    ended, the answer cached (None: none, it failed, was cancelled or is not cacheable). Requests for the same exact
    key that arrive meanwhile follow it (``AnswerCache.exact``)."""

    def __init__(self) -> None:
        self.sources: str | None = None
        self.pieces: list[str] = []
        self.ended = False
        self.answer: CachedAnswer | None = None
        self._changed = asyncio.Event()

    def add(self, event: Event) -> None:
        """Note an event its client is about to be sent (sources and text; others change nothing)."""
        if isinstance(event, SourcesEvent):
            self.sources = event.sources
        elif isinstance(event, TextEvent):
            self.pieces.append(event.text)
        else:
            return
        self._notify()

    def answer_of(self, final: FinalEvent, question: str) -> CachedAnswer:
        """The answer to cache once ``final`` ended it (a streamed answer's text is the pieces sent)."""
        text = final.text or "".join(self.pieces)
        return answer_from(text, final.finish_reason, final.sources or self.sources, final.citations, question)

    def end(self, answer: CachedAnswer | None) -> None:
        """It ended, with ``answer`` to replay (None: followers answer themselves); only the first call counts."""
        if not self.ended:
            self.ended, self.answer = True, answer
            self._notify()

    async def changed(self, timeout_s: float) -> None:
        """Wait until something is added or it ends; TimeoutError after ``timeout_s``."""
        await asyncio.wait_for(self._changed.wait(), timeout_s)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass(frozen=True)
class Hit:
    """A cached answer of a tier, or (``live``) an answer being generated now for the same exact key."""

    answer: CachedAnswer | None
    tier: str  # EXACT or SEMANTIC
    similarity: float = 1.0
    live: LiveAnswer | None = None


@dataclass(frozen=True)
class Plan:
    """How one request uses the cache: its exact key, the scope its semantic tier searches (None: no semantic tier),
    and the knowledge-base version both are for."""

    key: str
    semantic_scope: str | None
    version: str


@dataclass
class CacheStats:
    """Counters since the cache was made (the rag adapter publishes them as metrics)."""

    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    bypassed: int = 0
    stores: int = 0
    evictions: int = 0
    invalidations: int = 0  # entries dropped because a new knowledge-base version was published
    errors: int = 0  # a backend call failed (the request ran uncached)
    coalesced: int = 0  # exact hits that followed a request generating the same answer (also in exact_hits)

    def lookups(self) -> dict[str, int]:
        return {EXACT: self.exact_hits, SEMANTIC: self.semantic_hits, MISS: self.misses, OFF: self.bypassed}


@dataclass
class AnswerCache:
    """The two tiers over a store. ``version()`` is the knowledge-base version published now (None: none yet);
    ``temperature_default`` the generator's, which applies to requests that set no temperature."""

    store: CacheStore
    settings: CacheSettings
    version: Callable[[], str | None]
    fingerprint: str = ""
    temperature_default: float = 0.0
    stats: CacheStats = field(default_factory=CacheStats)
    _version_seen: str | None = None
    _generating: dict[str, LiveAnswer] = field(default_factory=dict)  # exact key -> the answer being generated

    def deterministic(self, params: RagParams) -> bool:
        temperature = self.temperature_default if params.temperature is None else params.temperature
        return temperature == 0.0 or params.seed is not None

    async def plan(self, request: RagRequest, flow: str, retrieves: bool, reads_history: bool,
                   embeds: bool) -> Plan | None:
        """The request's plan, or None when it bypasses the cache (counted)."""
        params = request.params
        if (not self.settings.enabled or not params.cache
                or (self.settings.only_deterministic and not self.deterministic(params))):
            self.stats.bypassed += 1
            return None
        version = await self._current_version() if retrieves else NO_VERSION
        scope = {"format": FORMAT, "fingerprint": self.fingerprint, "flow": flow, "version": version,
                 "tenant": "" if self.settings.share_across_keys else params.tenant,
                 "options": request_options(params)}
        semantic = _digest(scope) if self.settings.semantic and embeds else None
        if reads_history:
            scope["history"] = history_json(request.history)
        return Plan(_digest({**scope, "question": normalised_question(request.query)}), semantic, version)

    async def _current_version(self) -> str:
        version = self.version() or NO_VERSION
        if self._version_seen is not None and version != self._version_seen:
            dropped = await self._call(self.store.keep_version(version), 0)
            self.stats.invalidations += dropped
        self._version_seen = version
        return version

    async def exact(self, plan: Plan) -> Hit | None:
        """The cached answer to this very question, or the one being generated for it now (to follow, then count
        with ``followed``); None is not counted as a miss: the semantic tier may still answer."""
        answer = await self._load(plan.key)
        if answer is not None:
            self.stats.exact_hits += 1
            return Hit(answer, EXACT)
        live = self._generating.get(plan.key) if self.settings.coalesce else None
        return Hit(None, EXACT, live=live) if live is not None else None

    def followed(self) -> None:
        """A request followed a live answer to its end."""
        self.stats.exact_hits += 1
        self.stats.coalesced += 1

    async def semantic(self, plan: Plan, vector: np.ndarray | None) -> Hit | None:
        """The cached answer to the most similar question of the plan's scope, if similar enough."""
        if plan.semantic_scope is None or vector is None:
            return None
        nearest = await self._call(self.store.nearest(plan.semantic_scope, unit(vector)), None)
        if nearest is None or nearest.similarity < self.settings.semantic_threshold:
            return None
        answer = await self._load(nearest.key)
        if answer is None:
            return None
        self.stats.semantic_hits += 1
        return Hit(answer, SEMANTIC, nearest.similarity)

    def missed(self) -> None:
        self.stats.misses += 1

    def lead(self, plan: Plan) -> LiveAnswer | None:
        """After a miss: the live answer that requests for the same key arriving meanwhile follow, registered for
        ``plan``'s key (None: coalescing is off, or another request leads it). Whoever gets one must call ``done``,
        whatever happens."""
        if not self.settings.coalesce or plan.key in self._generating:
            return None
        live = self._generating[plan.key] = LiveAnswer()
        return live

    def done(self, plan: Plan, live: LiveAnswer, answer: CachedAnswer | None) -> None:
        """``live`` ended with ``answer`` (None: not cached): its followers finish or answer themselves."""
        live.end(answer)
        if self._generating.get(plan.key) is live:
            del self._generating[plan.key]

    async def put(self, plan: Plan, answer: CachedAnswer, vector: np.ndarray | None,
                  version: str | None) -> None:
        """Cache ``answer``, read from knowledge-base ``version`` (None: it read none); not when the retriever
        served another version than the plan is for (a publish in between)."""
        if (version or NO_VERSION) != plan.version:
            return
        semantic_vector = unit(vector) if plan.semantic_scope is not None and vector is not None else None
        evicted = await self._call(self.store.put(plan.key, answer.to_bytes(), plan.semantic_scope or "",
                                                  plan.version, semantic_vector), None)
        if evicted is not None:
            self.stats.stores += 1
            self.stats.evictions += evicted

    async def _load(self, key: str) -> CachedAnswer | None:
        raw = await self._call(self.store.get(key), None)
        return None if raw is None else CachedAnswer.from_bytes(raw)

    async def _call(self, awaitable: Any, fallback: Any) -> Any:
        try:
            return await awaitable
        except Exception as exc:  # the cache must never fail a request
            if self.stats.errors == 0 or self.stats.errors % 1000 == 0:
                log.warning("answer cache: %s: %s (requests run uncached meanwhile)", type(exc).__name__, exc)
            self.stats.errors += 1
            return fallback

    async def clear(self) -> int:
        return await self._call(self.store.clear(), 0)


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` as one float32 row of norm 1 (the embedder normalises already; a custom one may not)."""
    row = np.asarray(vector, np.float32).reshape(-1)
    norm = float(np.linalg.norm(row))
    return row / norm if norm > 0 else row


def answer_from(text: str, finish_reason: str, sources: str | None, citations: str | None,
                question: str) -> CachedAnswer:
    return CachedAnswer(text, finish_reason, sources or "[]", citations, question, time.time())


def make_store(settings: CacheSettings) -> CacheStore:
    """The store [cache] backend names."""
    if settings.backend == "redis":
        return RedisStore(settings.redis_url, settings.redis_prefix, settings.ttl_s, settings.semantic_max_entries)
    return MemoryStore(settings.max_entries, int(settings.max_mib * 2**20), settings.semantic_max_entries)
