"""Where an end-to-end request's first token waits: the served RAG pipeline vs the in-process engine, same prompts.

Two measurements, each a closed loop (every worker sends its next request when the previous one ends) over the
question mix of benchmarks/common.py, in the same order, after a warm-up of 2 requests at concurrency 1:

* ``e2e``: streamed RAG through Triton (HTTP SSE, ``rag``'s /generate_stream). Per request it records the client's
  time to first token and latency, and the ``timing`` of rag's final response (ms of embed, retrieve, prompt and
  first_token: the generator's first token after the stream was started), so the first token's wait splits into
  the stages before generation, the generator's own first token, and the rest (HTTP, Triton's queues, BLS hops,
  the first token's way back).
* ``engine``: the in-process engine on the very prompts and sampling parameters the pipeline sends
  (benchmarks/engine_limit.py's requests and closed loop: tritonrag's VllmEngine, the served generator's code, stop
  strings included). Its TTFT is the bound the served pipeline is compared with.

    flock /tmp/tritonrag-bench.lock .venv/bin/python benchmarks/ttft_breakdown.py e2e \
        --url http://127.0.0.1:8000/v2/models/rag/generate_stream -c 8,16 --label after --json out.json
    TRITONRAG_CONFIG=config.toml flock /tmp/tritonrag-bench.lock .venv/bin/python benchmarks/ttft_breakdown.py \
        engine -c 8,16 --json engine.json
    .venv/bin/python benchmarks/ttft_breakdown.py table out.json engine.json   # one table of earlier runs

Requests per level: 2 x concurrency (as benchmarks/suite.py --full), or --requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, percentile, questions, write_json

STAGES = ("embed", "retrieve", "prompt", "first_token")


@dataclass
class Sample:
    """One request: client-side seconds, and rag's ``timing`` (milliseconds) when the server sent one."""

    question: str
    ok: bool
    ttft_s: float
    latency_s: float
    timing: dict[str, float] = field(default_factory=dict)
    error: str = ""
    head: str = ""  # the answer's first characters as the client saw them

    def other_ms(self) -> float | None:
        """The part of the client's TTFT that no stage's timing holds (HTTP, queues, hops, the way back)."""
        if "first_token_ms" not in self.timing:
            return None
        return 1000 * self.ttft_s - sum(self.timing.get(f"{s}_ms", 0.0) for s in STAGES)


def summarize(system: str, concurrency: int, seconds: float, samples: list[Sample]) -> dict[str, Any]:
    """One table row: throughput, client TTFT p50/p90, and the p50 of each stage's timing and of the rest."""
    ok = [s for s in samples if s.ok]
    row: dict[str, Any] = {
        "system": system, "concurrency": concurrency, "requests": len(ok), "errors": len(samples) - len(ok),
        "seconds": seconds, "req_per_s": len(ok) / seconds if seconds else 0.0,
        "ttft_p50_ms": 1000 * percentile([s.ttft_s for s in ok], 50),
        "ttft_p90_ms": 1000 * percentile([s.ttft_s for s in ok], 90),
        "latency_p50_ms": 1000 * percentile([s.latency_s for s in ok], 50),
    }
    for stage in STAGES:
        values = [s.timing[f"{stage}_ms"] for s in ok if f"{stage}_ms" in s.timing]
        row[f"{stage}_p50_ms"] = percentile(values, 50) if values else float("nan")
    rest = [r for r in (s.other_ms() for s in ok) if r is not None]
    row["other_p50_ms"] = percentile(rest, 50) if rest else float("nan")
    row["other_mean_ms"] = statistics.fmean(rest) if rest else float("nan")
    row["other_over_1s"] = sum(r > 1000 for r in rest)  # requests whose first text waited a second past its token
    # the server's time until the generator's first token (the stages before it, then the token itself)
    served = [1000 * s.ttft_s - r for s, r in ((s, s.other_ms()) for s in ok) if r is not None]
    row["to_first_token_p50_ms"] = percentile(served, 50) if served else float("nan")
    return row


def parse_event(line: str) -> dict[str, Any] | None:
    """The JSON payload of one SSE ``data:`` line (None for other lines)."""
    line = line.strip()
    if not line.startswith("data:"):
        return None
    return json.loads(line[5:])


def first_string(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name, "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------------------------------- end to end


async def one_sse(session: Any, url: str, question: str, parameters: dict[str, Any], timeout_s: float) -> Sample:
    import aiohttp

    from tritonrag.serving.contract import RAG

    started = time.perf_counter()
    ttft, timing, head = None, {}, ""
    body = {RAG.text_input: question, RAG.stream: True, "parameters": parameters}
    try:
        async with session.post(url, json=body, headers={"Accept": "text/event-stream"},
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                return Sample(question, False, 0.0, time.perf_counter() - started,
                              error=f"HTTP {response.status}: {(await response.text())[:300]}")
            async for raw in response.content:
                payload = parse_event(raw.decode("utf-8"))
                if payload is None:
                    continue
                if "error" in payload:
                    return Sample(question, False, 0.0, time.perf_counter() - started, error=str(payload["error"]))
                text = first_string(payload, RAG.text_output)
                if ttft is None and text:
                    ttft = time.perf_counter() - started
                if len(head) < 40:
                    head += text
                if RAG.timing in payload:
                    timing = json.loads(first_string(payload, RAG.timing))
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Sample(question, False, 0.0, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    return Sample(question, True, ttft if ttft is not None else latency, latency, timing, head=head[:40])


async def sse_level(url: str, concurrency: int, requests: int, parameters: dict[str, Any],
                    timeout_s: float = 900.0) -> tuple[float, list[Sample]]:
    import aiohttp

    pending = list(reversed(questions(requests)))
    samples: list[Sample] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:

        async def worker() -> None:
            while pending:
                samples.append(await one_sse(session, url, pending.pop(), parameters, timeout_s))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, samples


def run_e2e(args: argparse.Namespace) -> list[tuple[dict[str, Any], list[Sample]]]:
    from tritonrag.serving.contract import RAG

    parameters = {RAG.max_tokens: args.max_tokens} if args.max_tokens else {}
    asyncio.run(sse_level(args.url, 1, 2, parameters))  # warm-up
    out = []
    for c in args.levels:
        seconds, samples = asyncio.run(sse_level(args.url, c, args.requests or 2 * c, parameters))
        out.append((summarize(args.label or "e2e", c, seconds, samples), samples))
        print_row(out[-1][0])
    return out


# ---------------------------------------------------------------------------------------------------- in process


def run_engine(args: argparse.Namespace) -> list[tuple[dict[str, Any], list[Sample]]]:
    """The engine limit (benchmarks/engine_limit.py: the pipeline's very requests, in-process vLLM) at each level."""
    from dataclasses import replace

    from engine_limit import closed_loop, pipeline_requests

    from tritonrag.generation.vllm_engine import VllmEngine
    from tritonrag.settings import load_settings

    texts = questions(max([args.requests or 2 * c for c in args.levels] + [2]))
    built = pipeline_requests(texts)
    if args.max_tokens:
        built = {q: replace(r, sampling=replace(r.sampling, max_tokens=args.max_tokens)) if r.prompt else r
                 for q, r in built.items()}
    print(f"[engine] {len(built)} prompts recorded; starting vLLM...", flush=True)
    engine = VllmEngine(load_settings().generator)
    out = []
    try:
        closed_loop(engine, [built[q] for q in texts[:2]], 1)  # warm-up
        for c in args.levels:
            raw: list[dict[str, Any]] = []
            row = closed_loop(engine, [built[q] for q in texts[: args.requests or 2 * c]], c, samples=raw)
            samples = [Sample(s["question"], s["ok"], s["ttft_s"], s["latency_s"], error=s["error"],
                              head=s["answer"][:40]) for s in raw]
            out.append((summarize(args.label or "engine", c, row["seconds"], samples), samples))
            print_row(out[-1][0])
    finally:
        engine.shutdown()
    return out


# ---------------------------------------------------------------------------------------------------- output

COLUMNS = ["system", "concurrency", "requests", "errors", "req_per_s", "ttft_p50_ms", "ttft_p90_ms",
           "latency_p50_ms", "embed_p50_ms", "retrieve_p50_ms", "prompt_p50_ms", "first_token_p50_ms",
           "to_first_token_p50_ms", "other_p50_ms", "other_over_1s"]


def print_row(row: dict[str, Any]) -> None:
    print(f"[{row['system']}] c={row['concurrency']}: {row['requests']} ok, {row['errors']} errors, "
          f"{row['req_per_s']:.3f} req/s, TTFT p50 {row['ttft_p50_ms']:.0f} ms (embed {row['embed_p50_ms']:.0f}, "
          f"retrieve {row['retrieve_p50_ms']:.0f}, prompt {row['prompt_p50_ms']:.0f}, first_token "
          f"{row['first_token_p50_ms']:.0f}, other {row['other_p50_ms']:.0f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("e2e", "engine", "table"))
    parser.add_argument("files", nargs="*", type=Path, help="table: --json files of earlier runs, one table of all")
    parser.add_argument("--url", help="e2e: rag's SSE endpoint (.../v2/models/rag/generate_stream)")
    parser.add_argument("-c", "--concurrency", default="8,16", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default 2 x concurrency)")
    parser.add_argument("--max-tokens", type=int, default=0, help="override the answer length (default: settings')")
    parser.add_argument("--label", default="", help="the system's name in the table")
    parser.add_argument("--json", type=Path, help="write the rows and every request here")
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    if args.what == "e2e" and not args.url:
        parser.error("e2e needs --url")
    if args.what == "table":
        rows = [summarize(entry["row"]["system"], entry["row"]["concurrency"], entry["row"]["seconds"],
                          [Sample(**sample) for sample in entry["samples"]])
                for path in args.files for entry in json.loads(path.read_text())]
        print(markdown_table(sorted(rows, key=lambda r: (r["concurrency"], r["system"])), COLUMNS))
        return
    results = run_e2e(args) if args.what == "e2e" else run_engine(args)
    print(markdown_table([row for row, _ in results], COLUMNS))
    if args.json:
        write_json(args.json, [{"row": row, "samples": [asdict(s) for s in samples]} for row, samples in results])


if __name__ == "__main__":
    main()
