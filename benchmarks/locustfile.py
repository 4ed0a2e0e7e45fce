"""Locust load test of the served RAG pipeline: Triton's `/v2/models/rag/generate` and `/generate_stream` (SSE).

Users ask questions from a realistic mix (the demo's three plus others about the book) back to back (closed
loop, no think time), half through the one-response endpoint and half streaming. For streams, locust records
the whole request as `generate_stream` and the time to the first token as a separate `generate_stream TTFT` row.

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 8 -r 8 -t 60s \\
        --host http://127.0.0.1:8000 --csv /tmp/locust/rag --only-summary

Environment: RAG_MAX_TOKENS overrides the answer length (default: the server's [generator] max_tokens_default);
RAG_PARAMETERS, a JSON object, adds request parameters to every request (benchmarks/suite.py sends
'{"cache": false}': the answer cache bypassed, so the pipeline itself is measured).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

import requests
from locust import HttpUser, constant, task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUESTIONS

from tritonrag.serving.contract import RAG

GENERATE, GENERATE_STREAM = f"/v2/models/{RAG.model}/generate", f"/v2/models/{RAG.model}/generate_stream"
MAX_TOKENS = int(os.environ.get("RAG_MAX_TOKENS", "0"))
EXTRA_PARAMETERS = json.loads(os.environ.get("RAG_PARAMETERS") or "{}")
_offsets = itertools.count()


def _parameters() -> dict[str, object]:
    return {**EXTRA_PARAMETERS, **({RAG.max_tokens: MAX_TOKENS} if MAX_TOKENS else {})}


class RagUser(HttpUser):
    """One closed-loop user of the rag model."""

    wait_time = constant(0)

    def on_start(self) -> None:
        start = next(_offsets) % len(QUESTIONS)  # users start at different questions
        self.questions = itertools.cycle(QUESTIONS[start:] + QUESTIONS[:start])
        self.stream_session = requests.Session()

    @task
    def generate(self) -> None:
        body = {RAG.text_input: next(self.questions), RAG.stream: False, "parameters": _parameters()}
        with self.client.post(GENERATE, json=body, name="generate", catch_response=True) as reply:
            if reply.status_code != 200:
                reply.failure(f"HTTP {reply.status_code}: {reply.text[:200]}")
            elif not reply.json().get(RAG.text_output):
                reply.failure("empty answer")

    @task
    def generate_stream(self) -> None:
        # locust's own timing of a streamed response stops at the headers, so this task times the whole stream
        # itself (a plain requests session, gevent-patched by locust) and reports two rows: the full request and
        # the time to its first token.
        body = {RAG.text_input: next(self.questions), RAG.stream: True, "parameters": _parameters()}
        started = time.perf_counter()
        first_token, error, size = None, None, 0
        try:
            with self.stream_session.post(f"{self.host}{GENERATE_STREAM}", json=body, stream=True,
                                          headers={"Accept": "text/event-stream"}, timeout=600) as reply:
                if reply.status_code != 200:
                    raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
                for raw in reply.iter_lines():
                    size += len(raw)
                    line = raw.decode("utf-8").strip() if raw else ""
                    if not line.startswith("data:"):
                        continue
                    payload = json.loads(line[5:])
                    if "error" in payload:
                        raise RuntimeError(str(payload["error"])[:200])
                    if first_token is None and payload.get(RAG.text_output):
                        first_token = time.perf_counter() - started
            if first_token is None:
                raise RuntimeError("no token streamed")
        except Exception as exc:
            error = exc
        total = time.perf_counter() - started
        fire = self.environment.events.request.fire
        fire(request_type="SSE", name="generate_stream", response_time=total * 1000, response_length=size,
             exception=error, context={})
        if error is None:
            fire(request_type="SSE", name="generate_stream TTFT", response_time=first_token * 1000,
                 response_length=0, exception=None, context={})
