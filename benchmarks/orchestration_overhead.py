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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCHMARKS,
    REPOSITORY,
    ROOT,
    latency_summary,
    machine_description,
    machine_markdown,
    questions,
    write_csv,
    write_json,
)
from common import write_overlay as write_settings_overlay
from overhead_clients import IN_PROCESS, Config, GrpcRag, HttpRag, InProcessRag, Sample
from overhead_report import TARGET_P50_MS, decomposition, overhead_rows, report, summarise

from tritonrag.serving.contract import MODELS, RAG

STAND_IN = BENCHMARKS / "stand_in.toml"
SERVED = "committed"  # the committed model repository (the rendering of the default CPU spec)








# --------------------------------------------------------------------------------------------- settings


def write_overlay(path: Path) -> Path:
    """$TRITONRAG_CONFIG (if any) with the stand-ins on top, as one TOML."""
    return write_settings_overlay(path, tomllib.loads(STAND_IN.read_text()),
                                  "written by benchmarks/orchestration_overhead.py")


# --------------------------------------------------------------------------------------------- clients










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
    for name in (RAG.model, *(m for m in MODELS if m != RAG.model)):
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
