"""The ingress's Prometheus metrics (GET /metrics). With several worker processes, prometheus_client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set by `tritonrag ingress`) adds every worker's samples up."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter("tritonrag_ingress_requests", "HTTP requests answered, by endpoint, model and status",
                   ("endpoint", "model", "status"))
SECONDS = Histogram("tritonrag_ingress_request_seconds", "Seconds from request to the last byte, by endpoint",
                    ("endpoint",), buckets=_SECONDS)
TTFT = Histogram("tritonrag_ingress_first_token_seconds", "Seconds from request to the first streamed text, by model",
                 ("model",), buckets=_SECONDS)
IN_FLIGHT = Gauge("tritonrag_ingress_requests_in_flight", "Requests being answered", multiprocess_mode="livesum")
TOKENS = Counter("tritonrag_ingress_tokens", "Tokens of answered chat requests, by kind (prompt, completion)",
                 ("kind",))
REJECTED = Counter("tritonrag_ingress_rejected", "Requests refused before reaching Triton, by reason",
                   ("reason",))


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type (every worker's, in multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
