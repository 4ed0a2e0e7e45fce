"""One closed-loop client for end-to-end RAG over HTTP Server-Sent Events, used for every system we compare.

Each of ``concurrency`` workers sends a question, reads the SSE stream to its end, and only then sends the
next one (closed loop), so throughput and latency are measured together at a fixed load. The client records
per request: time to first token (first non-empty ``text_output``), total latency, streamed pieces and the
answer text, so answers from two systems can be checked for equality (greedy decoding: same prompt, same text).

    .venv/bin/python benchmarks/rag_load.py --url http://127.0.0.1:8000/v2/models/rag/generate_stream -c 1,8
    .venv/bin/python benchmarks/rag_load.py --url http://127.0.0.1:8100/generate_stream -c 8 --requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import latency_summary, markdown_table, questions

from tritonrag.serving.contract import RAG


@dataclass
class Sample:
    """One request as the client saw it."""

    question: str
    ok: bool
    ttft_s: float
    latency_s: float
    pieces: int = 0
    answer: str = ""
    error: str = ""


@dataclass
class Level:
    system: str
    concurrency: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.ok]
        pieces = sum(s.pieces for s in ok)
        return {
            "system": self.system, "concurrency": self.concurrency, "requests": len(ok),
            "errors": len(self.samples) - len(ok), "seconds": self.seconds,
            "req_per_s": len(ok) / self.seconds if self.seconds else 0.0,
            "tokens_per_s": pieces / self.seconds if self.seconds else 0.0,
            **latency_summary([s.ttft_s for s in ok], "ttft_"),
            **latency_summary([s.latency_s for s in ok], "latency_"),
        }


def _text_of(payload: dict[str, Any]) -> str:
    value = payload.get(RAG.text_output, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)


def request_body(question: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Triton's generate extension wants ``stream`` to stream token by token; the baseline ignores it."""
    return {RAG.text_input: question, RAG.stream: True, "parameters": parameters}


async def one_request(session: aiohttp.ClientSession, url: str, question: str, parameters: dict[str, Any],
                      timeout_s: float) -> Sample:
    started = time.perf_counter()
    ttft, pieces, answer = None, 0, []
    try:
        async with session.post(url, json=request_body(question, parameters),
                                headers={"Accept": "text/event-stream"},
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return Sample(question, False, 0.0, time.perf_counter() - started, error=error)
            async for raw in response.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                payload = json.loads(line[5:])
                if "error" in payload:
                    return Sample(question, False, 0.0, time.perf_counter() - started, error=str(payload["error"]))
                text = _text_of(payload)
                if text:
                    pieces += 1
                    answer.append(text)
                    if ttft is None:
                        ttft = time.perf_counter() - started
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Sample(question, False, 0.0, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    return Sample(question, True, ttft if ttft is not None else latency, latency, pieces, "".join(answer))


async def closed_loop(system: str, url: str, concurrency: int, requests: int, parameters: dict[str, Any],
                      timeout_s: float = 900.0, offset: int = 0) -> Level:
    """``requests`` questions from the mix through ``concurrency`` closed-loop workers."""
    pending = list(reversed(questions(requests, offset)))
    samples: list[Sample] = []
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while pending:
                samples.append(await one_request(session, url, pending.pop(), parameters, timeout_s))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Level(system, concurrency, seconds, samples)


def run_levels(system: str, url: str, levels: list[int], requests_for, parameters: dict[str, Any],
               warmup: int = 2, log=print) -> list[Level]:
    """Warm up, then each concurrency level in turn; ``requests_for(c)`` says how many requests a level sends."""
    asyncio.run(closed_loop(system, url, 1, warmup, parameters))
    out = []
    for c in levels:
        level = asyncio.run(closed_loop(system, url, c, requests_for(c), parameters))
        out.append(level)
        row = level.row()
        log(f"[{system}] c={c}: {row['requests']} ok, {row['errors']} errors, {row['req_per_s']:.2f} req/s, "
            f"TTFT p50 {row['ttft_p50_ms']:.0f} ms, latency p50 {row['latency_p50_ms']:.0f} ms")
        for s in level.samples:
            if not s.ok:
                log(f"  error: {s.error}")
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the SSE endpoint (Triton: .../v2/models/rag/generate_stream)")
    parser.add_argument("--system", default="target", help="name in the output table")
    parser.add_argument("-c", "--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: 2 x concurrency, >= 8)")
    parser.add_argument("--max-tokens", type=int, default=0, help="override the answer length (default: server's)")
    args = parser.parse_args()
    parameters = {RAG.max_tokens: args.max_tokens} if args.max_tokens else {}
    levels = [int(c) for c in args.concurrency.split(",")]
    results = run_levels(args.system, args.url, levels, lambda c: args.requests or max(8, 2 * c), parameters)
    print(markdown_table([r.row() for r in results],
                         ["system", "concurrency", "requests", "errors", "req_per_s", "tokens_per_s",
                          "ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms"]))


if __name__ == "__main__":
    main()
