"""What the OpenAI-compatible ingress (tritonrag.ingress: FastAPI on uvicorn, gRPC to Triton) adds to a request
over calling Triton directly: p50/p99 latency, time to first token (TTFT) and throughput, in closed loops at
concurrency 1, 16 and 64. Targets: <= 2 ms added at p50, >= 95% of the direct throughput.

One tritonserver on the committed model repository with the cheap stand-in embedder, reranker and generator
(benchmarks/stand_in.toml, merged over $TRITONRAG_CONFIG if set; the retriever and prompt builder are real), as
benchmarks/orchestration_overhead.py starts it, and `tritonrag ingress` in front of it (per-key limits off, one
API key). Two asynchronous clients in this process ask the same questions (common.questions) with the same
streamed max_tokens:

- direct: tritonrag.ingress.gateway.TritonGateway, the ingress's own gRPC client (one stream per request over one
  shared channel, strict error mode), given the RagCall the ingress would build from the same chat request. So
  the only difference between the two sides is the HTTP hop: uvicorn, FastAPI, the key check, the body's
  validation, the SSE chunks, and the client's HTTP parsing.
- ingress: aiohttp (a keep-alive pool of as many connections as the concurrency) POSTing
  /v1/chat/completions with stream=true, reading the SSE stream until [DONE].

Per request: latency (to the final response / [DONE]), TTFT (the first non-empty text), and the first response
(direct: the first gRPC response, which carries the sources; ingress: the first SSE event, the role chunk sent
right after it), which splits the added latency into the request path and the streamed chunks. Rounds of
every (max_tokens, concurrency) cell are interleaved, so a slow period of the shared machine hits both sides
alike. At concurrency 1 the sides alternate request by request (paired: the median of the per-pair differences
is the least noisy added latency; throughput = 1 / mean latency). At 16 and 64 each side runs its own closed
loop (C workers, each sending its next request when its last one ends; the side order alternating), its first
requests spread over one expected latency so that requests do not finish in waves; it warms up until at least
max(warm-up seconds, C completions), then counts the requests completed in the window. The CPU seconds that
Triton (with its Python stubs), the ingress and this client spend per request in each window show where a
throughput difference comes from; the CPU the machine's other processes took in the window is reported as
noise. With --profile, py-spy samples the ingress during one more closed loop and the busiest functions are
listed (the collapsed stacks are written too, for a flame graph).

max_tokens defaults to 16 and 1 (the fixed cost per request; the difference gives the cost per streamed chunk):
the [generator] default of 96 streams 96 responses per request, and on 2 cores its closed loops at concurrency
64 take seconds per request, which a run bounded to ~10 minutes cannot average well (--max-tokens 96,1 works).
--quick: one worker, one round of 1 s windows, under 2 minutes with Triton's start; the full run (workers 1 and 2,
3 rounds of 4 s windows, --profile) takes 8-9 minutes on a busy 2-core machine.

The load generator shares the machine's cores with Triton and the ingress, so at concurrency 16 and 64 the
throughput of both sides is bounded by the CPU all three processes need per request.

Examples::

    .venv/bin/python benchmarks/ingress_overhead.py --quick --out /tmp/ingress-overhead
    .venv/bin/python benchmarks/ingress_overhead.py --workers 1,2 --profile
    .venv/bin/python benchmarks/ingress_overhead.py --max-tokens 16,1 --concurrency 1,16 --rounds 2 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCHMARKS,
    QUESTIONS,
    ROOT,
    latency_summary,
    machine_description,
    machine_markdown,
    markdown_table,
    percentile,
    questions,
    write_csv,
    write_json,
    write_overlay,
)

TARGET_ADDED_P50_MS = 2.0
TARGET_THROUGHPUT_RATIO = 0.95
DIRECT, INGRESS = "direct", "ingress"
SIDES = (DIRECT, INGRESS)
OURS = ("triton", "ingress", "client")  # the process groups CpuMeter times (besides everyone else's, "others")
STAND_IN = BENCHMARKS / "stand_in.toml"
OUT = ROOT / "benchmarks" / "results" / "ingress_overhead"
# The ingress as the benchmark runs it: no per-key limits (one key sends every request)
INGRESS_OVERRIDES = {"max_concurrency_per_key": 0, "rate_limit_rpm": 0, "rate_limit_burst": 0}


# --------------------------------------------------------------------------------------------- pure helpers


@dataclass
class Sample:
    """One request: seconds to the first response, to the first text, to the end; text pieces received."""

    first_s: float
    ttft_s: float
    total_s: float
    pieces: int
    text: str = ""


@dataclass
class Cell:
    """One closed loop of one side: the requests completed in its window, and the CPU seconds spent meanwhile."""

    workers: int
    round: int
    side: str
    max_tokens: int
    concurrency: int
    samples: list[Sample]
    window_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def req_per_s(self) -> float:
        return len(self.samples) / self.window_s if self.window_s > 0 else float("nan")


def chat_body(question: str, max_tokens: int) -> bytes:
    """The streamed chat request both sides answer (the direct side gets the RagCall the ingress makes of it)."""
    return json.dumps({"model": "rag", "messages": [{"role": "user", "content": question}], "stream": True,
                       "max_tokens": max_tokens}).encode()


def sse_event(line: bytes) -> tuple[bool, str]:
    """(done, content text) of one line of an OpenAI chat stream; (False, "") for blank lines, comments and chunks
    without text. Raises RuntimeError for an error event."""
    if not line.startswith(b"data:"):
        return False, ""
    data = line[5:].strip()
    if data == b"[DONE]":
        return True, ""
    chunk = json.loads(data)
    if "error" in chunk:
        raise RuntimeError(f"error event: {chunk['error']}")
    choices = chunk.get("choices") or []
    return False, (choices[0].get("delta", {}).get("content") or "") if choices else ""


def schedule(rounds: int, lengths: Sequence[int], concurrencies: Sequence[int]) -> list[tuple[int, int, int, str]]:
    """(round, max_tokens, concurrency, side) in run order: every cell once a round, the side order alternating
    from one cell to the next and from one round to the next."""
    order = []
    for r in range(rounds):
        k = 0
        for tokens in lengths:
            for c in concurrencies:
                sides = SIDES if (r + k) % 2 == 0 else SIDES[::-1]
                order += [(r, tokens, c, side) for side in sides]
                k += 1
    return order


def in_window(records: Iterable[tuple[float, Sample]], start: float, end: float) -> list[Sample]:
    """The samples of requests (sent at t, ending at t + total_s) that ended in [start, end]."""
    return [s for t, s in records if start <= t + s.total_s <= end]


def summarise(cells: Sequence[Cell]) -> dict[str, Any]:
    """Latency percentiles over every sample of ``cells`` (one side of one configuration, all rounds), their
    throughput (requests / window seconds, summed), CPU milliseconds per request of each process group."""
    samples = [s for c in cells for s in c.samples]
    requests = len(samples)
    window = sum(c.window_s for c in cells)
    cpu: Counter[str] = Counter()
    for c in cells:
        cpu.update(c.cpu_s)
    row: dict[str, Any] = {
        "requests": requests, "window_s": window, "req_per_s": requests / window if window else float("nan"),
        "rounds_req_per_s": [c.req_per_s for c in cells],
        "pieces": int(statistics.median(s.pieces for s in samples)) if samples else 0,
        **latency_summary([s.total_s for s in samples], "total_"),
        **latency_summary([s.ttft_s for s in samples], "ttft_"),
        **latency_summary([s.first_s for s in samples], "first_"),
    }
    for name, seconds in sorted(cpu.items()):
        row[f"cpu_{name}_ms_per_req"] = seconds / requests * 1000 if requests else float("nan")
    return row


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def compare(direct: dict[str, Any], ingress: dict[str, Any]) -> dict[str, Any]:
    """Ingress minus direct (differences of percentiles), the throughput ratio and the targets' verdicts."""
    row = {}
    for stat in ("total_p50", "total_p99", "ttft_p50", "ttft_p99", "first_p50"):
        row[f"direct_{stat}_ms"] = direct[f"{stat}_ms"]
        row[f"ingress_{stat}_ms"] = ingress[f"{stat}_ms"]
        row[f"added_{stat}_ms"] = ingress[f"{stat}_ms"] - direct[f"{stat}_ms"]
    row["direct_req_per_s"] = direct["req_per_s"]
    row["ingress_req_per_s"] = ingress["req_per_s"]
    row["throughput_ratio"] = ingress["req_per_s"] / direct["req_per_s"] if direct["req_per_s"] else float("nan")
    ratios = [i / d for d, i in zip(direct["rounds_req_per_s"], ingress["rounds_req_per_s"]) if d]
    row["ratio_min"], row["ratio_max"] = (min(ratios), max(ratios)) if ratios else (float("nan"),) * 2
    # CPU-bound prediction: when the cores are the bottleneck, throughput ~ 1 / CPU per request of our processes
    ours = [sum(side.get(f"cpu_{k}_ms_per_req", float("nan")) for k in OURS) for side in (direct, ingress)]
    row["cpu_ms_per_req_direct"], row["cpu_ms_per_req_ingress"] = ours
    row["cpu_predicted_ratio"] = ours[0] / ours[1] if ours[1] else float("nan")
    row["p50_target"] = verdict(row["added_total_p50_ms"] <= TARGET_ADDED_P50_MS)
    row["throughput_target"] = verdict(row["throughput_ratio"] >= TARGET_THROUGHPUT_RATIO)
    return row


def paired_added(direct: Sequence[Cell], ingress: Sequence[Cell]) -> dict[str, float]:
    """Median and quartiles of ingress - direct over paired requests (the concurrency-1 cells, whose i-th samples
    of one round are a pair), latency and TTFT, in ms; NaN where the cells are not paired."""
    by_round = {c.round: c for c in ingress}
    diffs: dict[str, list[float]] = {"total": [], "ttft": []}
    for a in direct:
        b = by_round.get(a.round)
        if a.concurrency != 1 or b is None or len(a.samples) != len(b.samples):
            continue
        for x, y in zip(a.samples, b.samples):
            diffs["total"].append((y.total_s - x.total_s) * 1000)
            diffs["ttft"].append((y.ttft_s - x.ttft_s) * 1000)
    out = {"paired_n": float(len(diffs["total"]))}
    for name, values in diffs.items():
        out[f"paired_added_{name}_p50_ms"] = percentile(values, 50)
        out[f"paired_added_{name}_p25_ms"] = percentile(values, 25)
        out[f"paired_added_{name}_p75_ms"] = percentile(values, 75)
    return out


def per_token_us(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Added latency per extra streamed token: (added p50 at N tokens - at 1 token) / (N - 1), per concurrency."""
    out = []
    for a in rows:
        if a["max_tokens"] == 1:
            continue
        base = next((b for b in rows if b["max_tokens"] == 1 and b["workers"] == a["workers"]
                     and b["concurrency"] == a["concurrency"]), None)
        if base is None:
            continue
        out.append({"workers": a["workers"], "concurrency": a["concurrency"], "max_tokens": a["max_tokens"],
                    "fixed_added_p50_ms": base["added_total_p50_ms"],
                    "per_token_added_p50_us": (a["added_total_p50_ms"] - base["added_total_p50_ms"])
                    / (a["max_tokens"] - 1) * 1000})
    return out


def collapsed_top(lines: Iterable[str], n: int = 15) -> dict[str, list[dict[str, Any]]]:
    """py-spy's collapsed stacks ("frame;frame;... count") to where the samples went, as shares of all of them:
    ``own``, the busiest functions by own samples (the stack's leaf); ``packages``, own samples by the leaf's
    package; ``ingress``, tritonrag's own functions by inclusive samples (anywhere on the stack, once a stack)."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if frames:
            own[_frame(frames[-1])] += k
            packages[_package(frames[-1])] += k
        for frame in {_frame(f) for f in frames if _package(f).startswith("tritonrag.ingress")
                      and not _where(f)[1].endswith("ingress/run.py")}:  # run.py: the server's entry point
            inclusive[frame] += k

    def rows(counter: Counter[str], key: str = "function") -> list[dict[str, Any]]:
        return [{key: f, "samples": k, "share_pct": 100 * k / total} for f, k in counter.most_common(n)]

    return {"own": rows(own), "packages": rows(packages, "package"), "ingress": rows(inclusive)}


def short_paths(stacks: str) -> str:
    """py-spy's stacks with the site-packages, standard library and repository prefixes cut from file names."""
    import sysconfig

    paths = sysconfig.get_paths()
    for prefix in sorted({paths["purelib"], paths["platlib"], paths["stdlib"], str(ROOT)}, key=len, reverse=True):
        stacks = stacks.replace(prefix.rstrip("/") + "/", "")
    return stacks


def _where(frame: str) -> tuple[str, str]:
    """(function, file path) of a py-spy frame `func (path/to/file.py:12)`."""
    name, _, where = frame.partition(" (")
    return name, where.rstrip(")").rsplit(":", 1)[0]


def _frame(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (to/file.py)`: one entry per function, not per line."""
    name, path = _where(frame)
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})" if path else name


def _package(frame: str) -> str:
    """The package a frame's file belongs to: `grpc`, `uvicorn`, `tritonrag.ingress`, `asyncio`, ..."""
    _, path = _where(frame)
    parts = Path(path).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1:]
    elif "tritonrag" in parts:
        rest = parts[parts.index("tritonrag"):]
        return ".".join(rest[:2]) if len(rest) > 2 else "tritonrag"
    elif any(p.startswith("python3") for p in parts):
        rest = parts[next(i for i, p in enumerate(parts) if p.startswith("python3")) + 1:]
    else:
        return path or "?"
    return (rest[0].removesuffix(".py") if rest else "?") or "?"


# --------------------------------------------------------------------------------------------- clients


class DirectClient:
    """`rag` over gRPC exactly as the ingress calls it (its TritonGateway, one channel, one stream a request)."""

    def __init__(self, grpc_url: str) -> None:
        from tritonrag.ingress.gateway import TritonGateway

        self.gateway = TritonGateway(grpc_url)

    async def ask(self, call: Any) -> Sample:
        started = time.perf_counter()
        first = ttft = None
        pieces, text = 0, []
        async for part in self.gateway.rag(call):
            now = time.perf_counter()
            if first is None:
                first = now - started
            if part.text:
                pieces += 1
                text.append(part.text)
                if ttft is None:
                    ttft = now - started
        total = time.perf_counter() - started
        return Sample(first or total, ttft or total, total, pieces, "".join(text))

    async def close(self) -> None:
        await self.gateway.close()


class IngressClient:
    """POST /v1/chat/completions over a keep-alive aiohttp pool, reading the SSE stream until [DONE]."""

    def __init__(self, base_url: str, key: str, connections: int) -> None:
        import aiohttp

        self.url = f"{base_url}/v1/chat/completions"
        self.session = aiohttp.ClientSession(
            # idle connections dropped before uvicorn's keep-alive timeout (5 s) closes them under a request
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections, keepalive_timeout=2.0),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=600))

    async def ask(self, body: bytes) -> Sample:
        started = time.perf_counter()
        first = ttft = total = None
        pieces, text = 0, []
        async with self.session.post(self.url, data=body) as response:
            if response.status != 200:
                raise RuntimeError(f"ingress: HTTP {response.status}: {(await response.text())[:300]}")
            async for line in response.content:  # read to the end, so the connection goes back to the pool
                if total is not None or not line.strip():
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now - started
                done, piece = sse_event(line)
                if piece:
                    pieces += 1
                    text.append(piece)
                    if ttft is None:
                        ttft = now - started
                if done:
                    total = now - started
        if total is None:
            raise RuntimeError("ingress: the stream ended without [DONE]")
        return Sample(first or total, ttft or total, total, pieces, "".join(text))

    async def close(self) -> None:
        await self.session.close()


# --------------------------------------------------------------------------------------------- CPU accounting


class CpuMeter:
    """CPU seconds (user + system) of named process trees, of this process, and of everything else on the machine."""

    def __init__(self, roots: dict[str, int]) -> None:
        import psutil

        self.psutil = psutil
        self.roots = roots
        self._known: dict[int, Any] = {}

    def _tree(self, pid: int) -> list[Any]:
        try:
            root = self._process(pid)
            return [root, *(self._process(c.pid) for c in root.children(recursive=True))]
        except self.psutil.Error:
            return []

    def _process(self, pid: int) -> Any:
        if pid not in self._known:
            self._known[pid] = self.psutil.Process(pid)
        return self._known[pid]

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in {**self.roots, "client": os.getpid()}.items():
            seconds = 0.0
            for process in self._tree(pid) if name != "client" else [self._process(pid)]:
                try:
                    t = process.cpu_times()
                    seconds += t.user + t.system + t.children_user + t.children_system
                except self.psutil.Error:
                    continue
            out[name] = seconds
        machine = self.psutil.cpu_times()
        out["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Seconds spent between two snapshots; "others" = the machine's busy time minus ours."""
        spent = {k: after[k] - before[k] for k in before}
        ours = sum(v for k, v in spent.items() if k != "machine")
        spent["others"] = max(0.0, spent.pop("machine") - ours)
        return spent


# --------------------------------------------------------------------------------------------- measuring


def stagger_s(concurrency: int, known_req_per_s: float | None) -> float:
    """Over how long to spread the first requests of ``concurrency`` workers: one expected latency (closed loop:
    concurrency / throughput, from a throughput measured before at this or a lower concurrency, which
    overestimates it). Started together, equal requests sharing the CPU end together and the loop runs in waves,
    which a window shorter than a latency can fall between."""
    if concurrency <= 1 or not known_req_per_s or known_req_per_s != known_req_per_s:
        return 0.0
    return concurrency / known_req_per_s


def window_s(measure_s: float, warm_latencies: Sequence[float]) -> float:
    """The measured window: ``measure_s``, stretched to at least one median latency of the warm-up (at most
    3 x measure_s), so that every worker completes about one request in it or more."""
    if not warm_latencies:
        return measure_s
    return min(max(measure_s, statistics.median(warm_latencies)), 3 * measure_s)


async def closed_loop(ask: Callable[[Any], Awaitable[Sample]], items: Sequence[Any], concurrency: int,
                      warmup_s: float, measure_s: float, meter: CpuMeter | None = None, spread_s: float = 0.0
                      ) -> tuple[list[Sample], float, dict[str, float]]:
    """``concurrency`` workers asking ``items`` in turn, each sending its next request when its last one ends,
    the first requests spread over ``spread_s``. Warm up for at least max(warmup_s, spread_s) and
    ``concurrency`` completions, then keep the requests completed in the next window (window_s); stop sending
    and let the ones in flight finish, so none spills into the next loop. Returns (samples, window, CPU spent)."""
    records: list[tuple[float, Sample]] = []
    errors: list[BaseException] = []
    stop = False
    counter = iter(range(10**12))

    async def worker(delay: float) -> None:
        await asyncio.sleep(delay)
        while not stop:
            item = items[next(counter) % len(items)]
            sent = time.perf_counter()
            try:
                sample = await ask(item)
            except Exception as exc:
                errors.append(exc)
                return
            records.append((sent, sample))

    tasks = [asyncio.create_task(worker(i * spread_s / concurrency)) for i in range(concurrency)]
    begin = time.perf_counter()
    least = max(warmup_s, spread_s)
    while not errors and (time.perf_counter() - begin < least or len(records) < concurrency):
        if time.perf_counter() - begin > least + 120:
            errors.append(TimeoutError(f"fewer than {concurrency} requests completed in {least + 120:.0f} s"))
        await asyncio.sleep(0.005)
    window = window_s(measure_s, [x.total_s for _, x in records])
    before = meter.snapshot() if meter else {}
    start = time.perf_counter()
    await asyncio.sleep(window)
    end = time.perf_counter()
    after = meter.snapshot() if meter else {}
    stop = True
    await asyncio.gather(*tasks)
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed; first: {errors[0]!r}") from errors[0]
    return in_window(records, start, end), end - start, (CpuMeter.delta(before, after) if meter else {})


async def paired_loop(asks: dict[str, Callable[[Any], Awaitable[Sample]]], items: dict[str, Sequence[Any]],
                      warmup_s: float, measure_s: float, meter: CpuMeter | None = None
                      ) -> tuple[dict[str, list[Sample]], float, dict[str, float]]:
    """Concurrency 1 with the sides alternating request by request (the same question for both, which one goes
    first alternating too), so a slow second of the shared machine hits both alike: warm up for ``warmup_s``,
    then pairs for ``measure_s``. Returns the samples of each side (aligned: the i-th of each is one pair), the
    window and the CPU spent in it."""
    count = len(next(iter(items.values())))
    i = 0

    async def pair() -> dict[str, Sample]:
        nonlocal i
        out = {}
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            out[side] = await asks[side](items[side][i % count])
        i += 1
        return out

    begin = time.perf_counter()
    while time.perf_counter() - begin < warmup_s:
        await pair()
    before = meter.snapshot() if meter else {}
    start = time.perf_counter()
    pairs = []
    while time.perf_counter() - start < measure_s:
        pairs.append(await pair())
    end = time.perf_counter()
    after = meter.snapshot() if meter else {}
    return ({side: [p[side] for p in pairs] for side in SIDES}, end - start,
            CpuMeter.delta(before, after) if meter else {})


@dataclass
class Settings:
    """What one run measures."""

    workers: list[int]
    max_tokens: list[int]
    concurrencies: list[int]
    rounds: int
    warmup_s: float
    measure_s: float
    profile: bool
    profile_s: float
    pin: bool = False  # Triton on core 0; the ingress and this client on the others


class Bench:
    """Triton, the ingress in front of it, both clients, and the measurements so far."""

    def __init__(self, settings: Settings, work: Path, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.work = work
        self.log = log
        self.cells: list[Cell] = []
        self.checks: list[dict[str, Any]] = []
        self.startup_s: dict[str, float] = {}
        self.key = secrets.token_urlsafe(24)
        self.served: Any = None
        self.ingress: Any = None
        self.ingress_config: Path | None = None
        self.profile_stacks: dict[int, str] = {}  # py-spy's collapsed stacks, per worker count

    # servers --------------------------------------------------------------------------------------------

    def start_triton(self) -> None:
        from orchestration_overhead import start_served

        self.served = start_served(self.work, (0, 0, 0), self.log)
        self.startup_s["triton"] = self.served.startup_s
        # the ingress reads the same stand-in settings, with its per-key limits off
        overrides = tomllib.loads(STAND_IN.read_text())
        overrides["ingress"] = dict(INGRESS_OVERRIDES)
        self.ingress_config = write_overlay(self.work / "ingress-config.toml", overrides,
                                            "written by benchmarks/ingress_overhead.py")

    def start_ingress(self, workers: int) -> None:
        from tritonrag.deploy.ingress_process import IngressProcess
        from tritonrag.deploy.server import free_port
        from tritonrag.settings import CONFIG_ENV, load_settings

        settings = load_settings(self.ingress_config)
        keys_env = settings.ingress.api_keys_env
        self.ingress = IngressProcess(self.served.server.grpc_url, free_port(), settings.home, workers=workers,
                                      env={CONFIG_ENV: str(self.ingress_config), keys_env: f"bench:{self.key}"},
                                      log_file=self.work / f"ingress-{workers}.log")
        started = time.perf_counter()
        self.ingress.start(60)
        if self.settings.pin:
            self.log(f"pinned: {pin_cores(self.served.server.process.pid, self.ingress.process.pid)}")
        self.startup_s[f"ingress_workers_{workers}"] = time.perf_counter() - started
        self.log(f"ingress with {workers} worker(s) ready at {self.ingress.url} "
                 f"in {self.startup_s[f'ingress_workers_{workers}']:.1f} s")

    def stop(self) -> None:
        for stop in (getattr(self.ingress, "stop", None), getattr(self.served, "close", None)):
            if stop is not None:
                try:
                    stop()
                except Exception as exc:  # keep stopping the rest
                    self.log(f"while stopping: {exc}")

    # measuring ------------------------------------------------------------------------------------------

    async def measure(self, workers: int) -> None:
        """Every (max_tokens, concurrency, side) cell, ``rounds`` times, interleaved; then the profile, if asked."""
        from tritonrag.ingress.translate import parse_chat, to_rag_call

        config = self.ingress_settings()
        s = self.settings
        mix = questions(len(QUESTIONS))
        bodies = {t: [chat_body(q, t) for q in mix] for t in s.max_tokens}
        calls = {t: [to_rag_call(parse_chat(b), config.max_messages, config.max_history_chars) for b in bodies[t]]
                 for t in s.max_tokens}
        direct = DirectClient(self.served.server.grpc_url)
        ingress = IngressClient(self.ingress.url, self.key, max(s.concurrencies))
        meter = CpuMeter({"triton": self.served.server.process.pid, "ingress": self.ingress.process.pid})
        try:
            await self.check_same_answers(direct, ingress, bodies, calls)
            plan = schedule(s.rounds, s.max_tokens, s.concurrencies)
            started = time.perf_counter()
            known: dict[tuple[str, int, int], float] = {}  # (side, tokens, concurrency) -> req/s, latest
            for i, (r, tokens, c, side) in enumerate(plan):
                if c == 1:  # both sides at once, alternating request by request
                    if not any((x.workers, x.round, x.max_tokens, x.concurrency) == (workers, r, tokens, 1)
                               for x in self.cells):
                        await self.pairs(workers, r, tokens, direct, ingress, bodies, calls, meter, i, len(plan))
                    continue
                ask, items = (direct.ask, calls[tokens]) if side == DIRECT else (ingress.ask, bodies[tokens])
                lower = [k for k in known if k[:2] == (side, tokens) and k[2] <= c]
                spread = stagger_s(c, known[max(lower, key=lambda k: k[2])] if lower else None)
                samples, window, cpu = await closed_loop(ask, items, c, s.warmup_s, s.measure_s, meter, spread)
                cell = Cell(workers, r, side, tokens, c, samples, window, cpu)
                self.cells.append(cell)
                if cell.samples:
                    known[side, tokens, c] = cell.req_per_s
                self.log(f"[workers {workers}] {i + 1}/{len(plan)} round {r + 1} max_tokens={tokens} c={c} "
                         f"{side:7}: {cell.req_per_s:7.1f} req/s, p50 "
                         f"{latency_summary([x.total_s for x in samples])['p50_ms']:7.2f} ms "
                         f"(others' CPU {cpu.get('others', 0) / window:.2f} cores)")
            self.log(f"[workers {workers}] measured in {time.perf_counter() - started:.0f} s")
            if s.profile:
                self.profiles = getattr(self, "profiles", {})
                self.profiles[workers] = await self.profile(ingress, bodies, workers)
        finally:
            await ingress.close()
            await direct.close()

    async def pairs(self, workers: int, r: int, tokens: int, direct: DirectClient, ingress: IngressClient,
                    bodies: dict[int, list[bytes]], calls: dict[int, list[Any]], meter: CpuMeter, i: int,
                    steps: int) -> None:
        """One round of the concurrency-1 cell: paired requests. Each side's window is the sum of its requests'
        latencies (its closed-loop throughput: 1 / mean latency); the CPU of the others, split by time."""
        s = self.settings
        samples, elapsed, cpu = await paired_loop({DIRECT: direct.ask, INGRESS: ingress.ask},
                                                  {DIRECT: calls[tokens], INGRESS: bodies[tokens]}, s.warmup_s,
                                                  2 * s.measure_s, meter)
        for side in SIDES:
            busy = sum(x.total_s for x in samples[side])
            others = {"others": cpu.get("others", 0.0) * busy / elapsed} if elapsed else {}
            self.cells.append(Cell(workers, r, side, tokens, 1, samples[side], busy, others))
        p50 = {side: latency_summary([x.total_s for x in samples[side]])["p50_ms"] for side in SIDES}
        self.log(f"[workers {workers}] {i + 2}/{steps} round {r + 1} max_tokens={tokens} c=1 paired : "
                 f"{len(samples[DIRECT])} pairs, p50 direct {p50[DIRECT]:.2f} ms, ingress {p50[INGRESS]:.2f} ms "
                 f"(others' CPU {cpu.get('others', 0) / elapsed:.2f} cores)")

    def ingress_settings(self) -> Any:
        from tritonrag.settings import load_settings

        return load_settings(self.ingress_config).ingress

    async def check_same_answers(self, direct: DirectClient, ingress: IngressClient, bodies: dict[int, list[bytes]],
                                 calls: dict[int, list[Any]]) -> None:
        """Both sides answer the first questions identically (text and piece count), also warming both up."""
        tokens = max(bodies)
        for body, call in list(zip(bodies[tokens], calls[tokens]))[:4]:
            a, b = await direct.ask(call), await ingress.ask(body)
            self.checks.append({"question": json.loads(body)["messages"][0]["content"], "max_tokens": tokens,
                                "direct_pieces": a.pieces, "ingress_pieces": b.pieces, "same_text": a.text == b.text})
        if not all(c["same_text"] and c["direct_pieces"] == c["ingress_pieces"] for c in self.checks):
            raise RuntimeError(f"the two sides answer differently: {self.checks}")

    async def profile(self, ingress: IngressClient, bodies: dict[int, list[bytes]], workers: int) -> dict[str, Any]:
        """py-spy on the ingress's processes during one more closed loop (the first concurrency above 1)."""
        c = next((c for c in self.settings.concurrencies if c > 1), self.settings.concurrencies[0])
        tokens = max(self.settings.max_tokens)
        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists():
            self.log(f"no {spy}: pip install py-spy to profile the ingress")
            return {"error": f"py-spy is not installed ({spy})"}
        out = self.work / f"py-spy-{workers}.txt"
        target = self.ingress.process.pid  # with its subprocesses: uvicorn's workers when there are several
        seconds = self.settings.profile_s
        process = subprocess.Popen([str(spy), "record", "-p", str(target), "-d", str(int(seconds)), "-r", "200",
                                    "--format", "raw", "-o", str(out), "--nonblocking", "--subprocesses", "--gil",
                                    "--full-filenames"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        await asyncio.sleep(0.5)
        samples, window, _ = await closed_loop(ingress.ask, bodies[tokens], c, 0.2, seconds, None)
        output = (await asyncio.to_thread(process.communicate, None, 60))[0].decode(errors="replace")
        if process.returncode != 0 or not out.exists():
            self.log(f"py-spy failed ({process.returncode}): {output[-300:]}")
            return {"error": output[-500:]}
        top = collapsed_top(out.read_text().splitlines())
        self.profile_stacks[workers] = short_paths(out.read_text())
        self.log(f"[workers {workers}] profiled the ingress (pid {target}) for {seconds:.0f} s at c={c}, "
                 f"max_tokens={tokens}: {len(samples) / window:.1f} req/s")
        return {"pid": target, "concurrency": c, "max_tokens": tokens, "seconds": seconds,
                "req_per_s": len(samples) / window, **top}


# --------------------------------------------------------------------------------------------- report


def results(bench: Bench) -> dict[str, Any]:
    """Summaries per (workers, max_tokens, concurrency, side) and the comparisons."""
    keys = sorted({(c.workers, c.max_tokens, c.concurrency) for c in bench.cells},
                  key=lambda k: (k[0], -k[1], k[2]))
    summary, comparison = [], []
    for workers, tokens, c in keys:
        per_side, cells = {}, {}
        for side in SIDES:
            cells[side] = [x for x in bench.cells if (x.workers, x.max_tokens, x.concurrency, x.side) ==
                           (workers, tokens, c, side)]
            per_side[side] = summarise(cells[side])
            summary.append({"workers": workers, "max_tokens": tokens, "concurrency": c, "side": side,
                            **per_side[side]})
        comparison.append({"workers": workers, "max_tokens": tokens, "concurrency": c,
                           **compare(per_side[DIRECT], per_side[INGRESS]),
                           **paired_added(cells[DIRECT], cells[INGRESS])})
    others = [x.cpu_s.get("others", 0.0) / x.window_s for x in bench.cells if x.window_s]
    return {"summary": summary, "comparison": comparison, "per_token": per_token_us(comparison),
            "checks": bench.checks, "profiles": getattr(bench, "profiles", {}),
            "noise": {"others_cores_mean": statistics.fmean(others) if others else float("nan"),
                      "others_cores_max": max(others) if others else float("nan")}}


def report(result: dict[str, Any]) -> str:
    comparison = result["comparison"]
    lines = []
    p50_met = sum(r["p50_target"] == "met" for r in comparison)
    tp_met = sum(r["throughput_target"] == "met" for r in comparison)
    lines.append(f"Targets: added p50 latency <= {TARGET_ADDED_P50_MS:g} ms: met in {p50_met} of {len(comparison)} "
                 f"configurations; throughput >= {TARGET_THROUGHPUT_RATIO:.0%} of direct: met in {tp_met} of "
                 f"{len(comparison)}.")
    lines.append("\nIngress vs direct (ms; added = ingress - direct, as differences of percentiles; throughput in "
                 "requests/s; ratio = ingress / direct, overall and its range over the rounds; CPU-bound ratio = "
                 "the ratio if the cores were the only bottleneck: CPU ms per request of Triton + ingress + client, "
                 "direct / ingress, from the table below; p99s and TTFTs of each side in the last table):\n")
    shown = [{**r, "ratio_range": f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"} for r in comparison]
    lines.append(markdown_table(shown, [
        "workers", "max_tokens", "concurrency", "direct_total_p50_ms", "ingress_total_p50_ms", "added_total_p50_ms",
        "added_total_p99_ms", "direct_ttft_p50_ms", "added_ttft_p50_ms", "added_ttft_p99_ms", "direct_req_per_s",
        "ingress_req_per_s", "throughput_ratio", "ratio_range", "cpu_predicted_ratio", "p50_target",
        "throughput_target"], [
        "workers", "max_tokens", "conc.", "direct p50", "ingress p50", "added p50", "added p99", "direct TTFT p50",
        "added TTFT p50", "added TTFT p99", "direct req/s", "ingress req/s", "ratio", "ratio by round",
        "CPU-bound ratio",
        f"added p50 <= {TARGET_ADDED_P50_MS:g} ms", f"ratio >= {TARGET_THROUGHPUT_RATIO:.0%}"]))
    paired = [r for r in comparison if r.get("paired_n")]
    if paired:
        lines.append("\nConcurrency 1, paired: the two sides alternate request by request (same question), so the "
                     "median of the per-pair differences is the added latency least disturbed by the machine's "
                     "other load (ms; p25-p75 in brackets):\n")
        rows = [{**r, "pairs": int(r["paired_n"]),
                 "paired_total": f"{r['paired_added_total_p50_ms']:.2f} ({r['paired_added_total_p25_ms']:.2f} to "
                                 f"{r['paired_added_total_p75_ms']:.2f})",
                 "paired_ttft": f"{r['paired_added_ttft_p50_ms']:.2f} ({r['paired_added_ttft_p25_ms']:.2f} to "
                                f"{r['paired_added_ttft_p75_ms']:.2f})",
                 "paired_target": verdict(r["paired_added_total_p50_ms"] <= TARGET_ADDED_P50_MS)} for r in paired]
        lines.append(markdown_table(rows, ["workers", "max_tokens", "pairs", "added_total_p50_ms", "paired_total",
                                           "paired_ttft", "paired_target"],
                                    ["workers", "max_tokens", "pairs", "added p50 (difference of p50s)",
                                     "median paired added latency", "median paired added TTFT",
                                     f"paired median <= {TARGET_ADDED_P50_MS:g} ms"]))
    lines.append("\nWhere the added latency goes: the request path (to the first response: direct = the first gRPC "
                 "response, ingress = the first SSE event, sent right after it) and each streamed chunk (added p50 "
                 "at N tokens minus at 1 token, over N - 1):\n")
    first = [{"workers": r["workers"], "max_tokens": r["max_tokens"], "concurrency": r["concurrency"],
              "direct": r["direct_first_p50_ms"], "ingress": r["ingress_first_p50_ms"],
              "added": r["added_first_p50_ms"]} for r in comparison]
    lines.append(markdown_table(first, ["workers", "max_tokens", "concurrency", "direct", "ingress", "added"],
                                ["workers", "max_tokens", "conc.", "direct first response p50", "ingress first "
                                 "event p50", "added (request path)"]))
    if result["per_token"]:
        lines.append("")
        lines.append(markdown_table(result["per_token"], ["workers", "concurrency", "max_tokens",
                                                          "fixed_added_p50_ms", "per_token_added_p50_us"],
                                    ["workers", "conc.", "N", "added p50 at 1 token (ms)",
                                     "added p50 per extra token (µs)"]))
    cpu_columns = [k for k in ("cpu_triton_ms_per_req", "cpu_ingress_ms_per_req", "cpu_client_ms_per_req",
                               "cpu_others_ms_per_req") if any(k in r for r in result["summary"])]
    if cpu_columns:
        lines.append("\nCPU milliseconds per request, by process group, in the measured windows (triton = "
                     "tritonserver and its Python stubs; client = this load generator; others = every other "
                     "process on the machine, i.e. noise). Throughput at concurrency > 1 is bounded by the sum "
                     "over the cores:\n")
        rows = [{**r, "ours": sum(r.get(k, float("nan")) for k in cpu_columns if k != "cpu_others_ms_per_req")}
                for r in result["summary"]]
        lines.append(markdown_table(rows, ["workers", "max_tokens", "concurrency", "side", "requests", *cpu_columns,
                                           "ours"],
                                    ["workers", "max_tokens", "conc.", "side", "requests",
                                     *(c.removeprefix("cpu_").removesuffix("_ms_per_req") for c in cpu_columns),
                                     "triton + ingress + client"]))
    lines.append("\nEvery side and configuration (ms):\n")
    lines.append(markdown_table(result["summary"], [
        "workers", "max_tokens", "concurrency", "side", "requests", "pieces", "req_per_s", "total_p50_ms",
        "total_p90_ms", "total_p99_ms", "total_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "first_p50_ms"], [
        "workers", "max_tokens", "conc.", "side", "requests", "pieces", "req/s", "p50", "p90", "p99", "mean",
        "TTFT p50", "TTFT p99", "first p50"]))
    for workers, prof in result["profiles"].items():
        if "own" not in prof:
            lines.append(f"\nProfile (workers {workers}): py-spy failed: {prof.get('error', '')[:300]}")
            continue
        lines.append(f"\nWhere the ingress's CPU goes (workers {workers}): py-spy, {prof['seconds']:.0f} s at "
                     f"concurrency {prof['concurrency']}, max_tokens {prof['max_tokens']} "
                     f"({prof['req_per_s']:.1f} req/s), pid {prof['pid']}; share of the samples of threads "
                     "holding the GIL (py-spy --gil):\n")
        lines.append("By package (own samples of the leaf frame; a Cython or C call shows as its Python caller):\n")
        lines.append(markdown_table(prof["packages"][:10], ["package", "samples", "share_pct"],
                                    ["package", "samples", "%"]))
        lines.append("\nBusiest functions (own samples):\n")
        lines.append(markdown_table(prof["own"][:12], ["function", "samples", "share_pct"],
                                    ["function", "samples", "%"]))
        lines.append("\nThe ingress's own code (tritonrag.ingress, inclusive: with what it calls):\n")
        lines.append(markdown_table(prof["ingress"][:12], ["function", "samples", "share_pct"],
                                    ["function", "samples", "%"]))
    return "\n".join(lines)


def write_results(out: Path, bench: Bench, result: dict[str, Any], command: str, settings: Settings,
                  load: dict[str, Any]) -> None:
    samples = [{"workers": c.workers, "round": c.round, "side": c.side, "max_tokens": c.max_tokens,
                "concurrency": c.concurrency, "first_ms": round(s.first_s * 1000, 3),
                "ttft_ms": round(s.ttft_s * 1000, 3), "total_ms": round(s.total_s * 1000, 3), "pieces": s.pieces}
               for c in bench.cells for s in c.samples]
    rounds = [{"workers": c.workers, "round": c.round, "side": c.side, "max_tokens": c.max_tokens,
               "concurrency": c.concurrency, "requests": len(c.samples), "window_s": c.window_s,
               "req_per_s": c.req_per_s, "cpu_s": c.cpu_s} for c in bench.cells]
    machine = machine_description()
    data = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "settings": vars(settings),
            "targets": {"added_p50_ms": TARGET_ADDED_P50_MS, "throughput_ratio": TARGET_THROUGHPUT_RATIO},
            "machine": machine, "load_average": load, "startup_s": bench.startup_s, **result, "rounds": rounds}
    write_json(out / "results.json", data)
    write_csv(out / "samples.csv", samples)
    for workers, stacks in bench.profile_stacks.items():  # for a flame graph: flamegraph.pl or speedscope
        (out / f"py-spy-workers-{workers}.txt").write_text(stacks)
    noise = result["noise"]
    body = report(result)
    (out / "report.md").write_text(
        f"# Ingress overhead ({data['date']})\n\nCommand: `{command}`\n\n{machine_markdown(machine)}\n"
        f"- load average at the start: {', '.join(f'{x:.2f}' for x in load['start'])}; at the end: "
        f"{', '.join(f'{x:.2f}' for x in load['end'])}; CPU speed probe (CPU seconds of sum(range(10**7)), lower "
        f"is faster): {load['cpu_probe_start_s']:.2f} s at the start, {load['cpu_probe_end_s']:.2f} s at the end\n"
        f"- other processes on the machine took {noise['others_cores_mean']:.2f} cores on average in the measured "
        f"windows (at most {noise['others_cores_max']:.2f}) of {machine['cores']}\n"
        + ("- pinned (--pin): Triton and its stubs on core 0, the ingress and the load generator (this script, both "
           "clients) on the other core(s); the machine's other processes are not pinned\n" if settings.pin else
           "- the load generator (this script, both clients) shares the cores with Triton and the ingress: its CPU is "
           "part of every number below, on both sides\n") +
        f"- {settings.rounds} interleaved rounds per configuration (side order alternating); concurrency 1: "
        f"the sides alternate request by request for {2 * settings.measure_s:g} s after {settings.warmup_s:g} s "
        f"of warm-up; higher concurrencies: a closed loop per side, first requests spread over one expected "
        f"latency, warmed up for >= {settings.warmup_s:g} s and >= C completions, then >= {settings.measure_s:g} s "
        f"measured (stretched to one latency, at most 3-fold)\n"
        f"- stand-in embedder, reranker and generator (benchmarks/stand_in.toml), real retriever and prompt "
        f"builder; max_tokens {', '.join(map(str, settings.max_tokens))}, streamed; both sides gave identical "
        f"answers to the {len(bench.checks)} questions checked\n\n{body}\n")


# --------------------------------------------------------------------------------------------- main


def run(out: Path, settings: Settings, command: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    load: dict[str, Any] = {"start": os.getloadavg(), "cpu_probe_start_s": cpu_probe_s()}
    with tempfile.TemporaryDirectory(prefix="ingress-overhead-") as tmp:
        work = Path(tmp)
        bench = Bench(settings, work, log)
        try:
            bench.start_triton()
            for workers in settings.workers:
                bench.start_ingress(workers)
                try:
                    asyncio.run(bench.measure(workers))
                finally:
                    bench.ingress.stop()
        except Exception:
            for name in ("tritonserver-committed.log", *(f"ingress-{w}.log" for w in settings.workers)):
                if (work / name).exists():
                    log(f"last lines of {name}:\n" + "\n".join((work / name).read_text(errors="replace")
                                                                .splitlines()[-15:]))
            raise
        finally:
            bench.stop()
    load["end"] = os.getloadavg()
    load["cpu_probe_end_s"] = cpu_probe_s()
    result = results(bench)
    write_results(out, bench, result, command, settings, load)
    return result


def pin_cores(triton_pid: int, ingress_pid: int) -> str:
    """Triton and its stubs on core 0; the ingress (its workers too) and this process on the other cores: the
    ingress with CPU of its own, as a deployment gives it (another container or host), so the throughput ratio shows
    whether the HTTP hop itself limits throughput rather than CPU it takes from Triton."""
    import psutil

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise RuntimeError("--pin needs at least 2 cores")
    placed = {"triton": cores[:1], "ingress": cores[1:]}
    for name, pid in (("triton", triton_pid), ("ingress", ingress_pid)):
        root = psutil.Process(pid)
        for process in (root, *root.children(recursive=True)):
            for thread in process.threads():  # affinity is per thread on Linux
                os.sched_setaffinity(thread.id, placed[name])
    for thread in psutil.Process().threads():
        os.sched_setaffinity(thread.id, placed["ingress"])
    return f"Triton on cores {placed['triton']}, the ingress and the client on {placed['ingress']}"


def cpu_probe_s() -> float:
    """CPU seconds of a fixed pure-Python loop (sum(range(10**7))): how fast a core of the shared machine was
    (lower is faster; compare runs), a noise indicator that the load average does not give."""
    started = time.process_time()
    sum(range(10**7))
    return time.process_time() - started


def _ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder for report.md, results.json, samples.csv (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (< 2 min on a quiet machine): 1 worker, 1 round of 1 s windows")
    parser.add_argument("--workers", type=_ints, help="ingress worker counts to measure, one after the other "
                        "(default 1,2; quick 1)")
    parser.add_argument("--max-tokens", type=_ints, default=[16, 1],
                        help="streamed max_tokens values (default 16,1: a short answer and the fixed cost; the "
                        "[generator] default, 96, streams 96 chunks a request and runs in waves of seconds at "
                        "concurrency 64 on 2 cores, which a bounded run cannot average well)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 16, 64], help="closed-loop concurrencies "
                        "(default 1,16,64)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per configuration (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, help="least measured window of each closed loop, s (default 4; "
                        "quick 1); stretched to one latency at most 3-fold")
    parser.add_argument("--warmup", type=float, help="least warm-up of each closed loop, s (default 1; quick 0.3)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the ingress during one more closed loop and list its busiest functions")
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--pin", action="store_true",
                        help="Triton on core 0, the ingress and the load generator on the other cores (the ingress "
                        "with CPU of its own, as deployed; the machine's other processes are not pinned). Wants a "
                        "quiet machine with spare cores: on 2 busy shared cores Triton's Python stubs starved on one "
                        "core and Triton reported them unhealthy")
    args = parser.parse_args(argv)
    settings = Settings(
        workers=args.workers or ([1] if args.quick else [1, 2]), max_tokens=args.max_tokens,
        concurrencies=args.concurrency, rounds=args.rounds or (1 if args.quick else 3),
        warmup_s=args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0),
        measure_s=args.seconds or (1.0 if args.quick else 4.0), profile=args.profile, pin=args.pin,
        profile_s=args.profile_seconds)
    command = shlex.join([".venv/bin/python", "benchmarks/ingress_overhead.py", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    result = run(args.out, settings, command)
    print("\n" + report(result))
    print(f"\nwritten to {args.out}/ (report.md, results.json, samples.csv) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
