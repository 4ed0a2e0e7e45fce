"""Per-request cost of Triton + BLS itself: the `rag` pipeline served with trivially cheap stand-in models, versus
the same four steps called in one process.

Both sides run the same code on the same settings: the stand-in embedder (hash-seeded vectors) and generator
engine (``max_tokens`` words of the prompt, streamed at once), selected by configuration (benchmarks/stand_in.toml,
merged over $TRITONRAG_CONFIG if set), and the real retriever (FAISS + SQLite docstore over the sample knowledge
base) and prompt builder (Jinja2). So served - in-process = what Triton, the Python backend, BLS and the client
protocol add per request.

Served: the committed model repository on a tritonserver this script starts; sequential requests (concurrency 1,
after a warm-up) to `rag` over a gRPC stream (streaming: one response per token) and over HTTP /generate (one
JSON answer), with max_tokens = [generator] max_tokens_default and max_tokens = 1. Fixed cost per request ~ the
max_tokens = 1 overhead; cost per streamed token ~ the difference between the two, over the extra tokens. Rounds of
every configuration (served and in-process) are interleaved, so slow periods of a shared machine hit all of
them alike. Then closed loops at concurrency C (gRPC streaming vs in-process): requests/s.

In-process: the same pipeline the served `rag` runs (tritonrag.pipeline.RagPipeline: flow steps, sources, streaming
events) over in-process stages (tritonrag.pipeline.local_stages: TextEmbedder.encode_mixed, parse_search +
run_searches, PromptBuilder.build, the engine's submit); time to first token is the first text event.
Triton's per-model statistics (queue, compute) over the measured requests show where the served time goes.

Examples::

    .venv/bin/python benchmarks/orchestration_overhead.py --quick --out /tmp/overhead
    .venv/bin/python benchmarks/orchestration_overhead.py --requests 500 --out benchmarks/results/orchestration_overhead
    .venv/bin/python benchmarks/orchestration_overhead.py --ports 28000,28001,28002 --concurrency 0
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import queue
import shlex
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCHMARKS,
    REPOSITORY,
    ROOT,
    latency_summary,
    machine_description,
    machine_markdown,
    markdown_table,
    questions,
    write_csv,
    write_json,
)
from common import write_overlay as write_settings_overlay

STAND_IN = BENCHMARKS / "stand_in.toml"
SERVED = "committed"  # the committed model repository (the rendering of the default CPU spec)
TARGET_P50_MS = 3.0


IN_PROCESS = "in-process"


@dataclass(frozen=True)
class Config:
    """One measured configuration: server variant, protocol (grpc stream / http generate / in-process), length."""

    variant: str  # a server variant, or IN_PROCESS
    protocol: str  # "grpc-stream", "http-generate" or IN_PROCESS
    max_tokens: int

    @property
    def name(self) -> str:
        return f"{self.protocol} max_tokens={self.max_tokens}"

    def row(self) -> dict[str, Any]:
        return {"variant": self.variant, "config": self.name, "protocol": self.protocol, "max_tokens": self.max_tokens}


@dataclass
class Sample:
    ttft_s: float
    total_s: float
    pieces: int


# --------------------------------------------------------------------------------------------- settings


def write_overlay(path: Path) -> Path:
    """$TRITONRAG_CONFIG (if any) with the stand-ins on top, as one TOML."""
    return write_settings_overlay(path, tomllib.loads(STAND_IN.read_text()),
                                  "written by benchmarks/orchestration_overhead.py")


# --------------------------------------------------------------------------------------------- clients


class GrpcRag:
    """One gRPC stream to `rag`, reused for sequential requests (as a long-lived client would)."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=lambda result, error: self._results.put((result, error)))
        self._ids = iter(range(10**12))

    def ask(self, question: str, max_tokens: int, stream: bool = True) -> Sample:
        grpc = self._grpc
        text = grpc.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([question.encode()], dtype=np.object_))
        flag = grpc.InferInput("stream", [1], "BOOL")
        flag.set_data_from_numpy(np.array([stream], dtype=bool))
        request_id = str(next(self._ids))
        started = time.perf_counter()
        ttft, pieces = None, 0
        self.client.async_stream_infer("rag", [text, flag], request_id=request_id,
                                       parameters={"max_tokens": max_tokens}, enable_empty_final_response=True)
        while True:
            result, error = self._results.get(timeout=60)
            if error is not None:
                raise RuntimeError(f"rag over gRPC: {error}")
            response = result.get_response()
            if response.id != request_id:
                raise RuntimeError(f"response for request {response.id!r} while waiting for {request_id!r}")
            if any(o.name == "text_output" for o in response.outputs):
                piece = result.as_numpy("text_output").reshape(-1)[0]
                if piece:
                    pieces += 1
                    if ttft is None:
                        ttft = time.perf_counter() - started
            if response.parameters["triton_final_response"].bool_param:
                total = time.perf_counter() - started
                return Sample(ttft or total, total, pieces)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


class HttpRag:
    """One keep-alive HTTP connection to `rag`'s /generate (a single JSON answer per request)."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def ask(self, question: str, max_tokens: int) -> Sample:
        body = json.dumps({"text_input": question, "stream": False, "parameters": {"max_tokens": max_tokens}})
        started = time.perf_counter()
        self.connection.request("POST", "/v2/models/rag/generate", body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        total = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"rag over HTTP: {response.status} {data[:300]!r}")
        return Sample(total, total, 1 if json.loads(data).get("text_output") else 0)

    def close(self) -> None:
        self.connection.close()


class _TimedStages:
    """The in-process stages, timing each call (embedder, retriever, prompt_builder) per request."""

    def __init__(self, stages: Any) -> None:
        self.inner = stages
        self.embedder = self.retriever = self.prompt_builder = self.generator = self
        self.seconds: dict[str, float] = {"embedder": 0.0, "retriever": 0.0, "prompt_builder": 0.0}

    async def _timed(self, name: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.seconds[name] += time.perf_counter() - started

    async def embed(self, text: str) -> Any:
        return await self._timed("embedder", self.inner.embed(text))

    async def retrieve(self, embedding: Any, top_k: Any, flt: Any) -> Any:
        return await self._timed("retriever", self.inner.retrieve(embedding, top_k, flt))

    async def build(self, query: str, passages: Any, template: Any) -> Any:
        return await self._timed("prompt_builder", self.inner.build(query, passages, template))

    async def start(self, prompt: Any, sampling: Any, stream: bool) -> Any:
        return await self.inner.start(prompt, sampling, stream)


class InProcessRag:
    """The `rag` pipeline itself (tritonrag.pipeline.RagPipeline, the code the served `rag` runs) over in-process
    stages (tritonrag.pipeline.local_stages): the served path minus Triton, BLS and the client protocol."""

    def __init__(self, settings: Any) -> None:
        import asyncio

        from tritonrag.embedding.encoder import TextEmbedder
        from tritonrag.generation.engine import create_engine
        from tritonrag.kb.search import KnowledgeBase
        from tritonrag.pipeline.flow import RagPipeline
        from tritonrag.pipeline.local_stages import LocalStages
        from tritonrag.prompts.builder import PromptBuilder

        self.settings = settings
        r, p = settings.retriever, settings.prompt_builder
        self.engine = create_engine(settings.generator)
        stages = LocalStages(
            TextEmbedder(settings.embedder, "cpu"),
            KnowledgeBase(settings.index_dir, "cpu", r.nprobe, r.ef_search, r.filter_exact_max), r,
            PromptBuilder(p.max_query_chars, p.max_context_chars), p.template, self.engine, settings.generator)
        self.stages = _TimedStages(stages)
        self.pipeline = RagPipeline(self.stages)
        # One event loop for every caller thread (the closed loop asks from several at once), as in the rag stub.
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="inproc-rag", daemon=True)
        self._thread.start()
        self.reset_stages()

    def reset_stages(self) -> None:
        self.stages.seconds = dict.fromkeys(self.stages.seconds, 0.0)
        self.generator_s = 0.0
        self.calls = 0

    def stage_rows(self) -> list[dict[str, Any]]:
        """Mean time of each step since the last reset, in the shape of the served models' statistics."""
        seconds = {**self.stages.seconds, "generator": self.generator_s}
        return [{"variant": IN_PROCESS, "model": name, "calls": self.calls, "infer_us": s / self.calls * 1e6,
                 "total_us": s / self.calls * 1e6} for name, s in seconds.items() if self.calls]

    async def _ask(self, question: str, max_tokens: int) -> Sample:
        from tritonrag.pipeline.events import FailedEvent, TextEvent
        from tritonrag.pipeline.request import RagParams
        from tritonrag.pipeline.types import RagRequest

        before = sum(self.stages.seconds.values())
        started = time.perf_counter()
        first, pieces = None, 0
        async for event in self.pipeline.run(RagRequest(question, RagParams(stream=True, max_tokens=max_tokens))):
            if isinstance(event, TextEvent):
                pieces += 1
                first = first or time.perf_counter()
            elif isinstance(event, FailedEvent):
                raise RuntimeError(f"in-process pipeline failed: {event.message}")
        total = time.perf_counter() - started
        self.generator_s += total - (sum(self.stages.seconds.values()) - before)
        self.calls += 1
        return Sample((first or started + total) - started, total, pieces)

    def ask(self, question: str, max_tokens: int) -> Sample:
        import asyncio

        return asyncio.run_coroutine_threadsafe(self._ask(question, max_tokens), self.loop).result(60)

    def close(self) -> None:
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


# --------------------------------------------------------------------------------------------- measuring


def warm_up(configs: list[Config], ask: Callable[[Config, str], Sample], warmup: int) -> None:
    for config in configs:
        for question in questions(warmup, offset=7):
            ask(config, question)


def sequential(configs: list[Config], ask: Callable[[Config, str], Sample], n: int,
               rounds: int) -> dict[Config, list[tuple[str, Sample]]]:
    """``n`` sequential requests per configuration, in ``rounds`` interleaved blocks."""
    out: dict[Config, list[tuple[str, Sample]]] = {c: [] for c in configs}
    block = -(-n // rounds)
    for start in range(0, n, block):
        for config in configs:
            for question in questions(min(block, n - start), offset=start):
                out[config].append((question, ask(config, question)))
    return out


def closed_loop(concurrency: int, n: int, make_worker: Callable[[], tuple[Callable[[str], Sample], Callable]]
                ) -> tuple[float, list[Sample]]:
    """``n`` requests from ``concurrency`` workers, each sending its next request when the last one ends."""
    work: queue.Queue[str] = queue.Queue()
    for question in questions(n):
        work.put(question)
    samples: list[Sample] = []
    errors: list[BaseException] = []
    workers = [make_worker() for _ in range(concurrency)]
    for ask, _ in workers:
        ask("warm-up question")
    barrier = threading.Barrier(concurrency + 1)

    def loop(ask: Callable[[str], Sample]) -> None:
        barrier.wait()
        while True:
            try:
                question = work.get_nowait()
            except queue.Empty:
                return
            try:
                samples.append(ask(question))
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=loop, args=(ask,)) for ask, _ in workers]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for _, close in workers:
        close()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed; first: {errors[0]}")
    return seconds, samples


def model_stats(http_url: str) -> dict[str, dict[str, int]]:
    """Triton's cumulative per-model statistics: calls and nanoseconds per phase."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=10) as response:
        stats = json.load(response)["model_stats"]
    out = {}
    for model in stats:
        phases = model["inference_stats"]
        out[model["name"]] = {"calls": phases["success"]["count"],
                              **{f"{k}_ns": phases[k]["ns"] for k in ("success", "queue", "compute_input",
                                                                       "compute_infer", "compute_output")}}
    return out


def stage_rows(variant: str, before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
               ) -> list[dict[str, Any]]:
    """Mean per call of each model's phases over the measured requests (Triton's statistics extension).

    For the decoupled models (rag, generator) "infer" is the execute call only, not the responses it streams.
    """
    rows = []
    for name in ("rag", "embedder", "retriever", "prompt_builder", "generator"):
        if name not in after:
            continue
        calls = after[name]["calls"] - before.get(name, {}).get("calls", 0)
        if calls <= 0:
            continue

        def mean_us(key: str, name: str = name, calls: int = calls) -> float:
            return (after[name][key] - before.get(name, {}).get(key, 0)) / calls / 1000

        rows.append({"variant": variant, "model": name, "calls": calls, "queue_us": mean_us("queue_ns"),
                     "input_us": mean_us("compute_input_ns"), "infer_us": mean_us("compute_infer_ns"),
                     "output_us": mean_us("compute_output_ns"), "total_us": mean_us("success_ns")})
    return rows


def summarise(config: Config, samples: list[Sample]) -> dict[str, Any]:
    return {
        **config.row(), "requests": len(samples), "pieces": int(np.median([s.pieces for s in samples])),
        **latency_summary([s.total_s for s in samples], "total_"),
        **latency_summary([s.ttft_s for s in samples], "ttft_"),
    }


def overhead_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """served - in-process, per served configuration (differences of percentiles, not paired differences)."""
    inproc = {r["max_tokens"]: r for r in summary if r["protocol"] == IN_PROCESS}
    rows = []
    for r in summary:
        base = inproc.get(r["max_tokens"])
        if r["protocol"] == IN_PROCESS or base is None:
            continue
        row = {"variant": r["variant"], "config": r["config"], "protocol": r["protocol"], "max_tokens": r["max_tokens"]}
        for stat in ("p50", "p99", "mean"):
            row[f"served_{stat}_ms"] = r[f"total_{stat}_ms"]
            row[f"inproc_{stat}_ms"] = base[f"total_{stat}_ms"]
            row[f"overhead_{stat}_ms"] = r[f"total_{stat}_ms"] - base[f"total_{stat}_ms"]
        row["overhead_ttft_p50_ms"] = r["ttft_p50_ms"] - base["ttft_p50_ms"]
        row["meets_target"] = "yes" if row["overhead_p50_ms"] <= TARGET_P50_MS else "no"
        rows.append(row)
    return rows


def decomposition(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fixed cost per request (max_tokens = 1) and cost per extra token, per variant and protocol."""
    out = []
    by = {(r["variant"], r["protocol"], r["max_tokens"]): r for r in rows}
    for (variant, protocol, tokens), r in by.items():
        one = by.get((variant, protocol, 1))
        if tokens == 1 or one is None:
            continue
        out.append({
            "variant": variant, "protocol": protocol,
            "fixed_p50_ms": one["overhead_p50_ms"], "fixed_mean_ms": one["overhead_mean_ms"],
            "per_token_p50_us": (r["overhead_p50_ms"] - one["overhead_p50_ms"]) * 1000 / (tokens - 1),
            "per_token_mean_us": (r["overhead_mean_ms"] - one["overhead_mean_ms"]) * 1000 / (tokens - 1),
            "tokens": tokens,
        })
    return out


@dataclass
class Served:
    """One server variant and this process's clients of it."""

    variant: str
    server: Any
    grpc: GrpcRag
    http: HttpRag
    startup_s: float

    def close(self) -> None:
        for close in (self.grpc.close, self.http.close, self.server.stop):
            try:
                close()
            except Exception as exc:  # keep stopping the rest
                print(f"[{self.variant}] while closing: {exc}", flush=True)


def start_served(out_dir: Path, ports: tuple[int, int, int], log: Callable[[str], None]) -> Served:
    """Start a tritonserver on the committed repository with clients of it."""
    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.settings import CONFIG_ENV, load_settings

    variant = SERVED
    overlay = write_overlay(out_dir / "config.toml")
    settings = load_settings(overlay)
    repository = REPOSITORY
    server = TritonServer(repository, settings.home, Ports.choose(*ports),
                          log_file=out_dir / f"tritonserver-{variant}.log", env={CONFIG_ENV: str(overlay)})
    started = time.perf_counter()
    log(f"[{variant}] starting Triton on {repository} (log {server.log_file})")
    server.start(settings.server.startup_timeout_s)
    startup_s = time.perf_counter() - started
    log(f"[{variant}] ready in {startup_s:.1f} s: HTTP {server.http_url}, gRPC {server.grpc_url}")
    try:
        return Served(variant, server, GrpcRag(server.grpc_url), HttpRag(server.http_url), startup_s)
    except Exception:
        server.stop()
        raise


def measure(served: list[Served], inproc: InProcessRag, max_tokens: int, n: int, warmup: int, rounds: int,
            concurrency: int, concurrent_requests: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every configuration of every variant, interleaved, then the closed loops; raw rows and summaries."""
    by_variant = {s.variant: s for s in served}
    lengths = sorted({max_tokens, 1}, reverse=True)
    configs = [Config(s.variant, p, t) for t in lengths for s in served for p in ("grpc-stream", "http-generate")]
    configs += [Config(IN_PROCESS, IN_PROCESS, t) for t in lengths]

    def ask(config: Config, question: str) -> Sample:
        if config.protocol == IN_PROCESS:
            return inproc.ask(question, config.max_tokens)
        target = by_variant[config.variant]
        if config.protocol == "grpc-stream":
            return target.grpc.ask(question, config.max_tokens)
        return target.http.ask(question, config.max_tokens)

    raw: list[dict[str, Any]] = []
    out: dict[str, Any] = {"summary": [], "stages": [], "throughput": []}
    warm_up(configs, ask, warmup)
    before = {s.variant: model_stats(s.server.http_url) for s in served}
    inproc.reset_stages()
    started = time.perf_counter()
    results = sequential(configs, ask, n, rounds)
    for s in served:
        out["stages"] += stage_rows(s.variant, before[s.variant], model_stats(s.server.http_url))
    out["stages"] += inproc.stage_rows()
    log(f"sequential: {n} requests x {len(configs)} configurations in {time.perf_counter() - started:.1f} s")
    for config, pairs in results.items():
        raw += [{**config.row(), "concurrency": 1, "i": i, "question": q, "ttft_ms": x.ttft_s * 1000,
                 "total_ms": x.total_s * 1000, "pieces": x.pieces} for i, (q, x) in enumerate(pairs)]
        out["summary"].append(summarise(config, [x for _, x in pairs]))
    if concurrency > 1:
        systems: list[tuple[Config, Callable[[], tuple[Callable[[str], Sample], Callable[[], None]]]]] = [
            (Config(s.variant, "grpc-stream", max_tokens),
             functools.partial(_grpc_worker, s.server.grpc_url, max_tokens))
            for s in served
        ]
        systems.append((Config(IN_PROCESS, IN_PROCESS, max_tokens),
                        lambda: ((lambda q: inproc.ask(q, max_tokens)), lambda: None)))
        for config, make in systems:
            seconds, samples = closed_loop(concurrency, concurrent_requests, make)
            raw += [{**config.row(), "concurrency": concurrency, "i": i, "question": "", "ttft_ms": x.ttft_s * 1000,
                     "total_ms": x.total_s * 1000, "pieces": x.pieces} for i, x in enumerate(samples)]
            out["throughput"].append({
                **config.row(), "concurrency": concurrency, "requests": len(samples), "seconds": seconds,
                "req_per_s": len(samples) / seconds, **latency_summary([x.total_s for x in samples], "total_"),
            })
            log(f"concurrency {concurrency}, {config.variant} {config.name}: {len(samples) / seconds:.1f} req/s")
    out["raw"] = raw
    return out


def _grpc_worker(url: str, max_tokens: int) -> tuple[Callable[[str], Sample], Callable[[], None]]:
    client = GrpcRag(url)
    return (lambda q: client.ask(q, max_tokens)), client.close


# --------------------------------------------------------------------------------------------- report


def report(result: dict[str, Any]) -> str:
    rows = result["overhead"]
    lines = [
        "Per-request latency, concurrency 1 (ms). Served = Triton `rag` (BLS: embedder -> retriever -> "
        "prompt_builder -> generator) with stand-in embedder and generator; in-process = the same functions in "
        f"one process. Overhead = served - in-process; target <= {TARGET_P50_MS:g} ms at p50.",
        "",
        markdown_table(rows, ["variant", "config", "inproc_p50_ms", "served_p50_ms", "overhead_p50_ms",
                              "inproc_p99_ms", "served_p99_ms", "overhead_p99_ms", "overhead_mean_ms",
                              "overhead_ttft_p50_ms", "meets_target"],
                       ["variant", "served config", "in-process p50", "served p50", "overhead p50",
                        "in-process p99", "served p99", "overhead p99", "overhead mean", "TTFT overhead p50",
                        f"p50 <= {TARGET_P50_MS:g} ms"]),
    ]
    if result["decomposition"]:
        lines += ["", "Overhead = fixed cost per request + cost per extra streamed token (max_tokens=N vs 1):", "",
                  markdown_table(result["decomposition"],
                                 ["variant", "protocol", "fixed_p50_ms", "fixed_mean_ms", "per_token_p50_us",
                                  "per_token_mean_us", "tokens"],
                                 ["variant", "protocol", "fixed p50 (ms)", "fixed mean (ms)", "per token p50 (µs)",
                                  "per token mean (µs)", "N"])]
    if result["stages"]:
        lines += ["", "Where served requests spend time: mean per call of each model over the sequential requests of "
                  "all configurations (µs, Triton's statistics; for rag and generator, execute() only, not the "
                  "responses streamed after it returns). In-process rows: the same step as a function call "
                  "(prompt_builder includes sources_json and sampling validation; generator is submit to "
                  "on_finish, all tokens):", "",
                  markdown_table(result["stages"], ["variant", "model", "calls", "queue_us", "input_us", "infer_us",
                                                    "output_us", "total_us"],
                                 ["variant", "model", "calls", "queue", "compute input", "compute infer",
                                  "compute output", "total"])]
    if result["throughput"]:
        lines += ["", "Closed loop (each worker sends its next request when the last one ends):", "",
                  markdown_table(result["throughput"],
                                 ["variant", "config", "concurrency", "requests", "req_per_s", "total_p50_ms",
                                  "total_p99_ms"],
                                 ["variant", "config", "concurrency", "requests", "req/s", "p50 (ms)", "p99 (ms)"])]
    lines += ["", "All configurations (ms):", "",
              markdown_table(result["summary"],
                             ["variant", "config", "requests", "pieces", "total_p50_ms", "total_p90_ms",
                              "total_p99_ms", "total_mean_ms", "ttft_p50_ms", "ttft_p99_ms"],
                             ["variant", "config", "requests", "pieces", "p50", "p90", "p99", "mean", "TTFT p50",
                              "TTFT p99"])]
    return "\n".join(lines)


def run(out_dir: Path, quick: bool, requests: int | None = None, concurrency: int = 8,
        ports: tuple[int, int, int] = (0, 0, 0), command: str | None = None) -> dict[str, Any]:
    """Measure and write requests.csv, summary.json and summary.md into ``out_dir``; returns the summary.

    Starts and stops its own tritonserver. Quick mode takes well under a minute
    once they are ready.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = requests or (60 if quick else 400)
    warmup, rounds = (10, 3) if quick else (30, 8)
    concurrent_requests = (8 if quick else 32) * max(concurrency, 1)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    from tritonrag.settings import load_settings

    served: list[Served] = []
    try:
        served.append(start_served(out_dir, ports, log))
        settings = load_settings(out_dir / "config.toml")
        inproc = InProcessRag(settings)
        try:
            result = measure(served, inproc, settings.generator.max_tokens_default, n, warmup, rounds, concurrency,
                             concurrent_requests, log)
        finally:
            inproc.close()
    finally:
        for s in served:
            s.close()
    raw = result.pop("raw")
    result["startup_s"] = {s.variant: s.startup_s for s in served}
    result["overhead"] = overhead_rows(result["summary"])
    result["decomposition"] = decomposition(result["overhead"])
    result["settings"] = {"requests": n, "warmup": warmup, "rounds": rounds, "concurrency": concurrency,
                          "target_p50_ms": TARGET_P50_MS}
    result["machine"] = machine_description()
    result["load_average"] = os.getloadavg()
    result["markdown"] = report(result)
    write_csv(out_dir / "requests.csv", raw)
    write_json(out_dir / "summary.json", result)
    command = command or f"{sys.executable} {Path(__file__).relative_to(ROOT)} --out {out_dir}"
    (out_dir / "summary.md").write_text(
        f"# Orchestration overhead ({time.strftime('%Y-%m-%d %H:%M %Z')})\n\nCommand: `{command}`\n\n"
        f"{machine_markdown(result['machine'])}\n- load average at the end: "
        f"{', '.join(f'{x:.2f}' for x in result['load_average'])}\n\n{result['markdown']}\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "orchestration_overhead",
                        help="folder for requests.csv, summary.json, summary.md (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="60 requests per configuration (< 1 min once ready)")
    parser.add_argument("--requests", type=int, help="sequential requests per configuration (default 400; quick 60)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop concurrency; 0 or 1 skips it")
    parser.add_argument("--ports", default="0,0,0",
                        help="HTTP,gRPC,metrics ports (0 = any free one)")
    args = parser.parse_args()
    ports = tuple(int(p) for p in args.ports.split(","))
    if len(ports) != 3:
        parser.error("--ports needs three comma-separated numbers: HTTP,gRPC,metrics")
    command = shlex.join([".venv/bin/python", "benchmarks/orchestration_overhead.py", *sys.argv[1:]])
    result = run(args.out, args.quick, args.requests, args.concurrency, ports, command)  # type: ignore[arg-type]
    print("\n" + result["markdown"])
    print(f"\nwritten to {args.out}/ (requests.csv, summary.json, summary.md)")


if __name__ == "__main__":
    main()
