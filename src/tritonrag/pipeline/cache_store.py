"""Where the answer cache keeps its entries: in this process (an LRU bounded by entries and bytes) or in Redis (one
cache for every replica). Both hold opaque values under exact keys, and for the semantic tier, per scope, the unit
vectors of the questions cached with the key of each; they know nothing of answers (tritonrag.pipeline.answer_cache).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Nearest:
    """The cached question most similar to the one asked: its exact key and their cosine similarity."""

    key: str
    similarity: float


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key`` (None: none, or it expired or was evicted)."""

    async def put(self, key: str, value: bytes, scope: str, version: str, vector: np.ndarray | None) -> int:
        """Store ``value`` under ``key``; with ``vector`` (a unit vector), also in ``scope``'s semantic index.
        Returns how many entries were evicted to make room."""

    async def nearest(self, scope: str, vector: np.ndarray) -> Nearest | None:
        """The entry of ``scope`` whose vector is most similar to ``vector`` (None: the scope has none)."""

    async def keep_version(self, version: str) -> int:
        """Forget entries of other knowledge-base versions (a new one was published); how many were dropped.
        Entries of answers that read no knowledge base (version "") stay."""

    async def clear(self) -> int: ...

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    async def close(self) -> None: ...


class SemanticIndex:
    """The unit vectors of one scope's cached questions, newest last, at most ``capacity`` (oldest dropped)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: list[str] = []
        self._rows: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    def add(self, key: str, vector: np.ndarray) -> None:
        if key in self.keys:
            self.remove(key)
        self.keys.append(key)
        self._rows.append(np.asarray(vector, np.float32).reshape(-1))
        if len(self.keys) > self.capacity:
            del self.keys[0], self._rows[0]
        self._matrix = None

    def remove(self, key: str) -> None:
        if key in self.keys:
            i = self.keys.index(key)
            del self.keys[i], self._rows[i]
            self._matrix = None

    def nearest(self, vector: np.ndarray) -> Nearest | None:
        if not self.keys:
            return None
        if self._matrix is None:
            self._matrix = np.stack(self._rows)
        query = np.asarray(vector, np.float32).reshape(-1)
        if query.shape[0] != self._matrix.shape[1]:
            return None  # another embedder's vectors (a changed deployment): nothing comparable
        similarities = self._matrix @ query
        best = int(np.argmax(similarities))
        return Nearest(self.keys[best], float(similarities[best]))

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class _Entry:
    value: bytes
    scope: str
    version: str
    semantic: bool


@dataclass
class MemoryStore:
    """This process's cache: least recently used entries go first once ``max_entries`` or ``max_bytes`` is passed."""

    max_entries: int
    max_bytes: int
    semantic_max_entries: int = 2048
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _scopes: dict[str, SemanticIndex] = field(default_factory=dict)
    _bytes: int = 0

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.value

    async def put(self, key: str, value: bytes, scope: str, version: str, vector: np.ndarray | None) -> int:
        self._drop(key)
        if len(value) > self.max_bytes:
            return 0  # larger than the whole cache: not kept
        self._entries[key] = _Entry(value, scope, version, vector is not None)
        self._bytes += len(value)
        if vector is not None:
            self._scopes.setdefault(scope, SemanticIndex(self.semantic_max_entries)).add(key, vector)
        evicted = 0
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            evicted += 1
        return evicted

    async def nearest(self, scope: str, vector: np.ndarray) -> Nearest | None:
        index = self._scopes.get(scope)
        return None if index is None else index.nearest(vector)

    async def keep_version(self, version: str) -> int:
        stale = [key for key, entry in self._entries.items() if entry.version not in ("", version)]
        for key in stale:
            self._drop(key)
        return len(stale)

    async def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self._scopes.clear()
        self._bytes = 0
        return count

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= len(entry.value)
        if entry.semantic and entry.scope in self._scopes:
            index = self._scopes[entry.scope]
            index.remove(key)
            if not index:
                del self._scopes[entry.scope]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    async def close(self) -> None:
        return None


class RedisStore:
    """One cache for every replica, in Redis: each value under ``{prefix}:a:{key}`` with a TTL; each scope's semantic
    index as a list ``{prefix}:s:{scope}`` of key + vector records (the newest ``semantic_max_entries``) and a count
    of records ever pushed, ``{prefix}:n:{scope}``, so each replica reads only the records it has not seen. Entries of
    an old knowledge-base version are never looked up again (the version is part of every scope) and expire.
    Memory is Redis's to bound: give it a maxmemory and the allkeys-lru policy."""

    def __init__(self, url: str, prefix: str, ttl_s: float, semantic_max_entries: int = 2048,
                 timeout_s: float = 0.5) -> None:
        import redis.asyncio as redis  # optional: only this backend needs it

        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix, self.ttl_ms = prefix, max(1, int(ttl_s * 1000))
        self.semantic_max_entries = semantic_max_entries
        self._mirrors: dict[str, tuple[int, SemanticIndex]] = {}  # scope -> (records seen, index)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(self._key("a", key))
        return None if value is None else bytes(value)

    async def put(self, key: str, value: bytes, scope: str, version: str, vector: np.ndarray | None) -> int:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._key("a", key), value, px=self.ttl_ms)
            if vector is not None:
                record = key.encode("ascii") + b"\x00" + np.asarray(vector, "<f4").reshape(-1).tobytes()
                names = self._key("s", scope), self._key("n", scope)
                pipe.rpush(names[0], record)
                pipe.ltrim(names[0], -self.semantic_max_entries, -1)
                pipe.incr(names[1])
                for name in names:
                    pipe.pexpire(name, self.ttl_ms)
            await pipe.execute()
        return 0  # Redis evicts by its own policy

    async def nearest(self, scope: str, vector: np.ndarray) -> Nearest | None:
        pushed = int(await self.client.get(self._key("n", scope)) or 0)
        seen, index = self._mirrors.get(scope, (0, SemanticIndex(self.semantic_max_entries)))
        if pushed < seen:  # the scope expired and started again
            seen, index = 0, SemanticIndex(self.semantic_max_entries)
        if pushed > seen:
            new = min(pushed - seen, self.semantic_max_entries)
            for record in await self.client.lrange(self._key("s", scope), -new, -1):
                key, _, raw = bytes(record).partition(b"\x00")
                index.add(key.decode("ascii"), np.frombuffer(raw, "<f4"))
        self._mirrors[scope] = (pushed, index)
        return index.nearest(vector)

    async def keep_version(self, version: str) -> int:
        self._mirrors.clear()  # old scopes are never asked for again; forget their vectors here
        return 0

    async def clear(self) -> int:
        count = 0
        async for name in self.client.scan_iter(match=f"{self.prefix}:*", count=500):
            count += await self.client.delete(name)
        self._mirrors.clear()
        return count

    def __len__(self) -> int:
        return sum(len(index) for _, index in self._mirrors.values())

    @property
    def nbytes(self) -> int:
        return 0

    async def close(self) -> None:
        await self.client.aclose()
