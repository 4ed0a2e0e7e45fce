"""The whole benchmark suite in one run, written to benchmarks/results/<date>/ with a Markdown summary and plots.

Steps, one after the other on the same machine (each starts and stops what it needs):
 1. component limits in this process: sentence-transformers encode, FAISS search + fetch, vLLM generate;
 2. the engine limit (benchmarks/engine_limit.py), alone on the machine: tritonrag's in-process vLLM engine on the
    very prompts, stop strings and sampling the pipeline sends for the RAG levels' questions, at their concurrency
    levels, in their order;
 3. Triton on the committed repository: the served generator, the closed-loop RAG client, the repeat-share sweep,
    locust on /generate(_stream), then perf_analyzer on every model (HTTP and gRPC; streaming for the decoupled ones);
 4. the Ray Serve + ChromaDB baselines (benchmarks/baselines/, vLLM and transformers Chat): the same RAG client
    (and, for ray-serve, the same sweep);
 5. orchestration overhead: Triton with stand-in models vs the same four functions in one process.

Both systems get the same settings file (written to <out>/config.toml): prefix caching on, as users run them (the
question mix repeats across levels, so later levels find earlier prompts in vLLM's cache on both systems alike);
quick mode also skips torch.compile (enforce_eager) and shortens answers ([generator] max_tokens_default, which RAG
answers get). Everything else is the configuration in src/tritonrag/settings/defaults.toml.

tritonrag's answer cache (rag's exact and semantic tiers) is bypassed (request parameter `cache: false`) in every
RAG measurement but the repeat-share sweep, so they measure the pipeline itself. The sweep: throughput and TTFT of
both systems at one concurrency (full 16, quick 8) over the share of repeated or paraphrased questions (0, 30, 50,
70%; benchmarks/repeat_questions.yaml, common.repeat_mix: the same seeded sequence for both systems, no question in
two levels); tritonrag's requests carry the cache on, with a tenant of their own per level and run
(`tritonrag_cache_tenant`), and the rag model's `cache` output (exact, semantic, miss, off) is counted.

    scripts/bench.sh --quick          # ~15 minutes: c=8 only, short answers, results in <date>-quick/
    scripts/bench.sh --full           # ~45 minutes on 2 cores: c=1,4,8,16, results in <date>/
    .venv/bin/python benchmarks/suite.py --full --skip baseline,locust   # parts of it
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCHMARKS,
    REPEAT_SHARES,
    REPOSITORY,
    ROOT,
    load_repeat_pool,
    machine_description,
    repeat_mix,
    write_csv,
    write_json,
    write_overlay,
)

from tritonrag.serving.contract import GENERATOR, RAG

STEPS = ("limits", "engine", "perf", "generator", "rag", "repeat", "locust", "baseline", "overhead")
# tritonrag's answer-cache request parameters (tritonrag.serving.contract RAG): the names it will have, where this
# checkout's rag does not know them yet (then the suite sends neither: rag refuses unknown parameters)
CACHE_PARAMETER = getattr(RAG, "cache", "cache")
TENANT_PARAMETER = getattr(RAG, "cache_tenant", "tritonrag_cache_tenant")
HAS_CACHE = CACHE_PARAMETER in RAG.parameters
MIX_SEED = 18


@dataclass(frozen=True)
class Mode:
    name: str
    rag_levels: list[int]
    generator_levels: list[int]
    max_tokens: int
    locust_seconds: int
    limit_seconds: float
    enforce_eager: bool
    # Ray Serve baselines: (system name, launcher arguments, concurrency levels)
    baselines: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]
    sweep_concurrency: int = 16  # the repeat-share sweep: one concurrency, sweep_requests per share level
    sweep_requests: int = 48
    sweep_systems: tuple[str, ...] = ("tritonrag", "ray-serve")

    def rag_requests(self, concurrency: int) -> int:
        return max(8, 2 * concurrency) if self.name == "full" else max(4, concurrency)


QUICK = Mode("quick", [8], [8], 32, 20, 3.0, True, (("ray-serve", (), (8,)),), 8, 24)
# The original design's Chat may run on transformers: measured too, at c=8 only (one request at a time, slow).
FULL = Mode("full", [1, 4, 8, 16], [8, 16], 96, 60, 10.0, False,
            (("ray-serve", (), (1, 4, 8, 16)), ("ray-serve-transformers", ("--engine", "transformers"), (8,))), 16, 48)


@dataclass
class Run:
    mode: Mode
    out: Path
    config: Path
    log_file: Any = None
    commands: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))
    _mix: dict[float, Any] | None = None

    def mix(self) -> dict[float, Any]:
        """The repeat-share sweep's requests, one list per share (the same for every system), saved in raw/."""
        if self._mix is None:
            self._mix = repeat_mix(load_repeat_pool(), REPEAT_SHARES, self.mode.sweep_requests, MIX_SEED,
                                   gap=self.mode.sweep_concurrency)
            write_json(self.out / "raw" / "repeat_mix.json",
                       {f"{share:.0%}": [vars(a) for a in asks] for share, asks in self._mix.items()})
        return self._mix

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        if self.log_file:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def step(self, name: str, work: Callable[[], Any]) -> Any:
        """Run one step; a failure is logged and reported, and the other steps still run."""
        self.log(f"== {name}")
        started = time.perf_counter()
        try:
            result = work()
            self.results[name] = result
            return result
        except Exception as exc:
            self.failures[name] = f"{type(exc).__name__}: {exc}"
            self.log(f"{name} FAILED: {self.failures[name]}\n{traceback.format_exc()}")
            return None
        finally:
            self.timings[name] = time.perf_counter() - started


def write_config(path: Path, mode: Mode) -> Path:
    """The settings every system runs with: the user's TRITONRAG_CONFIG (if any) plus the suite's overrides."""
    generator: dict[str, Any] = {"enable_prefix_caching": True, "max_tokens_default": mode.max_tokens}
    if mode.enforce_eager:
        generator["enforce_eager"] = True
    return write_overlay(path, {"generator": generator},
                         "written by benchmarks/suite.py: the settings every system in this run used")


def run_limits(run: Run) -> list[dict[str, Any]]:
    import numpy as np
    from component_limits import embedder_limit, retriever_limit
    from perf_inputs import build_inputs

    from tritonrag.settings import load_settings

    # the very inputs perf_analyzer sends the served models
    paths = build_inputs(run.out / "raw" / "perf_analyzer" / "inputs", run.mode.max_tokens)
    texts = [entry["text"]["content"][0] for entry in json.loads(paths["embedder"].read_text())["data"]]
    vectors = np.array([e["embedding"]["content"] for e in json.loads(paths["retriever"].read_text())["data"]],
                       dtype=np.float32)
    rows = [embedder_limit(texts, run.mode.limit_seconds)]
    rows += retriever_limit(vectors, load_settings().retriever.top_k_default, run.mode.limit_seconds)
    for row in rows:
        run.log(f"{row['component']} ({row['measure']}): {row['limit']:.0f} {row['unit']}")
    json_path = run.out / "raw" / "generator_inprocess.json"
    command = [sys.executable, str(BENCHMARKS / "generator_throughput.py"), "--systems", "vllm-inprocess",
               "--concurrency", ",".join(map(str, run.mode.generator_levels)),
               "--max-tokens", str(run.mode.max_tokens), "--json", str(json_path)]
    run.commands.append(shlex.join(command))
    subprocess.run(command, check=True, env=os.environ.copy())
    for row in json.loads(json_path.read_text()):
        rows.append({"component": GENERATOR.model, "measure": f"vLLM generate, c={row['concurrency']}",
                     "unit": "tokens/s", "limit": row["tokens_per_s"], "items": row["tokens"],
                     "concurrency": row["concurrency"]})
    write_csv(run.out / "raw" / "limits.csv", rows)
    return rows


def run_engine(run: Run) -> list[dict[str, Any]]:
    """The engine limit, in its own process (its vLLM ends with it, before Triton starts)."""
    json_path = run.out / "raw" / "engine_limit.json"
    plan = ",".join(f"{c}:{run.mode.rag_requests(c)}" for c in run.mode.rag_levels)
    command = [sys.executable, str(BENCHMARKS / "engine_limit.py"), "--plan", plan, "--json", str(json_path),
               "--samples", str(run.out / "raw" / "engine_requests.csv")]
    run.commands.append(shlex.join(command))
    with (run.out / "raw" / "engine_limit.log").open("w") as log:
        subprocess.run(command, check=True, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    rows = json.loads(json_path.read_text())
    for row in rows:
        run.log(f"[engine] c={row['concurrency']}: {row['requests']} ok, {row['errors']} errors, "
                f"{row['req_per_s']:.2f} req/s, TTFT p50 {row['ttft_p50_ms']:.0f} ms")
    return rows


def pipeline_parameters(system: str) -> dict[str, Any]:
    """Every RAG measurement but the sweep: tritonrag's answer cache bypassed, so the pipeline itself is measured
    (the baseline has no answer cache)."""
    return {CACHE_PARAMETER: False} if system == "tritonrag" and HAS_CACHE else {}


def sweep_parameters(run: Run, system: str, share: float) -> dict[str, Any]:
    """The sweep's tritonrag requests: the cache on, in a tenant of this run and share level of its own."""
    if system != "tritonrag" or not HAS_CACHE:
        return {}
    return {CACHE_PARAMETER: True, TENANT_PARAMETER: f"suite-{run.run_id}-{round(share * 100)}"}


def bypass_cache_in_perf(perf_models: Any) -> None:
    """perf_analyzer's rag requests bypass the answer cache too (its question mix repeats): the request parameter
    added to each rag command line, unless benchmarks/perf_models.py already sends one."""
    if not HAS_CACHE or getattr(perf_models.command, "bypasses_cache", False):
        return
    original = perf_models.command

    def command(binary: Any, job: Any, *args: Any, **kwargs: Any) -> list[str]:
        line = original(binary, job, *args, **kwargs)
        if job.model == RAG.model and not any(str(a).startswith(f"{CACHE_PARAMETER}:") for a in line):
            line += ["--request-parameter", f"{CACHE_PARAMETER}:false:bool"]
        return line

    command.bypasses_cache = True  # type: ignore[attr-defined]
    perf_models.command = command


def start_triton(run: Run) -> Any:
    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.settings import CONFIG_ENV, load_settings

    server = TritonServer(REPOSITORY, load_settings().home, Ports.choose(0, 0, 0), env={CONFIG_ENV: str(run.config)})
    run.commands.append(f"TRITONRAG_CONFIG={run.config} {shlex.join(server.command())}")
    started = time.perf_counter()
    server.start(900)
    run.log(f"Triton ready in {time.perf_counter() - started:.0f} s ({server.http_url})")
    return server


def run_generator(run: Run, server: Any) -> list[dict[str, Any]]:
    from generator_throughput import drive_generator, rag_prompts

    all_prompts = rag_prompts(max(run.mode.generator_levels))
    results = drive_generator("triton-generator", server.grpc_url, server.metrics_url, run.mode.generator_levels,
                              lambda c: all_prompts[: max(4, c)], run.mode.max_tokens)
    return [{k: v for k, v in r.as_dict().items() if k != "ttft_s"} for r in results]


def run_rag(run: Run, system: str, url: str, levels: list[int] | None = None) -> list[dict[str, Any]]:
    from rag_load import run_levels

    levels = run_levels(system, url, levels or run.mode.rag_levels, run.mode.rag_requests,
                        pipeline_parameters(system), log=run.log)
    samples = [{"system": system, "concurrency": lv.concurrency, **vars(s)} for lv in levels for s in lv.samples]
    write_csv(run.out / "raw" / f"rag_{system}_requests.csv", samples)
    return [lv.row() for lv in levels]


def run_repeat(run: Run, system: str, url: str) -> list[dict[str, Any]]:
    """The repeat-share sweep on a warm server (after the RAG levels)."""
    from rag_load import run_shares

    if system == "tritonrag" and not HAS_CACHE:
        run.log("this checkout's rag has no answer cache (no `cache` request parameter): the sweep runs without it")
    levels = run_shares(system, url, run.mode.sweep_concurrency, run.mix(),
                        lambda share: sweep_parameters(run, system, share), log=run.log)
    samples = [{"system": system, "share": lv.share, "concurrency": lv.concurrency, **vars(s)}
               for lv in levels for s in lv.samples]
    write_csv(run.out / "raw" / f"repeat_{system}_requests.csv", samples)
    return [lv.row() for lv in levels]


def run_locust(run: Run, server: Any) -> dict[str, Any]:
    users = run.mode.rag_levels[-1] if run.mode.name == "quick" else 8
    prefix = run.out / "raw" / "locust" / "rag"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("locust")), "-f", str(BENCHMARKS / "locustfile.py"), "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{run.mode.locust_seconds}s", "--host", f"http://{server.http_url.removeprefix('http://')}",
               "--csv", str(prefix), "--only-summary", "--stop-timeout", "120"]
    run.commands.append(shlex.join(command))
    env = {**os.environ, "RAG_PARAMETERS": json.dumps(pipeline_parameters("tritonrag"))}
    with (prefix.parent / "locust.log").open("w") as log:
        subprocess.run(command, check=False, env=env, stdout=log, stderr=subprocess.STDOUT)
    with (prefix.parent / "rag_stats.csv").open() as handle:
        stats = list(csv.DictReader(handle))
    rows = [{"name": r["Name"], "type": r["Type"], "requests": int(r["Request Count"]),
             "failures": int(r["Failure Count"]), "req_per_s": float(r["Requests/s"]), "p50_ms": float(r["50%"]),
             "p90_ms": float(r["90%"]), "p99_ms": float(r["99%"])} for r in stats]
    return {"users": users, "seconds": run.mode.locust_seconds, "rows": rows}


def run_triton_steps(run: Run, steps: set[str]) -> None:
    if not steps & {"perf", "generator", "rag", "repeat", "locust"}:
        return
    server = run.step("triton start", lambda: start_triton(run))
    if server is None:
        return
    try:
        if "generator" in steps:
            run.step("generator", lambda: run_generator(run, server))
        if "rag" in steps:
            url = f"http://{server.http_url.removeprefix('http://')}/v2/models/{RAG.model}/generate_stream"
            run.step("rag tritonrag", lambda: run_rag(run, "tritonrag", url))
        if "repeat" in steps and "tritonrag" in run.mode.sweep_systems:
            url = f"http://{server.http_url.removeprefix('http://')}/v2/models/{RAG.model}/generate_stream"
            run.step("repeat tritonrag", lambda: run_repeat(run, "tritonrag", url))
        if "locust" in steps:
            run.step("locust", lambda: run_locust(run, server))
        if "perf" in steps:  # last: perf_analyzer ends each streaming level by cancelling what is still in flight
            import perf_models

            bypass_cache_in_perf(perf_models)
            run.step("perf", lambda: perf_models.run(run.out / "raw" / "perf_analyzer", server.http_url,
                                                     server.grpc_url, run.mode.name == "quick"))
    finally:
        server.stop()


def run_baseline(run: Run, system: str, args: tuple[str, ...], levels: tuple[int, ...],
                 steps: set[str]) -> dict[str, Any]:
    """Start one baseline; its RAG levels (step "rag <system>") and, if it is in the sweep, the sweep."""
    sys.path.insert(0, str(BENCHMARKS / "baselines"))
    from serve_baseline import BaselineServer

    from tritonrag.deploy.server import free_port
    from tritonrag.settings import CONFIG_ENV

    started = time.perf_counter()
    port = free_port()
    with BaselineServer(port=port, env={CONFIG_ENV: str(run.config)}, args=args,
                        log_path=run.out / "raw" / f"{system}.log") as baseline:
        ready_s = time.perf_counter() - started
        run.log(f"{system} ready in {ready_s:.0f} s ({baseline.url})")
        run.commands.append(f"TRITONRAG_CONFIG={run.config} .venv/bin/python benchmarks/baselines/serve_baseline.py "
                            f"--port {port} {shlex.join(args)}".strip())
        url = f"{baseline.url}/generate_stream"
        if "rag" in steps:
            run.step(f"rag {system}", lambda: run_rag(run, system, url, list(levels)))
        if "repeat" in steps and system in run.mode.sweep_systems:
            run.step(f"repeat {system}", lambda: run_repeat(run, system, url))
        return {"url": baseline.url, "ready_s": ready_s}


def run_overhead(run: Run) -> dict[str, Any]:
    import orchestration_overhead

    return orchestration_overhead.run(run.out / "raw" / "overhead", run.mode.name == "quick")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a few minutes (default)")
    group.add_argument("--full", action="store_true", help="all concurrency levels, longer windows")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<date>[-quick])")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip: {', '.join(STEPS)}")
    args = parser.parse_args()
    mode = FULL if args.full else QUICK
    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(STEPS):
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    steps = set(STEPS) - skip
    date = time.strftime("%Y-%m-%d")
    out = args.out or ROOT / "benchmarks" / "results" / (date if mode is FULL else f"{date}-quick")
    (out / "raw").mkdir(parents=True, exist_ok=True)

    from tritonrag.settings import CONFIG_ENV

    config = write_config(out / "config.toml", mode)
    os.environ[CONFIG_ENV] = str(config)  # in-process limits read the same settings as the servers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    run = Run(mode, out, config)
    started = time.perf_counter()
    with (out / "raw" / "suite.log").open("w") as run.log_file:
        run.log(f"{mode.name} mode, results in {out}")
        machine = machine_description()
        machine["commit"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip()
        write_json(out / "machine.json", machine)
        if "limits" in steps:
            run.step("limits", lambda: run_limits(run))
        if "engine" in steps:
            run.step("engine", lambda: run_engine(run))
        run_triton_steps(run, steps)
        if "baseline" in steps and steps & {"rag", "repeat"}:
            for system, launcher_args, levels in mode.baselines:
                if "rag" not in steps and system not in mode.sweep_systems:
                    continue
                run.step(f"{system} server",
                         lambda s=system, a=launcher_args, lv=levels: run_baseline(run, s, a, lv, steps))
        if "overhead" in steps:
            run.step("overhead", lambda: run_overhead(run))
        total = time.perf_counter() - started
        import report

        summary = report.write(out, mode.name, run.results, run.failures, run.timings, run.commands, machine,
                               " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), total)
        run.log(f"done in {total / 60:.1f} min: {summary}")
    if run.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
