"""One closed-loop client for end-to-end RAG over HTTP Server-Sent Events, used for every system we compare.

Each of ``concurrency`` workers sends a question, reads the SSE stream to its end, and only then sends the
next one (closed loop), so throughput and latency are measured together at a fixed load. The client records
per request: time to first token (first non-empty ``text_output``), total latency, streamed pieces and the
answer text, so answers from two systems can be checked for equality (greedy decoding: same prompt, same text),
and, where the server says, how its answer cache served it (the rag model's ``cache`` output on the final
response: exact, semantic, miss or off). A level is the question mix (``common.questions``) with the same
parameters for every request, or a list of ``Ask``s each with its own (``closed_loop(..., asks=...)``, the suite's
repeat-share sweep).

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
from common import Ask, latency_summary, markdown_table, questions

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
    kind: str = ""  # fresh, repeat or paraphrase (a repeat-share level), else empty
    cache: str = ""  # the rag model's `cache` output (exact, semantic, miss, off), empty when it sends none

CACHE_OUTPUT = "cache"
CACHE_OUTCOMES = ("exact", "semantic", "miss", "off")


@dataclass
class Level:
    system: str
    concurrency: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    share: float | None = None  # a repeat-share level: the share of repeated or paraphrased questions

    def row(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.ok]
        pieces = sum(s.pieces for s in ok)
        extra: dict[str, Any] = {}
        if self.share is not None:
            extra["share"] = self.share
            extra.update({f"{kind}s": sum(s.kind == kind for s in self.samples) for kind in ("repeat", "paraphrase")})
        if any(s.cache for s in self.samples):
            extra.update({f"cache_{outcome}": sum(s.cache == outcome for s in ok) for outcome in CACHE_OUTCOMES})
            extra["cache_hits"] = extra["cache_exact"] + extra["cache_semantic"]
        return {
            **({"share": extra.pop("share")} if "share" in extra else {}),
            "system": self.system, "concurrency": self.concurrency, "requests": len(ok),
            "errors": len(self.samples) - len(ok), "seconds": self.seconds,
            "req_per_s": len(ok) / self.seconds if self.seconds else 0.0,
            "tokens_per_s": pieces / self.seconds if self.seconds else 0.0,
            **latency_summary([s.ttft_s for s in ok], "ttft_"),
            **latency_summary([s.latency_s for s in ok], "latency_"),
            **extra,
        }


def _text_of(payload: dict[str, Any], name: str = RAG.text_output) -> str:
    value = payload.get(name, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)


def request_body(question: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Triton's generate extension wants ``stream`` to stream token by token; the baseline ignores it."""
    return {RAG.text_input: question, RAG.stream: True, "parameters": parameters}


async def one_request(session: aiohttp.ClientSession, url: str, question: str, parameters: dict[str, Any],
                      timeout_s: float, kind: str = "") -> Sample:
    sample = await _one_request(session, url, question, parameters, timeout_s)
    sample.kind = kind
    return sample


async def _one_request(session: aiohttp.ClientSession, url: str, question: str, parameters: dict[str, Any],
                       timeout_s: float) -> Sample:
    started = time.perf_counter()
    ttft, pieces, answer, cache = None, 0, [], ""
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
                cache = _text_of(payload, CACHE_OUTPUT) or cache
                text = _text_of(payload)
                if text:
                    pieces += 1
                    answer.append(text)
                    if ttft is None:
                        ttft = time.perf_counter() - started
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Sample(question, False, 0.0, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    return Sample(question, True, ttft if ttft is not None else latency, latency, pieces, "".join(answer),
                  cache=cache)


async def closed_loop(system: str, url: str, concurrency: int, requests: int, parameters: dict[str, Any],
                      timeout_s: float = 900.0, offset: int = 0, asks: list[Ask] | None = None,
                      share: float | None = None) -> Level:
    """``requests`` questions from the mix (or the ``asks``, in order) through ``concurrency`` closed-loop workers,
    each request with ``parameters``."""
    asks = asks if asks is not None else [Ask(q) for q in questions(requests, offset)]
    pending = list(reversed(asks))
    samples: list[Sample] = []
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while pending:
                ask = pending.pop()
                samples.append(await one_request(session, url, ask.question, parameters, timeout_s, ask.kind))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Level(system, concurrency, seconds, samples, share)


def log_level(level: Level, log=print) -> None:
    row = level.row()
    share = f"share {level.share:.0%}, " if level.share is not None else ""
    hits = f", cache hits {row['cache_hits']}" if "cache_hits" in row else ""
    log(f"[{level.system}] {share}c={level.concurrency}: {row['requests']} ok, {row['errors']} errors, "
        f"{row['req_per_s']:.2f} req/s, TTFT p50 {row['ttft_p50_ms']:.0f} ms, latency p50 "
        f"{row['latency_p50_ms']:.0f} ms{hits}")
    for s in level.samples:
        if not s.ok:
            log(f"  error: {s.error}")
            break


def run_levels(system: str, url: str, levels: list[int], requests_for, parameters: dict[str, Any],
               warmup: int = 2, log=print) -> list[Level]:
    """Warm up, then each concurrency level in turn; ``requests_for(c)`` says how many requests a level sends."""
    asyncio.run(closed_loop(system, url, 1, warmup, parameters))
    out = []
    for c in levels:
        level = asyncio.run(closed_loop(system, url, c, requests_for(c), parameters))
        out.append(level)
        log_level(level, log)
    return out


def run_shares(system: str, url: str, concurrency: int, mix: dict[float, list[Ask]], parameters_for,
               log=print) -> list[Level]:
    """The repeat-share sweep: each share's asks in turn (no warm-up: run it on a warm server), every request of a
    level with ``parameters_for(share)``."""
    out = []
    for share, asks in mix.items():
        level = asyncio.run(closed_loop(system, url, concurrency, len(asks), parameters_for(share), asks=asks,
                                        share=share))
        out.append(level)
        log_level(level, log)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the SSE endpoint (Triton: .../v2/models/rag/generate_stream)")
    parser.add_argument("--system", default="target", help="name in the output table")
    parser.add_argument("-c", "--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: 2 x concurrency, >= 8)")
    parser.add_argument("--max-tokens", type=int, default=0, help="override the answer length (default: server's)")
    parser.add_argument("--parameters", default="{}",
                        help='JSON object of request parameters for every request, e.g. \'{"cache": false}\'')
    args = parser.parse_args()
    parameters = {**json.loads(args.parameters), **({RAG.max_tokens: args.max_tokens} if args.max_tokens else {})}
    levels = [int(c) for c in args.concurrency.split(",")]
    results = run_levels(args.system, args.url, levels, lambda c: args.requests or max(8, 2 * c), parameters)
    print(markdown_table([r.row() for r in results],
                         ["system", "concurrency", "requests", "errors", "req_per_s", "tokens_per_s",
                          "ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms"]))


if __name__ == "__main__":
    main()
