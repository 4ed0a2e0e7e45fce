"""Per-caller limits: requests in flight (a counter) and requests per minute (a token bucket). One instance per
worker process; the event loop is single-threaded, so no locks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tritonrag.ingress.errors import ApiError


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


@dataclass
class Limits:
    """``concurrency`` requests in flight and ``rpm`` per minute (bursts of ``burst``) per caller; 0 disables."""

    concurrency: int
    rpm: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    max_callers: int = 100_000  # idle callers are forgotten beyond this (anonymous callers are per address)
    _callers: dict[str, _Bucket] = field(default_factory=dict)

    def acquire(self, caller: str) -> None:
        """Admit one request of ``caller`` or raise a 429 saying when to retry; pair with ``release``."""
        now = self.clock()
        bucket = self._callers.get(caller)
        if bucket is None:
            if len(self._callers) >= self.max_callers:
                self._forget_idle()
            bucket = self._callers[caller] = _Bucket(float(self.burst), now)
        if self.concurrency and bucket.in_flight >= self.concurrency:
            raise ApiError(429, f"too many requests in flight for this API key: at most {self.concurrency} at a "
                           "time; wait for one to finish", code="concurrency_limit_exceeded",
                           headers={"Retry-After": "1"})
        if self.rpm:
            rate = self.rpm / 60.0
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens < 1.0:
                wait = math.ceil((1.0 - bucket.tokens) / rate)
                raise ApiError(429, f"rate limit reached for this API key: {self.rpm:g} requests per minute "
                               f"(bursts of {self.burst}); retry in {wait} s", code="rate_limit_exceeded",
                               headers={"Retry-After": str(wait)})
            bucket.tokens -= 1.0
        bucket.in_flight += 1

    def release(self, caller: str) -> None:
        bucket = self._callers.get(caller)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def in_flight(self, caller: str) -> int:
        bucket = self._callers.get(caller)
        return bucket.in_flight if bucket else 0

    def _forget_idle(self) -> None:
        for name in [name for name, bucket in self._callers.items() if bucket.in_flight == 0]:
            del self._callers[name]


def per_worker(limit: float, workers: int) -> float:
    """A limit meant for the whole ingress, shared out between its worker processes (each keeps its own count)."""
    return 0 if not limit else max(1, math.ceil(limit / max(1, workers)))
