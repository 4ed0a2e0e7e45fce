"""Profile every model of the repository with Triton's perf_analyzer over a range of concurrencies.

- embedder, retriever, prompt_builder: over HTTP and gRPC, each with the inputs the `rag` model sends it.
- generator, rag (decoupled): over gRPC streaming only (perf_analyzer's `--streaming` is gRPC-only, and Triton's
  HTTP infer endpoint does not serve decoupled models). Their latency columns are request -> final response;
  time to first response / first text come from perf_analyzer's per-request profile export.

Each (model, protocol, concurrency) is one perf_analyzer run with its own CSV (`-f`), so a failed level costs only
itself. Quick mode (levels 1 and 8, all models in about 1-2 minutes) sends a fixed `--request-count` per level: 20
requests per slot (at least 40) to the embedder, 100 (at least 200) to retriever and prompt_builder, one (at least 2)
to generator and rag; no stability search, so its numbers are indicative. Full mode measures count windows
(`--measurement-mode count_windows`) until 3 in a row agree within `--stability-percentage` (at most `--max-trials`);
a level that never stabilises is measured once more with a fixed `--request-count` and marked unstable. Generator
and rag get one fixed window of 2 requests per slot in full mode too (generation is slow on a CPU). For
fixed-count runs, throughput comes from the profile export (first send to last response): perf_analyzer's own figure
divides by a window rounded up to whole seconds. Every command is recorded in commands.txt and the summary.

Examples:

    # start a server on free ports (TRITONRAG_CONFIG overlays apply), quick profile of all models
    .venv/bin/python benchmarks/perf_models.py --quick --out /tmp/perf-models

    # against a running server, two models, full (stable) measurement
    .venv/bin/python benchmarks/perf_models.py --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \\
        --models embedder,retriever --out benchmarks/results/perf_models

    # own server on given ports, with the faster-starting eager generator
    printf '[generator]\\nenforce_eager = true\\n' > /tmp/eager.toml
    TRITONRAG_CONFIG=/tmp/eager.toml .venv/bin/python benchmarks/perf_models.py --quick --ports 18000,18001,18002
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPOSITORY, machine_description, machine_markdown, markdown_table, percentile, write_csv, write_json
from perf_inputs import QUICK_MAX_TOKENS, build_inputs

from tritonrag.serving.contract import EMBEDDER, GENERATOR, MODEL_IO, MODELS, PROMPT_BUILDER, RAG, RERANKER, RETRIEVER

# model_transaction_policy { decoupled: true }: gRPC streaming only
DECOUPLED = tuple(model.name for model in MODEL_IO if model.decoupled)


@dataclass(frozen=True)
class Windows:
    """How one level is measured: count windows of ``requests(c)`` until stable, or (``fixed``) one run of exactly
    ``requests(c)`` requests, whose throughput comes from the profile export (perf_analyzer's own figure for a
    --request-count run divides by a window rounded up to whole seconds)."""

    min_requests: int
    per_slot: int  # requests per concurrency slot, so busier levels get bigger windows
    stability_pct: int = 0
    max_trials: int = 0
    fixed: bool = False

    def requests(self, concurrency: int) -> int:
        return max(self.min_requests, self.per_slot * concurrency)

    def args(self, concurrency: int) -> list[str]:
        if self.fixed:
            return ["--request-count", str(self.requests(concurrency))]
        return ["--measurement-mode", "count_windows", "--measurement-request-count", str(self.requests(concurrency)),
                "--stability-percentage", str(self.stability_pct), "--max-trials", str(self.max_trials)]


@dataclass(frozen=True)
class Plan:
    levels_quick: tuple[int, ...]
    levels_full: tuple[int, ...]
    quick: Windows
    full: Windows


# Quick: one fixed run per level (bounded time on a shared CPU). Full: count windows (each lasts at least ~1 s) until
# 3 in a row agree within the stability percentage.
GENERATION = Plan((1, 8), (1, 4, 8, 16), Windows(2, 1, fixed=True), Windows(4, 2, fixed=True))
PLANS: dict[str, Plan] = {
    EMBEDDER.model: Plan((1, 8), (1, 2, 4, 8, 16), Windows(40, 20, fixed=True), Windows(100, 25, 15, 8)),
    RETRIEVER.model: Plan((1, 8), (1, 2, 4, 8, 16), Windows(200, 100, fixed=True), Windows(300, 50, 15, 8)),
    PROMPT_BUILDER.model: Plan((1, 8), (1, 2, 4, 8, 16), Windows(200, 100, fixed=True), Windows(300, 50, 15, 8)),
    # A request scores a question's retrieved passages (top_k of them) in one forward pass of its bi-encoder: a few
    # requests/s on a 2-core CPU, so fixed windows as for generation.
    RERANKER.model: Plan((1, 8), (1, 4, 16), Windows(4, 2, fixed=True), Windows(16, 4, fixed=True)),
    # Generation runs ~40 tokens/s in total on a 2-core CPU: a handful of requests per level (quick: 2, or one per
    # slot); full mode sends one fixed window of 2 requests per slot (at least 4): a stability search would take
    # tens of minutes, and benchmarks/rag_load.py measures end-to-end generation more thoroughly anyway.
    GENERATOR.model: GENERATION,
    RAG.model: GENERATION,
}
GENERATOR_KEYS = ("engine", "enforce_eager", "enable_prefix_caching")  # reported: they move its numbers
UNSTABLE = "Failed to obtain stable measurement"
USEC_COLUMNS = {"p50 latency": "p50_ms", "p90 latency": "p90_ms", "p95 latency": "p95_ms", "p99 latency": "p99_ms",
                "Avg latency": "avg_ms", "Server Queue": "server_queue_ms", "Server Compute Infer": "server_infer_ms"}


@dataclass(frozen=True)
class Job:
    model: str
    protocol: str  # http | grpc | grpc-stream
    concurrency: int
    url: str
    input_data: Path
    max_tokens: int


def protocols(model: str) -> tuple[str, ...]:
    return ("grpc-stream",) if model in DECOUPLED else ("http", "grpc")


def command(binary: Path, job: Job, measurement: list[str], csv_path: Path, export_path: Path | None) -> list[str]:
    """The perf_analyzer command line for one level."""
    args = [str(binary), "-m", job.model, "-u", job.url, "-i", "grpc" if job.protocol != "http" else "http",
            "--input-data", str(job.input_data), "--concurrency-range", str(job.concurrency), *measurement,
            "--verbose-csv", "-f", str(csv_path)]
    if job.protocol == "grpc-stream":
        args.append("--streaming")
    if export_path is not None:
        args += ["--profile-export-file", str(export_path)]
    if job.model == RAG.model:
        args += ["--request-parameter", f"{RAG.max_tokens}:{job.max_tokens}:int"]
    return args


def parse_csv(path: Path) -> dict[str, Any]:
    """perf_analyzer's CSV (one row per concurrency; latencies in microseconds) as one row of ours."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    raw = rows[-1]
    out: dict[str, Any] = {"infer_per_s": float(raw["Inferences/Second"])}
    if raw.get("Response Throughput"):
        out["responses_per_s"] = float(raw["Response Throughput"])
    for column, key in USEC_COLUMNS.items():
        if raw.get(column) not in (None, ""):
            out[key] = float(raw[column]) / 1000
    return out


def parse_request_count(output: str) -> int | None:
    counts = re.findall(r"Request count: (\d+)", output)
    return int(counts[-1]) if counts else None


def read_export(path: Path) -> list[dict[str, Any]]:
    """The requests of perf_analyzer's profile export (multi-string inputs are raw bytes there: decode leniently)."""
    if not path.exists():
        return []
    data = json.loads(path.read_bytes().decode("utf-8", "replace"))
    return [r for e in data.get("experiments", []) for r in e.get("requests", []) if r.get("response_timestamps")]


def export_throughput(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests and responses per second from first send to last response."""
    if not requests:
        return {}
    wall = (max(r["response_timestamps"][-1] for r in requests) - min(r["timestamp"] for r in requests)) / 1e9
    responses = sum(len(r["response_timestamps"]) for r in requests)
    return {"infer_per_s": len(requests) / wall, "responses_per_s": responses / wall}


def streaming_latencies(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """First response (for rag: the sources), first text piece (TTFT), final response, responses per request."""
    first, first_text, last, counts = [], [], [], []
    for request in requests:
        stamps, sent = request["response_timestamps"], request["timestamp"]
        first.append((stamps[0] - sent) / 1e6)
        last.append((stamps[-1] - sent) / 1e6)
        counts.append(len(stamps))
        # the generator's and the rag model's text output have the same name
        texts = [s for s, o in zip(stamps, request.get("response_outputs") or []) if o.get(RAG.text_output)]
        first_text.append(((texts[0] if texts else stamps[-1]) - sent) / 1e6)
    if not first:
        return {}
    return {
        "first_response_p50_ms": percentile(first, 50), "ttft_p50_ms": percentile(first_text, 50),
        "ttft_p90_ms": percentile(first_text, 90), "ttft_p99_ms": percentile(first_text, 99),
        "total_p50_ms": percentile(last, 50), "responses_per_request": sum(counts) / len(counts),
    }


def run_perf_analyzer(args: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> tuple[int, str]:
    """Run one perf_analyzer command; its output goes to ``log_path``. Returns (exit code, output)."""
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code = 124
        output = f"{exc.stdout or ''}{exc.stderr or ''}\n[timed out after {timeout_s:.0f}s]"
    log_path.write_text(output)
    return code, output


class Profiler:
    """Runs the jobs and keeps the command log."""

    def __init__(self, out_dir: Path, binary: Path, env: dict[str, str], quick: bool) -> None:
        self.raw = out_dir / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.binary, self.env, self.quick = binary, env, quick
        self.timeout_s = 90.0 if quick else 1200.0  # a quick level takes seconds; a hung client costs this
        self.commands: list[str] = []

    def _run(self, job: Job, windows: Windows, name: str, export: bool = True) -> tuple[int, str, Path, Path | None]:
        """One perf_analyzer run; the profile export only where it is needed (it holds every request)."""
        csv_path, log_path = self.raw / f"{name}.csv", self.raw / f"{name}.log"
        export = export and (windows.fixed or job.protocol == "grpc-stream")
        export_path = self.raw / f"{name}.export.json" if export else None
        for stale in (csv_path, export_path):  # perf_analyzer refuses an existing export file
            if stale is not None:
                stale.unlink(missing_ok=True)
        args = command(self.binary, job, windows.args(job.concurrency), csv_path, export_path)
        self.commands.append(shlex.join(args))
        code, output = run_perf_analyzer(args, self.env, log_path, self.timeout_s)
        return code, output, csv_path, export_path

    def warm_up(self, job: Job) -> None:
        """A few requests before the first level, so no level pays for a cold model."""
        count = 1 if job.model in DECOUPLED else 10
        self._run(job, Windows(count, 0, fixed=True), f"{job.model}-{job.protocol}-warmup", export=False)

    def measure(self, job: Job) -> dict[str, Any]:
        plan = PLANS[job.model]
        windows = plan.quick if self.quick else plan.full
        name = f"{job.model}-{job.protocol}-c{job.concurrency}"
        started = time.monotonic()
        code, output, csv_path, export_path = self._run(job, windows, name)
        stable = True
        if code != 0 and UNSTABLE in output:  # one fixed run instead, marked unstable
            stable, windows = False, Windows(windows.requests(job.concurrency) * 2, 0, fixed=True)
            code, output, csv_path, export_path = self._run(job, windows, f"{name}-fixed")
        row: dict[str, Any] = {
            "model": job.model, "protocol": job.protocol, "concurrency": job.concurrency,
            "requests": parse_request_count(output), "stable": stable,
            "measurement": ("request-count" if windows.fixed else "count-windows") + ("" if stable else " (unstable)"),
        }
        if code != 0 or not csv_path.exists():
            tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
            return {**row, "error": f"exit {code}: {tail}", "seconds": round(time.monotonic() - started, 1)}
        row.update(parse_csv(csv_path))
        requests = read_export(export_path) if export_path is not None else []
        if windows.fixed:
            rates = export_throughput(requests)
            row.update(rates if job.protocol == "grpc-stream" else {"infer_per_s": rates.get("infer_per_s")})
        if job.protocol == "grpc-stream":
            row.update(streaming_latencies(requests))
        if export_path is not None:
            export_path.unlink(missing_ok=True)  # large (every input of every request), read into the row
        row["seconds"] = round(time.monotonic() - started, 1)
        return row


def perf_analyzer_version(binary: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=30)
    return (done.stdout + done.stderr).strip()


def run(out_dir: Path, http_url: str, grpc_url: str, quick: bool, models: list[str] | None = None,
        levels: tuple[int, ...] | None = None, only_protocols: tuple[str, ...] | None = None) -> list[dict]:
    """Profile ``models`` (default: all) on a running server; writes inputs/, raw/, commands.txt, perf_models.csv,
    perf_models.json and perf_models.md into ``out_dir`` and returns the rows. ``levels`` and ``only_protocols``
    replace the plans' concurrencies and narrow the protocols."""
    from tritonrag.deploy.runtime import find_perf_analyzer, perf_analyzer_env
    from tritonrag.settings import load_settings

    settings = load_settings()
    models = list(models or MODELS)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    max_tokens = QUICK_MAX_TOKENS if quick else settings.generator.max_tokens_default
    inputs = build_inputs(out_dir / "inputs", max_tokens)
    binary, env = find_perf_analyzer(), perf_analyzer_env(settings.home)
    profiler = Profiler(out_dir, binary, env, quick)
    rows = []
    for model in models:
        plan = PLANS[model]
        for protocol in protocols(model):
            if only_protocols and protocol not in only_protocols:
                continue
            url = http_url if protocol == "http" else grpc_url
            chosen = levels or (plan.levels_quick if quick else plan.levels_full)
            jobs = [Job(model, protocol, c, url, inputs[model], max_tokens) for c in chosen]
            profiler.warm_up(jobs[0])
            for job in jobs:
                rows.append(profiler.measure(job))
                print(json.dumps(rows[-1], default=str), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "mode": "quick" if quick else "full",
            "http_url": http_url, "grpc_url": grpc_url, "perf_analyzer": perf_analyzer_version(binary, env),
            "perf_analyzer_path": str(binary), "max_tokens": max_tokens, "seconds": round(time.monotonic() - started),
            "machine": machine_description(), "inputs": json.loads((out_dir / "inputs" / "inputs.json").read_text()),
            "generator": {k: getattr(settings.generator, k) for k in GENERATOR_KEYS}}
    (out_dir / "commands.txt").write_text("\n".join(profiler.commands) + "\n")
    write_csv(out_dir / "perf_models.csv", rows)
    write_json(out_dir / "perf_models.json", {"meta": meta, "rows": rows})
    (out_dir / "perf_models.md").write_text(summary_markdown(rows, meta, profiler.commands))
    return rows


def inputs_line(meta: dict[str, Any]) -> str:
    """What each model was sent, in one bullet."""
    i, max_tokens = meta["inputs"], meta["max_tokens"]
    return (f"- Inputs: the {i['questions']} questions of `common.QUESTIONS` over knowledge base {i['kb_version']} "
            f"({i['chunks']} chunks, dim {i['dimension']}). embedder: {i['embedder_texts']} texts (questions and "
            f"passages); retriever: their query vectors, top_k {i['top_k']}; prompt_builder: the retrieved passages; "
            f"generator: the `{i['template']}` prompts (~{i['prompt_chars_mean']:.0f} chars), max_tokens {max_tokens}, "
            f"temperature 0, stream true; rag: the questions, max_tokens {max_tokens} (request parameter), stream "
            "true.")


def generator_line(generator: dict[str, Any]) -> str:
    """The generator settings that move its numbers (as this process reads them; a server started elsewhere may
    differ)."""
    caching = generator["enable_prefix_caching"]
    return (f"- Generator (this process's settings): engine {generator['engine']}, enforce_eager "
            f"{str(generator['enforce_eager']).lower()}, prefix caching {'on' if caching else 'off'}"
            + (": prompts recur across levels (and rag re-sends the generator's prompts), so later runs can hit vLLM's "
               "prefix cache; `[generator] enable_prefix_caching = false` measures cold prefill." if caching else "."))


PLAIN_COLUMNS = {"model": "model", "protocol": "protocol", "concurrency": "concurrency", "requests": "requests",
                 "infer_per_s": "infer/s", "p50_ms": "p50 ms", "p90_ms": "p90 ms", "p99_ms": "p99 ms",
                 "server_queue_ms": "server queue ms", "server_infer_ms": "server infer ms",
                 "measurement": "measurement"}
STREAM_COLUMNS = {"model": "model", "concurrency": "concurrency", "requests": "requests", "infer_per_s": "answers/s",
                  "responses_per_s": "responses/s", "first_response_p50_ms": "first response p50 ms",
                  "ttft_p50_ms": "TTFT p50 ms", "ttft_p99_ms": "TTFT p99 ms", "p50_ms": "total p50 ms",
                  "p90_ms": "total p90 ms", "p99_ms": "total p99 ms", "measurement": "measurement"}


def table(rows: list[dict], columns: dict[str, str]) -> str:
    return markdown_table(rows, list(columns), list(columns.values()))


def summary_markdown(rows: list[dict], meta: dict[str, Any], commands: list[str]) -> str:
    """The report: setup, one table per kind of model (where measured), errors, and the exact commands."""
    plain = [r for r in rows if r["protocol"] != "grpc-stream" and "error" not in r]
    streamed = [r for r in rows if r["protocol"] == "grpc-stream" and "error" not in r]
    errors = [r for r in rows if "error" in r]
    parts = [
        f"# perf_analyzer profile of every model ({meta['mode']}, {meta['date']})", "",
        machine_markdown(meta["machine"]),
        f"- {meta['perf_analyzer']} ({meta['perf_analyzer_path']}); server HTTP {meta['http_url']}, "
        f"gRPC {meta['grpc_url']}; {meta['seconds']} s in all",
        inputs_line(meta),
        "- Measurement: quick mode, a fixed request count per level (no stability check; throughput from the "
        "profile export); full mode, count windows until stable, or a fixed count for levels that never stabilise "
        "and for generator and rag.",
        generator_line(meta["generator"]),
        "- One instance per model, dynamic batching on embedder and retriever; the client shares the 2 cores.",
    ]
    if plain:
        parts += ["", "## Request/response models (HTTP and gRPC)", "",
                  "Latencies are client-side, request to response; server queue/infer are Triton's averages.", "",
                  table(plain, PLAIN_COLUMNS)]
    if streamed:
        parts += ["", "## Decoupled models (gRPC streaming only)", "",
                  "perf_analyzer's `--streaming` works only over gRPC, and Triton's HTTP infer endpoint refuses "
                  "decoupled models, so generator and rag are profiled over gRPC streams only. p50/p90/p99 are request "
                  "to final response (perf_analyzer's CSV); first response (rag: the sources) and TTFT (first text "
                  "piece) come from its profile export; responses/s counts streamed pieces.", "",
                  table(streamed, STREAM_COLUMNS)]
    if errors:
        parts += ["", "## Failed levels", "", markdown_table(errors, ["model", "protocol", "concurrency", "error"])]
    parts += ["", "## Commands", "", "Run with `LD_LIBRARY_PATH` from `tritonrag.deploy.runtime.perf_analyzer_env` "
              "(the Triton wheel's libb64/libcudart under their real names).", "", "```bash", *commands, "```", ""]
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few requests per level, levels 1 and 8 (~2-3 min)")
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    parser.add_argument("--levels", help="comma-separated concurrencies, instead of each model's plan (e.g. 4,16)")
    parser.add_argument("--protocols", help="comma-separated subset of http,grpc,grpc-stream (default: each model's)")
    parser.add_argument("--http-url", help="a running server's HTTP host:port (with --grpc-url); else start one")
    parser.add_argument("--grpc-url", help="a running server's gRPC host:port (with --http-url)")
    parser.add_argument("--ports", default="0,0,0",
                        help="HTTP,gRPC,metrics ports for the server this script starts (0 = any free; default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "perf_models",
                        help="output folder (default: benchmarks/results/perf_models)")
    args = parser.parse_args(argv)
    if bool(args.http_url) != bool(args.grpc_url):
        parser.error("give both --http-url and --grpc-url, or neither (to start a server)")
    return args


def main(argv: list[str] | None = None) -> None:
    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.settings import load_settings

    args = parse_args(argv)
    models = args.models.split(",") if args.models else None
    server = None
    if not args.http_url:
        settings = load_settings()
        ports = Ports.choose(*(int(p) for p in args.ports.split(",")))
        server = TritonServer(REPOSITORY, settings.home, ports, log_file=args.out / "tritonserver.log")
        started = time.monotonic()
        print(f"starting tritonserver on {ports} (log: {server.log_file})...", flush=True)
        server.start(settings.server.startup_timeout_s)
        print(f"ready in {time.monotonic() - started:.0f}s", flush=True)
    try:
        http_url = args.http_url or server.http_url
        grpc_url = args.grpc_url or server.grpc_url
        run(args.out, http_url, grpc_url, args.quick, models,
            tuple(int(c) for c in args.levels.split(",")) if args.levels else None,
            tuple(args.protocols.split(",")) if args.protocols else None)
    finally:
        if server is not None:
            server.stop()
    print((args.out / "perf_models.md").read_text())


if __name__ == "__main__":
    main()
