"""The generator engine's own limit on the pipeline's very requests: what end-to-end RAG could reach at best.

The prompts, stop strings and sampling are those the served `rag` model sends its generator for the suite's question
mix: built in this process by the pipeline `rag` runs (benchmarks/perf_inputs.py ``pipeline_requests``: the standard
flows over the in-process stages, the same retrieval and prompt-builder code as the served retriever and
prompt_builder, the request parsed as rag parses a streamed one; greedy, [generator] max_tokens_default). They go
to tritonrag's own in-process vLLM engine (tritonrag.generation.vllm_engine.VllmEngine, the code the served
generator runs, with the same settings: TRITONRAG_CONFIG, prefix caching included) from closed-loop clients, level
after level in the order and with the questions benchmarks/rag_load.py sends them (a warm-up at c=1, then each
level's ``common.questions(n)``), so the engine's prefix cache sees what the served one sees. TTFT: submit to the
first non-empty text; tokens/s: streamed pieces per second, as rag_load.py counts them.

Run it with nothing else on the machine (it starts its own vLLM; benchmarks/suite.py runs it before Triton):

    .venv/bin/python benchmarks/engine_limit.py --plan 8:16 --json /tmp/engine.json
    .venv/bin/python benchmarks/engine_limit.py --plan 1:8,4:8,8:16,16:32
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import latency_summary, markdown_table, questions, write_csv, write_json

SYSTEM = "engine"
COLUMNS = ["system", "concurrency", "requests", "errors", "abstained", "req_per_s", "tokens_per_s",
           "output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms"]


def parse_plan(text: str) -> list[tuple[int, int]]:
    """``"8:16,16:32"`` -> [(8, 16), (16, 32)]: (concurrency, requests) per level, in order."""
    plan = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        c, sep, n = item.partition(":")
        if not sep or int(c) < 1 or int(n) < 1:
            raise ValueError(f"{item!r}: expected CONCURRENCY:REQUESTS, both at least 1")
        plan.append((int(c), int(n)))
    if not plan:
        raise ValueError("an empty plan")
    return plan


class _Timed:
    """A GenerationSink that times one request: first non-empty text, end, streamed pieces, tokens."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.ended = 0.0
        self.pieces = 0
        self.tokens = 0
        self.text: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def on_text(self, text: str, tokens: int) -> bool:
        self.tokens += tokens
        if text:
            self.pieces += 1
            self.text.append(text)
            if self.first is None:
                self.first = time.perf_counter()
        return True

    def on_finish(self, completion: Any) -> None:
        self.tokens = max(self.tokens, completion.completion_tokens)
        self.ended = time.perf_counter()
        self.done.set()

    def on_error(self, error: BaseException) -> None:
        self.error = error
        self.ended = time.perf_counter()
        self.done.set()


@dataclass
class Request:
    question: str
    prompt: str  # empty: the pipeline abstains, the generator is not asked
    sampling: Any


def closed_loop(engine: Any, requests: list[Request], concurrency: int, timeout_s: float = 900.0,
                samples: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``requests`` in order through ``concurrency`` closed-loop clients; one row shaped as rag_load's (and, into
    ``samples``, one dict per request: question, ok, ttft_s, latency_s, answer)."""
    pending = list(reversed(requests))
    lock = threading.Lock()
    done: list[_Timed] = []
    asked: list[str] = []
    abstained = [0]

    def client() -> None:
        while True:
            with lock:
                if not pending:
                    return
                request = pending.pop()
            if not request.prompt:
                with lock:
                    abstained[0] += 1
                continue
            sink = _Timed()
            engine.submit(request.prompt, request.sampling, sink)
            if not sink.done.wait(timeout_s):
                sink.error = TimeoutError(f"no answer in {timeout_s:.0f} s")
            with lock:
                done.append(sink)
                asked.append(request.question)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, name=f"engine-client-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ok = [s for s in done if s.error is None]
    if samples is not None:
        samples += [{"system": SYSTEM, "concurrency": concurrency, "question": q, "ok": s.error is None,
                     "ttft_s": (s.first or s.ended) - s.started, "latency_s": s.ended - s.started,
                     "tokens": s.tokens, "answer": "".join(s.text), "error": "" if s.error is None else str(s.error)}
                    for q, s in zip(asked, done)]
    return {
        "system": SYSTEM, "concurrency": concurrency, "requests": len(ok), "errors": len(done) - len(ok),
        "abstained": abstained[0], "seconds": seconds,
        "req_per_s": len(ok) / seconds if seconds else 0.0,
        "tokens_per_s": sum(s.pieces for s in ok) / seconds if seconds else 0.0,
        "output_tokens_per_s": sum(s.tokens for s in ok) / seconds if seconds else 0.0,
        **latency_summary([(s.first or s.ended) - s.started for s in ok], "ttft_"),
        **latency_summary([s.ended - s.started for s in ok], "latency_"),
        **({"error": str(next(s.error for s in done if s.error is not None))} if len(ok) < len(done) else {}),
    }


def pipeline_requests(texts: list[str]) -> dict[str, Request]:
    """What the served pipeline asks its generator for each question (perf_inputs.pipeline_requests)."""
    from perf_inputs import pipeline_requests as built

    from tritonrag.kb.search import KnowledgeBase
    from tritonrag.settings import load_settings

    settings = load_settings()
    r = settings.retriever
    kb = KnowledgeBase(settings.index_dir, "cpu", r.nprobe, r.ef_search, r.filter_exact_max)
    try:
        rows = built(settings, kb, sorted(set(texts)))
    finally:
        kb.close()
    return {row.question: Request(row.question, row.prompt, row.sampling) for row in rows}


def run(plan: list[tuple[int, int]], warmup: int = 2, log=print,
        samples: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Warm up at c=1 with ``warmup`` requests, then each (concurrency, requests) level of ``plan`` in turn (each
    request's answer and timings into ``samples``)."""
    from tritonrag.generation.vllm_engine import VllmEngine
    from tritonrag.settings import load_settings

    levels = [questions(n) for _, n in plan]
    built = pipeline_requests(questions(warmup) + [q for level in levels for q in level])
    settings = load_settings().generator
    if settings.engine != "vllm":
        raise SystemExit(f"[generator] engine is {settings.engine!r}: the engine limit measures vLLM")
    log(f"[{SYSTEM}] starting vLLM ({settings.model}, prefix caching {settings.enable_prefix_caching}, "
        f"max_tokens {next(iter(built.values())).sampling.max_tokens if built else '?'})")
    started = time.perf_counter()
    engine = VllmEngine(settings)
    log(f"[{SYSTEM}] vLLM ready in {time.perf_counter() - started:.0f} s")
    rows = []
    try:
        if warmup:
            closed_loop(engine, [built[q] for q in questions(warmup)], 1)
        for (c, _), level in zip(plan, levels):
            row = closed_loop(engine, [built[q] for q in level], c, samples=samples)
            rows.append(row)
            log(f"[{SYSTEM}] c={c}: {row['requests']} ok, {row['errors']} errors, {row['req_per_s']:.2f} req/s, "
                f"TTFT p50 {row['ttft_p50_ms']:.0f} ms, latency p50 {row['latency_p50_ms']:.0f} ms"
                + (f"; error: {row['error']}" if row.get("error") else ""))
    finally:
        engine.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="8:16", help="CONCURRENCY:REQUESTS per level, comma-separated, in order")
    parser.add_argument("--warmup", type=int, default=2, help="requests at c=1 first (as rag_load.py)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON (for benchmarks/suite.py)")
    parser.add_argument("--samples", type=Path, help="write every request (answer text included) as CSV")
    args = parser.parse_args()
    samples: list[dict[str, Any]] = []
    rows = run(parse_plan(args.plan), args.warmup, samples=samples)
    if args.json:
        write_json(args.json, rows)
    if args.samples:
        write_csv(args.samples, samples)
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":  # vLLM on CPU spawns processes, which import this module again
    main()
