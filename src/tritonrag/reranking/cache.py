"""A bounded LRU cache of passage embeddings, keyed by a hash of the passage text."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


def text_key(text: str) -> bytes:
    """A 16-byte BLAKE2b digest of ``text`` (the cache keeps no passage text)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """At most ``capacity`` vectors; the least recently used goes first. ``capacity`` 0 keeps nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, text: str) -> np.ndarray | None:
        """The cached vector of ``text`` (now the most recently used), or None; counts hits and misses."""
        vector = self._vectors.get(key := text_key(text)) if self.capacity else None
        if vector is None:
            self.misses += 1
            return None
        self._vectors.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, text: str, vector: np.ndarray) -> None:
        """Remember ``vector`` for ``text``, dropping the least recently used beyond ``capacity``."""
        if not self.capacity:
            return
        key = text_key(text)
        self._vectors[key] = vector
        self._vectors.move_to_end(key)
        while len(self._vectors) > self.capacity:
            self._vectors.popitem(last=False)
