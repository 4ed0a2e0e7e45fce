"""Soak benchmark: the whole service under a steady mixed load for a bounded time, with knowledge-base publishes,
watching for errors, latency drift, memory growth, leaking file descriptors and the generator's in-flight gauge.

It starts its own tritonserver on the committed model repository and (--ingress, the default) the OpenAI-compatible
ingress in front of it, both serving a COPY of the configured knowledge base in a temporary folder (so publishing
never changes yours), with the settings of --config (default $TRITONRAG_CONFIG, else the packaged defaults) plus:
[retriever] index_dir = the copy, [server] startup_timeout_s = 1200, and no per-key limits on the ingress.

Then --concurrency closed-loop workers (default 32) each send one request after another, drawn at random from a mix:

- good: `rag` streamed over gRPC (the ingress's own TritonGateway), over HTTP SSE (/v2/models/rag/generate_stream),
  not streamed (/v2/models/rag/generate), and the ingress's /v1/chat/completions streamed and not;
- cancelled: the same streams closed by the client after 2 or 3 events (HTTP SSE, gRPC, ingress SSE);
- bad: requests that must be refused with a 4xx (empty question, unknown model, malformed JSON, out-of-range
  parameters, no or a wrong API key, an empty conversation...); another status is an error.

Every --publish-every seconds (default 60) `tritonrag kb add --via TRITON` publishes a new version with one small
generated document, and the time until the retriever serves it (Triton's tritonrag_retriever_index_version) is
recorded. Every --sample-every seconds (default 10): RSS, open fds and threads of every process of Triton
(tritonserver, each triton_python_backend_stub, vLLM's engine processes) and of the ingress, and the gauges.
At the end the load stops, the in-flight requests finish, and the gauge tritonrag_generator_requests_in_flight
must read exactly 0.

Targets: 0 errors on good requests; RSS growth < 5% per process from the end of the warm-up (first 2 minutes; 30 s
in quick mode) to the end of the load; fds not growing (at most +max(8, 10%): a harness threshold, the issue gives
none); the in-flight gauge exactly 0 at the end; every publish served. Misses are printed and recorded; the exit
code is non-zero only when the harness itself fails.

Results in --out (default benchmarks/results/soak, --quick: benchmarks/results/soak/quick): report.md,
results.json, samples.csv (one row per process per sample), publishes.csv and soak.png. Logs and every request
(requests.csv) stay in the work folder printed at the end.

Examples::

    TRITONRAG_CONFIG=benchmarks/stand_in.toml .venv/bin/python benchmarks/soak.py --quick --out /tmp/soak
    .venv/bin/python benchmarks/soak.py --quick --config tests/integration/settings.toml
    .venv/bin/python benchmarks/soak.py --config tests/integration/settings.toml          # 30 minutes
    .venv/bin/python benchmarks/soak.py --minutes 10 --concurrency 16 --publish-every 30 --no-ingress
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    QUESTIONS,
    REPOSITORY,
    ROOT,
    fmt,
    machine_description,
    machine_markdown,
    markdown_table,
    percentile,
    write_csv,
    write_json,
)

from tritonrag.serving.contract import RAG

OUT = ROOT / "benchmarks" / "results" / "soak"
TARGET_GOOD_ERRORS = 0
TARGET_RSS_GROWTH_PCT = 5.0
FD_SLACK_ABS, FD_SLACK_PCT = 8, 10.0  # harness threshold for "fds not growing"
GAUGE = "tritonrag_generator_requests_in_flight"
INDEX_VERSION = "tritonrag_retriever_index_version"
RELOADS = "tritonrag_retriever_reloads_total"
INGRESS_GAUGE = "tritonrag_ingress_requests_in_flight"
PENDING = "nv_inference_pending_request_count"  # Triton's, per model: queued, not yet executing
SUCCESS = "nv_inference_request_success"  # Triton's, per model
PUBLISH_TIMEOUT_S = 180.0
INGRESS_OVERRIDES = {"max_concurrency_per_key": 0, "rate_limit_rpm": 0, "rate_limit_burst": 0}

GOOD, CANCEL, BAD = "good", "cancelled", "bad"
# kind -> (group, weight, needs the ingress)
KINDS: dict[str, tuple[str, int, bool]] = {
    "grpc_stream": (GOOD, 3, False),
    "http_sse": (GOOD, 3, False),
    "http_generate": (GOOD, 2, False),
    "ingress_stream": (GOOD, 3, True),
    "ingress_chat": (GOOD, 2, True),
    "http_sse_cancel": (CANCEL, 1, False),
    "grpc_cancel": (CANCEL, 1, False),
    "ingress_cancel": (CANCEL, 1, True),
    "bad": (BAD, 2, False),
}
# The seed demo's questions first, then the benchmarks' mix.
SOAK_QUESTIONS = list(dict.fromkeys([
    "Describe the body of water in Utah", "Tell me as much as you can about the robbery",
    "Did Phileas Fogg really rob the bank?", *QUESTIONS]))


# --------------------------------------------------------------------------------------------- pure helpers


@dataclass
class Record:
    """One request as the client saw it (seconds relative to the start of the load)."""

    kind: str
    group: str
    started_s: float
    ended_s: float
    ok: bool
    status: int = 0  # HTTP status (gRPC: the ingress's mapping of its status code); 0: none
    ttft_s: float | None = None
    events: int = 0
    variant: str = ""  # bad requests: which one
    error: str = ""

    @property
    def latency_s(self) -> float:
        return self.ended_s - self.started_s


def kinds_for(ingress: bool, only: Sequence[str] = ()) -> dict[str, tuple[str, int, bool]]:
    """The mix: every kind (those of the ingress only with it), or only the kinds named in ``only``."""
    unknown = sorted(set(only) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown request kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    kinds = {k: v for k, v in KINDS.items() if (ingress or not v[2]) and (not only or k in only)}
    if not kinds:
        raise ValueError("no request kind left in the mix (the ingress's kinds need --ingress)")
    return kinds


def pick_kind(rng: random.Random, kinds: dict[str, tuple[str, int, bool]]) -> str:
    names = list(kinds)
    return rng.choices(names, weights=[kinds[k][1] for k in names])[0]


def _ms(seconds: Sequence[float], q: float) -> float:
    return percentile(seconds, q) * 1000


def per_kind(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Per request kind: requests, ok, errors, latency and TTFT percentiles (of the ok ones), statuses seen, and
    the first error's text."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.kind].append(r)
    order = {k: i for i, k in enumerate(KINDS)}
    rows = []
    for kind in sorted(groups, key=lambda k: order.get(k, 99)):
        rs = groups[kind]
        ok = [r for r in rs if r.ok]
        bad = [r for r in rs if not r.ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        statuses = Counter(r.status for r in rs)
        rows.append({
            "kind": kind, "group": rs[0].group, "requests": len(rs), "ok": len(ok), "errors": len(bad),
            "latency_p50_ms": _ms([r.latency_s for r in ok], 50), "latency_p99_ms": _ms([r.latency_s for r in ok], 99),
            "ttft_p50_ms": _ms(ttft, 50), "ttft_p99_ms": _ms(ttft, 99),
            "statuses": ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())),
            "first_error": one_line(bad[0].error, 200) if bad else "",
        })
    return rows


def error_counts(records: Iterable[Record]) -> dict[str, int]:
    """Errors per group (good, cancelled, bad)."""
    counts = {GOOD: 0, CANCEL: 0, BAD: 0}
    for r in records:
        if not r.ok:
            counts[r.group] = counts.get(r.group, 0) + 1
    return counts


def per_bucket(records: Iterable[Record], bucket_s: float, end_s: float | None = None) -> list[dict[str, Any]]:
    """Good requests by the bucket (of ``bucket_s`` seconds) they ended in: count, errors, latency and TTFT p50/p99
    of the ok ones, and the cancelled and bad requests of the bucket."""
    buckets: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        buckets[int(r.ended_s // bucket_s)].append(r)
    last = int(end_s // bucket_s) if end_s is not None else max(buckets, default=-1)
    rows = []
    for b in range(0, max(last, max(buckets, default=-1)) + 1):
        rs = buckets.get(b, [])
        good = [r for r in rs if r.group == GOOD]
        ok = [r for r in good if r.ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        rows.append({
            "bucket": b, "start_s": b * bucket_s, "end_s": (b + 1) * bucket_s, "good": len(good),
            "good_errors": len(good) - len(ok), "cancelled": sum(r.group == CANCEL for r in rs),
            "bad": sum(r.group == BAD for r in rs), "other_errors": sum(not r.ok for r in rs if r.group != GOOD),
            "req_per_s": len(ok) / bucket_s,
            "p50_ms": _ms([r.latency_s for r in ok], 50), "p99_ms": _ms([r.latency_s for r in ok], 99),
            "ttft_p50_ms": _ms(ttft, 50), "ttft_p99_ms": _ms(ttft, 99),
        })
    return rows


def one_line(text: str, limit: int = 300) -> str:
    """Text for a table cell: one line, no pipes, at most ``limit`` characters (the end kept: errors end there)."""
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else "..." + text[-limit:]


def gauge_text(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def growth_pct(start: float | None, end: float | None) -> float | None:
    if start is None or end is None or start <= 0:
        return None
    return (end - start) / start * 100


def fd_growth_ok(start: int | None, end: int | None) -> bool:
    if start is None or end is None:
        return False
    return end - start <= max(FD_SLACK_ABS, start * FD_SLACK_PCT / 100)


def process_rows(samples: Sequence[dict[str, Any]], warmup_s: float, load_end_s: float) -> list[dict[str, Any]]:
    """Per process (group, label, pid): RSS and fds at the first sample after the warm-up and at the last sample
    of the load, growth, RSS after the drain (the very last sample), and the verdicts. A process first seen after
    the warm-up (a restart?) or gone before the end is flagged."""
    by_process: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_process[(s["group"], s["label"], int(s["pid"]))].append(s)
    rows = []
    last_load = max((s["t_s"] for s in samples if s["t_s"] <= load_end_s), default=None)
    for (group, label, pid), series in by_process.items():
        series.sort(key=lambda s: s["t_s"])
        start = next((s for s in series if s["t_s"] >= warmup_s), None)
        end = next((s for s in reversed(series) if s["t_s"] <= load_end_s), None)
        notes = []
        if series[0]["t_s"] >= warmup_s and series[0]["t_s"] > min(x["t_s"] for x in samples):
            notes.append(f"first seen at {series[0]['t_s']:.0f} s")
        if last_load is not None and (end is None or end["t_s"] < last_load):
            notes.append("gone before the end of the load")
        rss_growth = growth_pct(start and start["rss_mib"], end and end["rss_mib"])
        row = {
            "group": group, "label": label, "pid": pid,
            "rss_start_mib": start["rss_mib"] if start else None, "rss_end_mib": end["rss_mib"] if end else None,
            "rss_growth_pct": rss_growth, "rss_after_drain_mib": series[-1]["rss_mib"],
            "anon_growth_mib": (end["anon_mib"] - start["anon_mib"]) if start and end and "anon_mib" in start
            and "anon_mib" in end else None,
            "shmem_growth_mib": (end["shmem_mib"] - start["shmem_mib"]) if start and end and "shmem_mib" in start
            and "shmem_mib" in end else None,
            "rss_max_mib": max(s["rss_mib"] for s in series),
            "fds_start": start["fds"] if start else None, "fds_end": end["fds"] if end else None,
            "fds_after_drain": series[-1]["fds"], "deleted_open_end": series[-1].get("deleted_open"),
            "threads_start": start["threads"] if start else None, "threads_end": end["threads"] if end else None,
            "notes": "; ".join(notes),
        }
        row["rss_verdict"] = ("met" if rss_growth is not None and rss_growth < TARGET_RSS_GROWTH_PCT
                              else "not measured" if rss_growth is None else "MISSED")
        row["fds_verdict"] = "met" if fd_growth_ok(row["fds_start"], row["fds_end"]) else (
            "not measured" if row["fds_start"] is None or row["fds_end"] is None else "MISSED")
        rows.append(row)
    order = {"triton": 0, "ingress": 1, "client": 2}
    rows.sort(key=lambda r: (order.get(r["group"], 9), r["label"] not in ("tritonserver", "ingress"), r["label"],
                             r["pid"]))  # the root process of each group first
    return rows


def gauge_verdict(value: float | None) -> str:
    if value is None:
        return "not measured"
    return "met" if value == 0 else "MISSED"


def targets(records: Sequence[Record], processes: Sequence[dict[str, Any]], gauge_end: float | None,
            publishes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The soak's targets, each with the measured value and its verdict."""
    errors = error_counts(records)
    good = sum(r.group == GOOD for r in records)
    measured = [p for p in processes if p["group"] != "client"]
    rss = [p for p in measured if p["rss_growth_pct"] is not None]
    worst = max(rss, key=lambda p: p["rss_growth_pct"], default=None)
    fd_missed = [p for p in measured if p["fds_verdict"] == "MISSED"]
    fd_worst = max((p for p in measured if p["fds_start"] is not None and p["fds_end"] is not None),
                   key=lambda p: p["fds_end"] - p["fds_start"], default=None)
    served = [p for p in publishes if p.get("swap_delay_s") is not None]
    published = [p for p in publishes if p.get("rc") == 0]
    rows = [
        {"target": "errors on good requests = 0", "measured": f"{errors[GOOD]} of {good}",
         "verdict": "met" if good and errors[GOOD] <= TARGET_GOOD_ERRORS else ("not measured" if not good
                                                                               else "MISSED")},
        {"target": "errors on client-cancelled requests (before the cancel) = 0",
         "measured": f"{errors[CANCEL]} of {sum(r.group == CANCEL for r in records)}",
         "verdict": "met" if errors[CANCEL] == 0 else "MISSED"},
        {"target": "bad requests all refused with a 4xx",
         "measured": f"{errors[BAD]} unexpected of {sum(r.group == BAD for r in records)}",
         "verdict": "met" if errors[BAD] == 0 else "MISSED"},
        {"target": f"RSS growth after warm-up < {TARGET_RSS_GROWTH_PCT:g}% for every process",
         "measured": (f"worst {worst['label']} (pid {worst['pid']}): {worst['rss_growth_pct']:+.1f}%" if worst
                      else "–"),
         "verdict": ("not measured" if not rss else
                     "met" if all(p["rss_verdict"] == "met" for p in rss) and len(rss) == len(measured)
                     else "MISSED")},
        {"target": f"open fds not growing (end - start <= max({FD_SLACK_ABS}, {FD_SLACK_PCT:g}%)) for every process",
         "measured": (f"worst {fd_worst['label']}: {fd_worst['fds_start']} -> {fd_worst['fds_end']}" if fd_worst
                      else "–"),
         "verdict": "not measured" if fd_worst is None else ("met" if not fd_missed else "MISSED")},
        {"target": f"{GAUGE} exactly 0 at the end", "measured": gauge_text(gauge_end),
         "verdict": gauge_verdict(gauge_end)},
        {"target": "every publish served by the retriever",
         "measured": f"{len(served)} of {len(publishes)} served ({len(published)} published)",
         "verdict": ("not measured" if not publishes else
                     "met" if len(served) == len(publishes) else "MISSED")},
    ]
    return rows


def parse_metric(text: str, name: str, how: str = "sum") -> float | None:
    """The value of a Prometheus metric in exposition text, summed (or max) over its label sets; None if absent."""
    values = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest and rest[0] not in "{ ":
            continue  # another metric whose name starts with this one
        try:
            values.append(float(line.rsplit(None, 1)[-1]))
        except ValueError:
            continue
    if not values:
        return None
    return max(values) if how == "max" else sum(values)


def per_model(text: str, name: str) -> dict[str, float]:
    """A Triton metric per model (label ``model``), from exposition text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and 'model="' in line:
            model = line.split('model="', 1)[1].split('"', 1)[0]
            with contextlib.suppress(ValueError):
                out[model] = out.get(model, 0.0) + float(line.rsplit(None, 1)[-1])
    return out


def process_label(name: str, cmdline: Sequence[str], parent_label: str | None = None) -> str:
    """A readable, stable name of one process of the server or the ingress: tritonserver, stub:<model>,
    <parent>/<name> for what a stub starts (vLLM's engine), ingress ..."""
    args = list(cmdline)
    joined = " ".join(args)
    if name == "tritonserver" or (args and Path(args[0]).name == "tritonserver"):
        return "tritonserver"
    if "triton_python_backend_stub" in joined or name.startswith("triton_python"):
        for arg in args[1:]:
            parts = Path(arg).parts
            if arg.endswith("model.py") and len(parts) >= 3:
                return f"stub:{parts[-3]}"
        return "stub:?"
    if "tritonrag.cli" in joined and "ingress" in args:
        return "ingress"
    title = name or (Path(args[0]).name if args else "?")
    if args and ("VLLM" in args[0] or "EngineCore" in args[0]):
        title = args[0].split()[0]
    elif "multiprocessing" in joined:
        title = "python-mp" + ("-resource_tracker" if "resource_tracker" in joined else "")
    return f"{parent_label}/{title}" if parent_label else title


def toml_text(data: dict[str, Any], header: str) -> str:
    """Settings as TOML: top-level scalars first, then one table per section (nested tables dotted)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = [f"# {header}"]
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, v in data.items():
        if isinstance(v, dict):
            tables.append((key, v))
        else:
            lines.append(f"{key} = {value(v)}")
    while tables:
        name, table = tables.pop(0)
        lines.append(f"\n[{name}]")
        for key, v in table.items():
            if isinstance(v, dict):
                tables.append((f"{name}.{key}", v))
            else:
                lines.append(f"{key} = {value(v)}")
    return "\n".join(lines) + "\n"


def overlay(base: Path | None, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The settings of ``base`` (a TOML file, or none) with ``overrides`` on top, section by section."""
    merged: dict[str, Any] = tomllib.loads(base.read_text()) if base else {}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


def soak_document(n: int, rng: random.Random) -> str:
    """The n-th generated document: a few sentences that no question of the mix is about."""
    words = ["lighthouse", "keeper", "harbour", "ledger", "compass", "lantern", "schooner", "tide", "barometer",
             "cargo", "quay", "signal"]
    sentences = [f"Soak note {n}: the {rng.choice(words)} of entry {n} records the {rng.choice(words)} and the "
                 f"{rng.choice(words)} seen at {rng.randint(1, 12)} o'clock." for _ in range(4)]
    return f"# Soak document {n}\n\n" + " ".join(sentences) + "\n"


# --------------------------------------------------------------------------------------------- requests


class Clients:
    """The three ways in: Triton's HTTP (aiohttp), Triton's gRPC (the ingress's TritonGateway), the ingress."""

    def __init__(self, http_url: str, grpc_url: str, ingress_url: str | None, key: str, concurrency: int,
                 max_tokens: int, timeout_s: float) -> None:
        import aiohttp

        from tritonrag.ingress.gateway import TritonGateway

        self.aiohttp = aiohttp
        self.base = f"http://{http_url}"
        self.ingress_url = ingress_url
        self.key = key
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2),
                                          timeout=timeout)
        # idle connections dropped before uvicorn's keep-alive timeout (5 s) closes them under a request
        self.ingress = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency * 2, keepalive_timeout=2.0), timeout=timeout)
        self.gateway = TritonGateway(grpc_url, timeout_s)
        self.bad_counter = 0

    async def close(self) -> None:
        await self.http.close()
        await self.ingress.close()
        await self.gateway.close()

    def _auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key if key is None else key}"}

    # ---- Triton HTTP

    def _rag_body(self, question: str, stream: bool) -> dict[str, Any]:
        return {RAG.text_input: question, RAG.stream: stream, "parameters": {RAG.max_tokens: self.max_tokens}}

    async def http_sse(self, record: Record, question: str, cancel_after: int = 0) -> None:
        """/generate_stream: events until the stream ends (finish_reason seen), or ``cancel_after`` events."""
        t0 = time.perf_counter()
        async with self.http.post(f"{self.base}/v2/models/{RAG.model}/generate_stream",
                                  json=self._rag_body(question, True),
                                  headers={"Accept": "text/event-stream"}) as response:
            record.status = response.status
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            finished = False
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = json.loads(line[5:])
                if "error" in payload:
                    record.error = f"error event: {str(payload['error'])[:200]}"
                    return
                record.events += 1
                text = payload.get(RAG.text_output)
                if text and record.ttft_s is None:
                    record.ttft_s = time.perf_counter() - t0
                if payload.get(RAG.finish_reason):
                    finished = True
                if cancel_after and record.events >= cancel_after:
                    response.close()  # the client goes away mid-stream
                    record.ok = True
                    return
            if not finished:
                record.error = f"the stream ended after {record.events} events without a finish_reason"
                return
        record.ok = True

    async def http_generate(self, record: Record, question: str) -> None:
        async with self.http.post(f"{self.base}/v2/models/{RAG.model}/generate",
                                  json=self._rag_body(question, False)) as response:
            record.status = response.status
            body = await response.text()
            if response.status != 200:
                record.error = f"HTTP {response.status}: {body[:200]}"
                return
            payload = json.loads(body)
            if RAG.text_output not in payload or not payload.get(RAG.finish_reason):
                record.error = f"no {RAG.text_output} or {RAG.finish_reason}: {body[:200]}"
                return
            record.events = 1
        record.ok = True

    # ---- Triton gRPC

    async def grpc_stream(self, record: Record, question: str, cancel_after: int = 0) -> None:
        from tritonrag.ingress.errors import ApiError
        from tritonrag.ingress.translate import RagCall

        t0 = time.perf_counter()
        call = RagCall(question, [], True, {RAG.max_tokens: self.max_tokens})
        try:
            async with contextlib.aclosing(self.gateway.rag(call)) as parts:
                async for part in parts:
                    record.events += 1
                    if part.text and record.ttft_s is None:
                        record.ttft_s = time.perf_counter() - t0
                    if cancel_after and record.events >= cancel_after:
                        break  # aclosing cancels the gRPC stream
                    if part.final:
                        if not part.finish_reason:
                            record.error = "final response without a finish_reason"
                            return
                        break
                else:
                    record.error = f"the stream ended after {record.events} responses without a final one"
                    return
        except ApiError as exc:
            record.status = exc.status
            record.error = f"gRPC -> {exc.status}: {str(exc)[:200]}"
            return
        record.status = 200
        record.ok = True

    # ---- the ingress

    def _chat(self, question: str, stream: bool, **extra: Any) -> dict[str, Any]:
        return {"model": "rag", "messages": [{"role": "user", "content": question}], "stream": stream,
                "max_tokens": self.max_tokens, **extra}

    async def ingress_stream(self, record: Record, question: str, cancel_after: int = 0) -> None:
        t0 = time.perf_counter()
        async with self.ingress.post(f"{self.ingress_url}/v1/chat/completions", json=self._chat(question, True),
                                     headers=self._auth()) as response:
            record.status = response.status
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            done = False
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    record.error = f"error event: {str(chunk['error'])[:200]}"
                    return
                record.events += 1
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content") and record.ttft_s is None:
                    record.ttft_s = time.perf_counter() - t0
                if cancel_after and record.events >= cancel_after:
                    response.close()
                    record.ok = True
                    return
            if not done:
                record.error = f"the stream ended after {record.events} events without [DONE]"
                return
        record.ok = True

    async def ingress_chat(self, record: Record, question: str) -> None:
        async with self.ingress.post(f"{self.ingress_url}/v1/chat/completions", json=self._chat(question, False),
                                     headers=self._auth()) as response:
            record.status = response.status
            body = await response.text()
            if response.status != 200:
                record.error = f"HTTP {response.status}: {body[:200]}"
                return
            payload = json.loads(body)
            choices = payload.get("choices") or []
            if not choices or not choices[0].get("finish_reason"):
                record.error = f"no choice with a finish_reason: {body[:200]}"
                return
            record.events = 1
        record.ok = True

    # ---- bad requests

    def bad_variants(self) -> list[tuple[str, Callable[[], Any]]]:
        """(name, coroutine function returning the status) of each bad request; each must get a 4xx."""
        rag = f"{self.base}/v2/models/{RAG.model}/generate"
        variants: list[tuple[str, Callable[[], Any]]] = [
            ("http empty question", lambda: self._post_status(self.http, rag, json={RAG.text_input: ""})),
            ("http unknown model", lambda: self._post_status(
                self.http, f"{self.base}/v2/models/no_such_model/generate", json={RAG.text_input: "hi"})),
            # not sent: Triton 2.51 answers a malformed JSON body with 500 (its own parser, before any model)
            ("http max_tokens -3", lambda: self._post_status(
                self.http, rag, json={RAG.text_input: "Who is Aouda?", "parameters": {RAG.max_tokens: -3}})),
            ("http top_k 100000", lambda: self._post_status(
                self.http, rag, json={RAG.text_input: "Who is Aouda?", "parameters": {RAG.top_k: 100000}})),
            ("grpc empty question", self._grpc_bad),
        ]
        if self.ingress_url:
            chat = f"{self.ingress_url}/v1/chat/completions"
            variants += [
                ("ingress no API key", lambda: self._post_status(self.ingress, chat, json=self._chat("hi", False))),
                ("ingress wrong API key", lambda: self._post_status(
                    self.ingress, chat, json=self._chat("hi", False), headers=self._auth("soak-wrong-key"))),
                ("ingress empty messages", lambda: self._post_status(
                    self.ingress, chat, json={"model": "rag", "messages": []}, headers=self._auth())),
                ("ingress unknown model", lambda: self._post_status(
                    self.ingress, chat, json={**self._chat("hi", False), "model": "no-such-model"},
                    headers=self._auth())),
                ("ingress max_tokens too large", lambda: self._post_status(
                    self.ingress, chat, json=self._chat("Who is Aouda?", True, max_tokens=10**9),
                    headers=self._auth())),
            ]
        return variants

    async def _post_status(self, session: Any, url: str, **kwargs: Any) -> tuple[int, str]:
        async with session.post(url, **kwargs) as response:
            return response.status, (await response.text())[:200]

    async def _grpc_bad(self) -> tuple[int, str]:
        from tritonrag.ingress.errors import ApiError
        from tritonrag.ingress.translate import RagCall

        try:
            async with contextlib.aclosing(self.gateway.rag(RagCall("", [], True, {}))) as parts:
                async for _ in parts:
                    pass
        except ApiError as exc:
            return exc.status, str(exc)[:200]
        return 200, "accepted"

    async def bad(self, record: Record) -> None:
        variants = self.bad_variants()
        name, call = variants[self.bad_counter % len(variants)]
        self.bad_counter += 1
        record.variant = name
        record.status, text = await call()
        record.events = 1
        record.ok = 400 <= record.status < 500
        if not record.ok:
            record.error = f"{name}: expected a 4xx, got {record.status}: {text}"


async def run_request(clients: Clients, kind: str, question: str, rng: random.Random, t0: float) -> Record:
    group = KINDS[kind][0]
    record = Record(kind, group, time.perf_counter() - t0, 0.0, False)
    cancel_after = rng.choice((2, 3))
    calls = {
        "grpc_stream": lambda: clients.grpc_stream(record, question),
        "http_sse": lambda: clients.http_sse(record, question),
        "http_generate": lambda: clients.http_generate(record, question),
        "ingress_stream": lambda: clients.ingress_stream(record, question),
        "ingress_chat": lambda: clients.ingress_chat(record, question),
        "http_sse_cancel": lambda: clients.http_sse(record, question, cancel_after),
        "grpc_cancel": lambda: clients.grpc_stream(record, question, cancel_after),
        "ingress_cancel": lambda: clients.ingress_stream(record, question, cancel_after),
        "bad": lambda: clients.bad(record),
    }
    try:
        await asyncio.wait_for(calls[kind](), clients.timeout_s)
    except TimeoutError:
        record.ok, record.error = False, f"no answer in {clients.timeout_s:.0f} s"
    except Exception as exc:  # a broken connection, a malformed event...: an error of this request
        record.ok, record.error = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    record.ended_s = time.perf_counter() - t0
    return record


# --------------------------------------------------------------------------------------------- processes, metrics


def sample_processes(roots: dict[str, int]) -> list[dict[str, Any]]:
    """RSS (MiB), open fds, fds on deleted files and threads of every process under each root (psutil)."""
    import psutil

    rows = []
    for group, pid in roots.items():
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)] if group != "client" else [root]
        except psutil.Error:
            continue
        labels: dict[int, str] = {}
        for process in tree:
            try:
                with process.oneshot():
                    parent = labels.get(process.ppid())
                    label = process_label(process.name(), process.cmdline(), parent if process.pid != pid else None)
                    if group == "client":
                        label = "soak client (this script)"
                    labels[process.pid] = label
                    rss = process.memory_info().rss / 2**20
                    fds = process.num_fds()
                    threads = process.num_threads()
                deleted = _deleted_open(process.pid)
            except psutil.Error:
                continue
            rows.append({"group": group, "label": label, "pid": process.pid, "rss_mib": round(rss, 2), "fds": fds,
                         "deleted_open": deleted, "threads": threads, **rss_parts(process.pid)})
    return rows


def rss_parts(pid: int) -> dict[str, float]:
    """RSS split as the kernel counts it (/proc/PID/status, MiB): anonymous memory (the heap: what a leak grows),
    file pages (code, mapped files) and shared memory (Triton's Python-backend shm regions, touched pages)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                out[f"{key.removeprefix('Rss').lower()}_mib"] = round(int(value.split()[0]) / 1024, 2)
    return out


def _deleted_open(pid: int) -> int:
    """Open fds of ``pid`` on files that were deleted (an old knowledge base version kept open, for one)."""
    count = 0
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(fd.path).endswith(" (deleted)"):
                    count += 1
            except OSError:
                continue
    except OSError:
        return 0
    return count


def deleted_files(pid: int) -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.endswith(" (deleted)"):
                    out.append(target)
    return sorted(out)


# --------------------------------------------------------------------------------------------- the run


@dataclass
class Settings:
    minutes: float
    concurrency: int
    config: str | None
    publish_every_s: float
    sample_every_s: float
    warmup_s: float
    bucket_s: float
    max_tokens: int
    ingress: bool
    timeout_s: float
    seed: int
    drain_s: float
    kinds: tuple[str, ...] = ()  # only these request kinds (default: the whole mix)


@dataclass
class State:
    records: list[Record] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    gauges: list[dict[str, Any]] = field(default_factory=list)
    publishes: list[dict[str, Any]] = field(default_factory=list)
    stop: bool = False


class Soak:
    def __init__(self, settings: Settings, work: Path, log: Callable[[str], None]) -> None:
        self.s = settings
        self.work = work
        self.log = log
        self.state = State()
        self.triton: Any = None
        self.ingress: Any = None
        self.key = "soak-" + secrets.token_hex(16)
        self.rng = random.Random(settings.seed)
        self.t0 = 0.0
        self.startup_s: dict[str, float] = {}
        self.kb = work / "kb"
        self.config_path = work / "soak.toml"
        self.retriever_stats: dict[str, Any] = {}
        self.gauge_end: float | None = None
        self.gauge_zero_after_s: float | None = None
        self.load_end_s = 0.0
        self.kb_origin = ""
        self.via = True
        self.deleted: dict[str, list[str]] = {}

    # ---- setup

    def prepare(self) -> Any:
        from tritonrag.kb.search import is_current
        from tritonrag.settings import CONFIG_ENV, load_settings

        base = Path(self.s.config) if self.s.config else None
        source = load_settings(str(base) if base else None)
        data = overlay(base, {"retriever": {"index_dir": str(self.kb)}, "server": {"startup_timeout_s": 1200},
                              "ingress": dict(INGRESS_OVERRIDES)})
        chunking = source.chunking
        if is_current(source.index_dir, source.embedder.model, chunking.chunk_tokens, chunking.overlap_tokens):
            shutil.copytree(source.index_dir, self.kb, symlinks=True,
                            ignore=shutil.ignore_patterns("*.lock", "build-*", ".build*"))
            self.kb_origin = f"a copy of {source.index_dir}"
        else:  # e.g. the stand-in embedder: the sample book, embedded with the served settings
            self.kb_origin = f"the sample book ingested with [embedder] model = {source.embedder.model!r}"
        self.config_path.write_text(toml_text(data, f"benchmarks/soak.py: {base or 'defaults'} with "
                                                    f"{self.kb_origin} in {self.kb}"))
        if not self.kb.exists():
            self.log(f"{source.index_dir} was not built with these settings: ingesting the sample book")
            import subprocess

            subprocess.run([str(Path(sys.executable).with_name("tritonrag")), "ingest", "--sample", "--index-dir",
                            str(self.kb)], check=True, capture_output=True,
                           env={**os.environ, CONFIG_ENV: str(self.config_path)})
        settings = load_settings(str(self.config_path))
        # kb add --via embeds through Triton's embedder (no model loaded per publish); the stand-in has no
        # tokenizer to chunk with remotely, and costs nothing in process
        self.via = not settings.embedder.model.startswith("stand-in")
        self.log(f"knowledge base: {self.kb_origin} in {self.kb}; settings {self.config_path}")
        return settings

    def start(self) -> Any:
        from tritonrag.deploy.ingress_process import IngressProcess
        from tritonrag.deploy.server import Ports, TritonServer
        from tritonrag.settings import CONFIG_ENV

        settings = self.prepare()
        env = {CONFIG_ENV: str(self.config_path)}
        self.triton = TritonServer(REPOSITORY, settings.home, Ports.choose(0, 0, 0), self.work / "tritonserver.log",
                                   env=env)
        started = time.perf_counter()
        self.log(f"starting tritonserver (log {self.triton.log_file})")
        self.triton.start(settings.server.startup_timeout_s)
        self.startup_s["triton"] = time.perf_counter() - started
        self.log(f"Triton ready in {self.startup_s['triton']:.0f} s: HTTP {self.triton.http_url}, "
                 f"gRPC {self.triton.grpc_url}, metrics {self.triton.metrics_url}")
        if self.s.ingress:
            started = time.perf_counter()
            self.ingress = IngressProcess(self.triton.grpc_url, Ports.choose(0, 0, 0).http, settings.home,
                                          env={**env, "TRITONRAG_API_KEYS": f"soak:{self.key}"},
                                          log_file=self.work / "ingress.log")
            self.ingress.start(120)
            self.startup_s["ingress"] = time.perf_counter() - started
            self.log(f"ingress ready at {self.ingress.url}")
        return settings

    def stop(self) -> None:
        if self.ingress is not None:
            self.ingress.stop()
        if self.triton is not None:
            self.triton.stop()

    def roots(self) -> dict[str, int]:
        roots = {"triton": self.triton.process.pid, "client": os.getpid()}
        if self.ingress is not None:
            roots["ingress"] = self.ingress.process.pid
        return roots

    # ---- metrics

    async def scrape(self, session: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with session.get(self.triton.metrics_url) as response:
            text = await response.text()
        out["in_flight"] = parse_metric(text, GAUGE)
        out["index_version"] = parse_metric(text, INDEX_VERSION, "max")
        out["reloads"] = parse_metric(text, RELOADS, "max")
        out["pending"] = per_model(text, PENDING)
        out["success"] = per_model(text, SUCCESS)
        if self.ingress is not None:
            with contextlib.suppress(Exception):
                async with session.get(f"{self.ingress.url}/metrics") as response:
                    out["ingress_in_flight"] = parse_metric(await response.text(), INGRESS_GAUGE)
        return out

    async def sampler(self, session: Any) -> None:
        while not self.state.stop:
            await self.sample(session)
            await self._sleep(self.s.sample_every_s)

    async def sample(self, session: Any, phase: str = "load") -> dict[str, Any]:
        t = time.perf_counter() - self.t0
        try:
            gauges = await self.scrape(session)
        except Exception as exc:
            gauges = {"scrape_error": f"{type(exc).__name__}: {exc}"}
        rows = await asyncio.to_thread(sample_processes, self.roots())
        done = len(self.state.records)
        self.state.gauges.append({"t_s": round(t, 2), "phase": phase, "requests_done": done, **gauges})
        for row in rows:
            self.state.samples.append({"t_s": round(t, 2), "phase": phase, **row,
                                       "in_flight_gauge": gauges.get("in_flight"),
                                       "index_version": gauges.get("index_version")})
        return gauges

    async def _sleep(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while not self.state.stop and time.perf_counter() < end:
            await asyncio.sleep(min(0.5, end - time.perf_counter()))

    # ---- knowledge base publishes

    async def publisher(self, session: Any) -> None:
        docs = self.work / "docs"
        docs.mkdir(exist_ok=True)
        n = 0
        while True:
            # on a fixed grid (every publish_every_s since the start); a publish that ran over starts the next
            await self._sleep(self.t0 + (n + 1) * self.s.publish_every_s - time.perf_counter())
            if self.state.stop:
                return
            n += 1
            await self.publish(session, n, docs)

    async def publish(self, session: Any, n: int, docs: Path) -> None:
        from tritonrag.kb.versions import published_version, version_number
        from tritonrag.settings import CONFIG_ENV

        path = docs / f"soak-{n:04d}.md"
        path.write_text(soak_document(n, self.rng))
        row: dict[str, Any] = {"n": n, "started_s": round(time.perf_counter() - self.t0, 2),
                               "before": published_version(self.kb)}
        command = [str(Path(sys.executable).with_name("tritonrag")), "kb", "add", str(path), "--index-dir",
                   str(self.kb), *(["--via", self.triton.grpc_url] if self.via else [])]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, CONFIG_ENV: str(self.config_path)})
        try:
            output, _ = await asyncio.wait_for(process.communicate(), PUBLISH_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            output, _ = await process.communicate()
            output += f"\n(killed after {PUBLISH_TIMEOUT_S:.0f} s)".encode()
        row["rc"] = process.returncode
        row["published_s"] = round(time.perf_counter() - self.t0, 2)
        row["add_s"] = round(row["published_s"] - row["started_s"], 2)
        version = published_version(self.kb)
        row["version"] = version
        if process.returncode != 0 or version == row["before"]:
            row["error"] = one_line(output.decode(errors="replace"))[-400:]
            self.log(f"publish {n} failed (rc {process.returncode}): {row['error'][-200:]}")
            self.state.publishes.append(row)
            return
        wanted = version_number(version)
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            try:
                served = (await self.scrape(session)).get("index_version")
            except Exception:
                served = None
            if served is not None and served >= wanted:
                row["swap_s"] = round(time.perf_counter() - self.t0, 2)
                row["swap_delay_s"] = round(row["swap_s"] - row["published_s"], 2)
                break
            await asyncio.sleep(0.25)
        else:
            row["error"] = f"the retriever did not serve {version} within 60 s"
        self.state.publishes.append(row)
        self.log(f"publish {n}: {version} in {row['add_s']:.1f} s, served after {row.get('swap_delay_s', '?')} s")

    # ---- load

    async def worker(self, clients: Clients, index: int, kinds: dict[str, tuple[str, int, bool]],
                     deadline: float, progress: Callable[[], None]) -> None:
        rng = random.Random(self.s.seed * 1000 + index)
        await asyncio.sleep(index * 0.05)  # the first requests spread a little
        i = index
        while time.perf_counter() < deadline:
            kind = pick_kind(rng, kinds)
            question = SOAK_QUESTIONS[i % len(SOAK_QUESTIONS)]
            i += 1
            record = await run_request(clients, kind, question, rng, self.t0)
            self.state.records.append(record)
            if not record.ok and len([r for r in self.state.records if not r.ok]) <= 10:
                self.log(f"error ({kind}{', ' + record.variant if record.variant else ''}): {record.error}")
            progress()

    async def run(self) -> None:
        import aiohttp
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        kinds = kinds_for(self.s.ingress, self.s.kinds)
        clients = Clients(self.triton.http_url, self.triton.grpc_url, self.ingress.url if self.ingress else None,
                          self.key, self.s.concurrency, self.s.max_tokens, self.s.timeout_s)
        duration = self.s.minutes * 60
        metrics = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.t0 = time.perf_counter()
        deadline = self.t0 + duration
        columns = (TextColumn("[bold]soak"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn(), TextColumn("/"), TimeRemainingColumn(), TextColumn("{task.description}"))
        try:
            with Progress(*columns, transient=False) as bar:
                task = bar.add_task("", total=duration)

                def progress() -> None:
                    errors = error_counts(self.state.records)
                    gauge = self.state.gauges[-1].get("in_flight") if self.state.gauges else None
                    bar.update(task, completed=min(duration, time.perf_counter() - self.t0),
                               description=f"{len(self.state.records)} requests, good errors {errors[GOOD]}, "
                                           f"publishes {len(self.state.publishes)}, in flight {gauge_text(gauge)}")

                async def ticker() -> None:
                    minute = 0
                    while not self.state.stop:
                        progress()
                        await asyncio.sleep(1)
                        now = time.perf_counter() - self.t0
                        if now // 60 > minute:
                            minute = int(now // 60)
                            with contextlib.suppress(Exception):  # a log line must not end the run
                                minute_log(minute, now)

                def minute_log(minute: int, now: float) -> None:
                    rows = per_bucket(self.state.records, 60, now)
                    row = rows[minute - 1] if len(rows) >= minute else {}
                    gauges = self.state.gauges[-1] if self.state.gauges else {}
                    pending = gauges.get("pending") or {}
                    self.log(f"minute {minute}: {row.get('good', 0)} good ({row.get('good_errors', 0)} errors), "
                             f"p50 {fmt(row.get('p50_ms'))} ms, p99 {fmt(row.get('p99_ms'))} ms; "
                             f"{len(self.state.records)} requests so far; in flight "
                             f"{gauge_text(gauges.get('in_flight'))}, Triton's pending: "
                             + (", ".join(f"{k} {v:g}" for k, v in pending.items() if v) or "none"))

                background = [asyncio.create_task(self.sampler(metrics)), asyncio.create_task(ticker())]
                if self.s.publish_every_s > 0:
                    background.append(asyncio.create_task(self.publisher(metrics)))
                await asyncio.gather(*(self.worker(clients, i, kinds, deadline, progress)
                                       for i in range(self.s.concurrency)))
                self.load_end_s = time.perf_counter() - self.t0
                await self.sample(metrics, "load")  # the last sample under load: the "end" of the targets
                self.state.stop = True
                await asyncio.gather(*background)
                progress()
            await self.drain(metrics)
            with contextlib.suppress(Exception):
                self.retriever_stats = await clients.gateway.stats()
        finally:
            self.state.stop = True
            await clients.close()
            await metrics.close()

    async def drain(self, session: Any) -> None:
        """After the load: wait (at most drain_s) for the in-flight gauge to read 0, then take the last sample."""
        started = time.perf_counter()
        value = None
        while time.perf_counter() - started < self.s.drain_s:
            with contextlib.suppress(Exception):
                value = (await self.scrape(session)).get("in_flight")
            if value == 0:
                self.gauge_zero_after_s = time.perf_counter() - started
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # a late update would show in the final reading
        gauges = await self.sample(session, "drained")
        self.gauge_end = gauges.get("in_flight")
        self.log(f"after the load: {GAUGE} = {gauge_text(self.gauge_end)} "
                 f"(0 after {fmt(self.gauge_zero_after_s)} s)")
        self.deleted = {s["label"]: deleted_files(s["pid"]) for s in self.state.samples
                        if s["phase"] == "drained" and s.get("deleted_open")}


# --------------------------------------------------------------------------------------------- results


def summarise(soak: Soak) -> dict[str, Any]:
    s = soak.s
    records = soak.state.records
    processes = process_rows(soak.state.samples, s.warmup_s, soak.load_end_s)
    good = [r for r in records if r.group == GOOD and r.ok]
    ttft = [r.ttft_s for r in good if r.ttft_s is not None]
    bad_variants = Counter((r.variant, r.status) for r in records if r.group == BAD)
    gauge_max = max((g.get("in_flight") or 0 for g in soak.state.gauges), default=None)
    return {
        "targets": targets(records, processes, soak.gauge_end, soak.state.publishes),
        "totals": {"requests": len(records), **{f"{g}_requests": sum(r.group == g for r in records)
                                                for g in (GOOD, CANCEL, BAD)},
                   **{f"{g}_errors": n for g, n in error_counts(records).items()},
                   "load_s": soak.load_end_s, "good_req_per_s": len(good) / soak.load_end_s if soak.load_end_s else 0,
                   "good_p50_ms": _ms([r.latency_s for r in good], 50),
                   "good_p99_ms": _ms([r.latency_s for r in good], 99),
                   "ttft_p50_ms": _ms(ttft, 50), "ttft_p99_ms": _ms(ttft, 99)},
        "per_kind": per_kind(records),
        "per_bucket": per_bucket(records, s.bucket_s, soak.load_end_s),
        "bad_variants": [{"variant": v, "status": st, "count": n} for (v, st), n in sorted(bad_variants.items())],
        "processes": processes,
        "gauge": {"end": soak.gauge_end, "zero_after_drain_s": soak.gauge_zero_after_s, "max_seen": gauge_max,
                  "ingress_end": soak.state.gauges[-1].get("ingress_in_flight") if soak.state.gauges else None},
        "publishes": soak.state.publishes,
        "retriever_stats": {k: soak.retriever_stats.get(k) for k in ("version", "reloads", "vectors",
                                                                     "last_reload_error") if k in soak.retriever_stats},
        "deleted_open_files": soak.deleted,
        "startup_s": soak.startup_s,
        "knowledge_base": soak.kb_origin,
        "publish_how": "`--via` Triton's embedder" if soak.via else "embedded in process (the stand-in embedder)",
        "errors": [asdict(r) for r in records if not r.ok][:50],
    }


def plot(result: dict[str, Any], samples: Sequence[dict[str, Any]], gauges: Sequence[dict[str, Any]],
         publishes: Sequence[dict[str, Any]], warmup_s: float, path: Path) -> Path:
    """soak.png: latency p50/p99 of good requests over time, RSS of every process, open fds and the gauge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, rss, fds) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    buckets = [b for b in result["per_bucket"] if b["good"]]
    mid = [(b["start_s"] + b["end_s"]) / 2 / 60 for b in buckets]
    lat.plot(mid, [b["p50_ms"] / 1000 for b in buckets], marker="o", label="latency p50")
    lat.plot(mid, [b["p99_ms"] / 1000 for b in buckets], marker="x", linestyle="--", label="latency p99")
    lat.plot(mid, [b["ttft_p50_ms"] / 1000 for b in buckets], marker=".", label="TTFT p50 (streams)")
    lat.set(title="good requests (all kinds), by the interval they ended in", ylabel="seconds")
    series: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        series[(s["label"], s["pid"])].append(s)
    colours = plt.get_cmap("tab20").colors
    for i, ((label, pid), rows) in enumerate(sorted(series.items())):
        rows.sort(key=lambda r: r["t_s"])
        xs = [r["t_s"] / 60 for r in rows]
        base = next((r["rss_mib"] for r in rows if r["t_s"] >= warmup_s), rows[0]["rss_mib"])
        style = {"color": colours[i % len(colours)], "linestyle": "-" if i < len(colours) else "--"}
        rss.plot(xs, [(r["rss_mib"] / base - 1) * 100 for r in rows], label=f"{label} ({pid}): {base:,.0f} MiB",
                 **style)
        fds.plot(xs, [r["fds"] for r in rows], label=f"{label} ({pid})", **style)
    rss.axhline(TARGET_RSS_GROWTH_PCT, color="red", linestyle=":", linewidth=1)
    rss.set(title=f"RSS per process vs. its first sample after the warm-up (red: the {TARGET_RSS_GROWTH_PCT:g}% "
            "target)", ylabel="growth %")
    rss.set_ylim(bottom=max(-10.0, rss.get_ylim()[0]))  # the warm-up's climb from start-up values, cut off
    fds.set(title="open file descriptors per process (dashed: generator in-flight gauge, right axis)",
            ylabel="fds", xlabel="minutes since the load started")
    gauge = fds.twinx()
    gauge.plot([g["t_s"] / 60 for g in gauges], [g.get("in_flight") or 0 for g in gauges], color="black",
               linestyle="--", linewidth=1, label="in flight")
    gauge.set_ylabel("requests in flight")
    for ax in (lat, rss, fds):
        ax.axvspan(0, warmup_s / 60, color="grey", alpha=0.12)
        for p in publishes:
            if p.get("swap_s") is not None:
                ax.axvline(p["swap_s"] / 60, color="green", alpha=0.25, linewidth=0.8)
        ax.grid(alpha=0.3)
    lat.legend(fontsize=8)
    rss.legend(fontsize=6, ncol=3, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.text(0.01, 0.005, "grey: warm-up; green lines: a published knowledge-base version served", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def report(result: dict[str, Any], s: Settings) -> str:
    lines = ["## Targets\n", markdown_table(result["targets"], ["target", "measured", "verdict"]), ""]
    t = result["totals"]
    lines.append(f"{t['requests']} requests in {t['load_s'] / 60:.1f} minutes: {t['good_requests']} good "
                 f"({t['good_req_per_s']:.2f}/s, latency p50 {fmt(t['good_p50_ms'])} ms, p99 {fmt(t['good_p99_ms'])} "
                 f"ms, TTFT p50 {fmt(t['ttft_p50_ms'])} ms, p99 {fmt(t['ttft_p99_ms'])} ms), "
                 f"{t['cancelled_requests']} client-cancelled, {t['bad_requests']} bad.\n")
    lines.append("## Errors per request kind\n")
    lines.append("Latency and TTFT of the ok requests (a cancelled one: until the client closed it; TTFT: the first "
                 "non-empty text). Statuses: HTTP, or the gRPC status as the ingress maps it.\n")
    lines.append(markdown_table(result["per_kind"], [
        "kind", "group", "requests", "ok", "errors", "latency_p50_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p99_ms",
        "statuses", "first_error"], ["kind", "group", "requests", "ok", "errors", "p50 ms", "p99 ms", "TTFT p50 ms",
                                     "TTFT p99 ms", "statuses", "first error"]))
    if result["bad_variants"]:
        lines.append("\nBad requests, by variant and the status they got:\n")
        lines.append(markdown_table(result["bad_variants"], ["variant", "status", "count"]))
    lines.append(f"\n## Good requests over time ({s.bucket_s:g} s intervals, by when they ended)\n")
    lines.append(markdown_table(result["per_bucket"], [
        "start_s", "good", "good_errors", "req_per_s", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "cancelled",
        "bad", "other_errors"], ["from s", "good", "errors", "ok/s", "p50 ms", "p99 ms", "TTFT p50 ms",
                                 "TTFT p99 ms", "cancelled", "bad", "errors (cancelled, bad)"]))
    lines.append("\n![soak](soak.png)\n")
    lines.append(f"## Processes\n\nStart: the first sample after the warm-up ({s.warmup_s:g} s); end: the last "
                 "sample under load; after drain: the last sample, once the load stopped and the gauge read 0. "
                 "Anon / shmem: how much of the growth is anonymous memory (the heap) / touched shared memory. "
                 "Deleted open: fds on deleted files at the end (an old knowledge-base version still open).\n")
    lines.append(markdown_table(result["processes"], [
        "group", "label", "pid", "rss_start_mib", "rss_end_mib", "rss_growth_pct", "rss_verdict",
        "anon_growth_mib", "shmem_growth_mib", "rss_after_drain_mib", "rss_max_mib", "fds_start", "fds_end",
        "fds_after_drain", "fds_verdict", "deleted_open_end", "threads_start", "threads_end", "notes"], [
        "group", "process", "pid", "RSS start MiB", "RSS end MiB", "growth %", "RSS < 5%", "of it anon MiB",
        "of it shmem MiB", "after drain MiB", "max MiB", "fds start", "fds end", "fds after drain", "fds",
        "deleted open", "threads start", "threads end", "notes"]))
    g = result["gauge"]
    lines.append(f"\n## In-flight gauge\n\n`{GAUGE}` at the end: **{gauge_text(g['end'])}** (read 0 "
                 f"{fmt(g['zero_after_drain_s'])} s after the last request ended; the most seen while sampling: "
                 f"{gauge_text(g['max_seen'])}: a client-cancelled stream counts until the engine aborts it, at its "
                 "next token, while its worker has already sent the next request)."
                 + (f" The ingress's `{INGRESS_GAUGE}` at the end: {gauge_text(g.get('ingress_end'))}."
                    if g.get("ingress_end") is not None else "") + "\n")
    lines.append("## Knowledge-base publishes\n")
    lines.append(f"Every {s.publish_every_s:g} s, `tritonrag kb add` of one generated document "
                 f"({result['publish_how']}); served: when `tritonrag_retriever_index_version` showed the "
                 "new version.\n")
    if result["publishes"]:
        lines.append(markdown_table(result["publishes"], ["n", "started_s", "version", "add_s", "swap_delay_s",
                                                          "rc", "error"],
                                    ["n", "at s", "version", "kb add s", "served after s", "rc", "error"]))
        delays = [p["swap_delay_s"] for p in result["publishes"] if p.get("swap_delay_s") is not None]
        if delays:
            lines.append(f"\nServed after publishing: median {percentile(delays, 50):.2f} s, at most "
                         f"{max(delays):.2f} s.")
    stats = result["retriever_stats"]
    if stats:
        lines.append(f"\nThe retriever's stats at the end: {json.dumps(stats)}")
    if result["deleted_open_files"]:
        lines.append("\nDeleted files still open at the end: " + json.dumps(result["deleted_open_files"])[:2000])
    return "\n".join(lines)


def write_results(out: Path, soak: Soak, result: dict[str, Any], command: str, machine: dict[str, Any]) -> None:
    s = soak.s
    out.mkdir(parents=True, exist_ok=True)
    data = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "settings": asdict(s),
            "served_settings": soak.config_path.read_text(), "machine": machine, **result,
            "gauges": soak.state.gauges}
    write_json(out / "results.json", data)
    write_csv(out / "samples.csv", soak.state.samples)
    write_csv(out / "publishes.csv", soak.state.publishes or [{"n": None}])
    write_csv(soak.work / "requests.csv", [{**asdict(r), "latency_s": r.latency_s} for r in soak.state.records])
    plot(result, soak.state.samples, soak.state.gauges, soak.state.publishes, s.warmup_s, out / "soak.png")
    kinds = ", ".join(f"{k} {w}" for k, (_, w, _) in kinds_for(s.ingress, s.kinds).items())
    header = (
        f"# Soak ({data['date']})\n\nCommand: `{command}`\n\n{machine_markdown(machine)}\n"
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (the machine is shared)\n"
        f"- {s.minutes:g} minutes, {s.concurrency} closed-loop workers, each request drawn at random by weight: "
        f"{kinds}; cancelled streams closed after 2 or 3 events; max_tokens {s.max_tokens}; warm-up "
        f"{s.warmup_s:g} s; a sample every {s.sample_every_s:g} s; a publish every {s.publish_every_s:g} s; "
        f"seed {s.seed}\n"
        f"- settings: `{s.config or 'defaults'}` with [retriever] index_dir = a temporary folder holding "
        f"{soak.kb_origin}, [server] startup_timeout_s = 1200 and no per-key limits on the ingress (results.json: "
        "served_settings); bad requests do not include a malformed JSON body: Triton 2.51 answers it with 500\n"
        f"- startup: {', '.join(f'{k} {v:.0f} s' for k, v in soak.startup_s.items())}\n\n")
    (out / "report.md").write_text(header + report(result, s) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 minutes, 30 s warm-up, 30 s intervals; results in "
                        "benchmarks/results/soak/quick unless --out")
    parser.add_argument("--minutes", type=float, help="how long the load runs (default 30; quick 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop workers (default %(default)s)")
    parser.add_argument("--config", default=os.environ.get("TRITONRAG_CONFIG"),
                        help="settings to serve with (TRITONRAG_CONFIG; default: $TRITONRAG_CONFIG, else defaults)")
    parser.add_argument("--publish-every", type=float, default=60.0,
                        help="seconds between knowledge-base publishes (0: none; default %(default)s)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between process samples")
    parser.add_argument("--warmup", type=float, help="seconds excluded from the RSS/fd baseline (default 120; "
                        "quick 30)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every answer (default 32)")
    parser.add_argument("--ingress", action=argparse.BooleanOptionalAction, default=True,
                        help="start the ingress and send it its share of the mix (default on)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take before it counts "
                        "as an error (default %(default)s, the ingress's [ingress] request_timeout_s)")
    parser.add_argument("--drain", type=float, default=120.0,
                        help="seconds to wait after the load for the in-flight gauge to read 0")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--kinds", default="", help="comma-separated request kinds to send instead of the whole mix, "
                        f"to find which one a problem follows ({', '.join(KINDS)})")
    parser.add_argument("--out", type=Path, help=f"results folder (default {OUT.relative_to(ROOT)}, quick: "
                        f"{(OUT / 'quick').relative_to(ROOT)})")
    args = parser.parse_args(argv)
    settings = Settings(
        minutes=args.minutes or (3.0 if args.quick else 30.0), concurrency=args.concurrency, config=args.config,
        publish_every_s=args.publish_every, sample_every_s=args.sample_every,
        warmup_s=args.warmup if args.warmup is not None else (30.0 if args.quick else 120.0),
        bucket_s=30.0 if args.quick else 60.0, max_tokens=args.max_tokens, ingress=args.ingress,
        timeout_s=args.timeout, seed=args.seed, drain_s=args.drain,
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()))
    try:
        kinds_for(settings.ingress, settings.kinds)
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or (OUT / "quick" if args.quick else OUT)
    command = shlex.join([".venv/bin/python", "benchmarks/soak.py", *(sys.argv[1:] if argv is None else argv)])
    if args.config and "--config" not in command and os.environ.get("TRITONRAG_CONFIG"):
        command = f"TRITONRAG_CONFIG={shlex.quote(args.config)} {command}"

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    soak = Soak(settings, work, log)
    try:
        soak.start()
        asyncio.run(soak.run())
    except BaseException:
        for name in ("tritonserver.log", "ingress.log"):
            if (work / name).exists():
                log(f"last lines of {work / name}:\n" + "\n".join(
                    (work / name).read_text(errors="replace").splitlines()[-20:]))
        raise
    finally:
        soak.stop()
    result = summarise(soak)
    write_results(out, soak, result, command, machine_description())
    shutil.rmtree(soak.kb, ignore_errors=True)
    print("\n" + markdown_table(result["targets"], ["target", "measured", "verdict"]))
    print(f"\nwritten to {out}/ (report.md, results.json, samples.csv, publishes.csv, soak.png); logs and "
          f"requests.csv in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
