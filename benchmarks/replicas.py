"""Two replicas behind HAProxy: kill one under load, measure what the clients see, bring it back.

Each replica is a tritonserver on the committed model repository with the stand-in embedder, reranker and generator
(benchmarks/stand_in.toml, plus a max_tokens limit that allows streams of a few seconds and no per-key limits) and
its own ingress. haproxy (Debian's, foreground) fronts the ingresses, Triton's HTTP and Triton's gRPC with the
configuration tritonrag.deploy.load_balancer renders. Worker threads send requests through haproxy: short
non-streamed ones (Triton HTTP /generate, ingress /v1/chat/completions), long streams (Triton HTTP
/generate_stream, ingress stream=true, gRPC stream) and short gRPC streams. Then replica-1's whole process groups
(tritonserver + its Python stubs, the ingress + its workers) get SIGKILL; the run times how long until haproxy
marks all of its servers DOWN, keeps the load on, restarts the replica on the same ports, times how long until it
is UP again, and checks it serves again (haproxy's per-server session counts).

Requests are sorted into phases by when they started: before the kill (and in flight at it), between the kill
and DOWN (the window haproxy still had it in the pool), after DOWN, after the restart. Failures of each phase are
counted; every request has a bound (none hangs).

  .venv/bin/python benchmarks/replicas.py   # ~1-2 minutes; writes benchmarks/results/replicas/report.md

tests/integration/test_replicas.py runs the same scenario (run_failover) and asserts on it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
STAND_IN = ROOT / "benchmarks" / "stand_in.toml"
REPORT = ROOT / "benchmarks" / "results" / "replicas" / "report.md"
API_KEY = "replicas-key-" + "0" * 24
QUESTION = "Who is Passepartout?"
LONG_TOKENS = 2000   # a stream of ~2-5 s on 2 busy cores: some are in flight at the kill
SHORT_TOKENS = 8
REQUEST_BOUND_S = 30.0  # every request ends (answer or error) within this; nothing hangs
DEAD = ("DOWN", "MAINT", "NOLB")


@dataclass
class Outcome:
    kind: str
    start: float
    end: float
    ok: bool
    error: str = ""


@dataclass
class Figures:
    """What one run measured (times in seconds, relative to the kill where it says so)."""

    outcomes: list[Outcome] = field(default_factory=list)
    kill_at: float = 0.0
    down_at: dict[str, float] = field(default_factory=dict)      # backend -> seconds after the kill
    restart_ready_at: float = 0.0                                 # the restarted Triton + ingress answer health
    up_at: dict[str, float] = field(default_factory=dict)        # backend -> seconds after restart_ready_at
    served_after_up: dict[str, int] = field(default_factory=dict)  # backend -> sessions replica-1 got after UP
    states_down: dict[str, str] = field(default_factory=dict)
    states_up: dict[str, str] = field(default_factory=dict)
    grpc_ok: bool = False
    probe_failures: list[str] = field(default_factory=list)  # requests sent one by one once it was UP again

    def phase(self, outcome: Outcome) -> str:
        down = self.kill_at + max(self.down_at.values(), default=0.0)
        if outcome.start < self.kill_at:
            return "before the kill" if outcome.end < self.kill_at else "in flight at the kill"
        if outcome.start < down:
            return "kill -> DOWN"
        if outcome.start < self.restart_ready_at:
            return "DOWN -> restarted"
        return "after the restart"

    def table(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(phase, kind) -> (requests, failures)."""
        cells: dict[tuple[str, str], list[int]] = {}
        for o in self.outcomes:
            cell = cells.setdefault((self.phase(o), o.kind), [0, 0])
            cell[0] += 1
            cell[1] += 0 if o.ok else 1
        return {key: (n, f) for key, (n, f) in cells.items()}


def settings_file(directory: Path) -> Path:
    """benchmarks/stand_in.toml + streams long enough to be cut + no per-key limits, as a TOML file."""
    raw = tomllib.loads(STAND_IN.read_text())
    raw.setdefault("generator", {})["max_tokens_limit"] = 100000
    raw.setdefault("ingress", {}).update(rate_limit_rpm=0, max_concurrency_per_key=0)
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = directory / "replicas.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def distinct_free_ports(count: int) -> list[int]:
    """``count`` ports free now and all different (held open together while they are picked)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class ReplicaProcesses:
    """One replica: a tritonserver and an ingress in front of it, each in its own process group."""

    def __init__(self, name: str, home: Path, config: Path, logs: Path, ports: list[int]) -> None:
        from tritonrag.deploy.server import Ports

        self.name, self.home, self.config, self.logs = name, home, config, logs
        self.ports = Ports(*ports[:3])
        self.ingress_port = ports[3]
        self.triton = None
        self.ingress = None
        self.starts = 0

    def start(self, timeout_s: float = 300.0) -> ReplicaProcesses:
        from tritonrag.deploy.ingress_process import IngressProcess
        from tritonrag.deploy.server import TritonServer
        from tritonrag.settings import CONFIG_ENV

        self.starts += 1
        env = {CONFIG_ENV: str(self.config)}
        self.triton = TritonServer(REPOSITORY, self.home, self.ports, env=env,
                                   log_file=self.logs / f"{self.name}-triton-{self.starts}.log")
        self.triton.start(timeout_s)
        self.ingress = IngressProcess(self.triton.grpc_url, self.ingress_port, self.home,
                                      env={**env, "TRITONRAG_API_KEYS": f"replicas:{API_KEY}"},
                                      log_file=self.logs / f"{self.name}-ingress-{self.starts}.log")
        self.ingress.start()
        return self

    def kill(self) -> None:
        """SIGKILL to both process groups (tritonserver and its stubs; the ingress and its workers), at once."""
        for service in (self.triton, self.ingress):
            if service is not None and service.process is not None:
                try:
                    os.killpg(service.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for service in (self.triton, self.ingress):
            if service is not None and service.process is not None:
                service.process.wait(10)

    def stop(self) -> None:
        if self.ingress is not None:
            self.ingress.stop()
        if self.triton is not None:
            self.triton.stop()

    def address(self):
        from tritonrag.deploy.load_balancer import Replica

        return Replica(self.name, "127.0.0.1", self.ports.http, self.ports.grpc, self.ingress_port)


# --- the clients: each returns normally on a complete answer and raises on anything else -----------------------

def _post(url: str, body: dict, headers: dict | None = None):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    return urllib.request.urlopen(request, timeout=REQUEST_BOUND_S)


def triton_unary(lb: dict) -> None:
    with _post(f"http://{lb['http']}/v2/models/rag/generate",
               {"text_input": QUESTION, "parameters": {"max_tokens": SHORT_TOKENS}}) as response:
        body = json.loads(response.read())
    if not body.get("text_output"):
        raise RuntimeError(f"no text_output in {body}")


def ingress_unary(lb: dict) -> None:
    with _post(f"http://{lb['ingress']}/v1/chat/completions",
               {"model": "rag", "max_tokens": SHORT_TOKENS, "messages": [{"role": "user", "content": QUESTION}]},
               {"Authorization": f"Bearer {API_KEY}"}) as response:
        body = json.loads(response.read())
    if not body["choices"][0]["message"]["content"]:
        raise RuntimeError(f"no content in {body}")


def _read_sse(response, done) -> None:
    """Read an SSE stream to its end; raise unless ``done(data)`` held for some event (a stream cut short)."""
    finished = False
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data:") and done(line[5:].strip()):
            finished = True
    if not finished:
        raise ConnectionError("stream ended without its final event (truncated)")


def triton_stream(lb: dict) -> None:
    with _post(f"http://{lb['http']}/v2/models/rag/generate_stream",
               {"text_input": QUESTION, "parameters": {"max_tokens": LONG_TOKENS, "stream": True}}) as response:
        _read_sse(response, lambda data: '"finish_reason"' in data and json.loads(data).get("finish_reason"))


def ingress_stream(lb: dict) -> None:
    with _post(f"http://{lb['ingress']}/v1/chat/completions",
               {"model": "rag", "max_tokens": LONG_TOKENS, "stream": True,
                "messages": [{"role": "user", "content": QUESTION}]},
               {"Authorization": f"Bearer {API_KEY}"}) as response:
        _read_sse(response, lambda data: data == "[DONE]")


def _grpc(lb: dict, max_tokens: int) -> None:
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(lb["grpc"])
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)),
                            stream_timeout=REQUEST_BOUND_S)
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([QUESTION.encode()], dtype=np.object_))
        client.async_stream_infer("rag", [text], parameters={"max_tokens": max_tokens, "stream": True},
                                  enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=REQUEST_BOUND_S)
            if error is not None:
                raise ConnectionError(f"gRPC stream ended with an error: {error}")
            if result.get_response().parameters["triton_final_response"].bool_param:
                return
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def grpc_short(lb: dict) -> None:
    _grpc(lb, SHORT_TOKENS)


def grpc_stream(lb: dict) -> None:
    _grpc(lb, LONG_TOKENS)


CLIENTS = {"triton HTTP": (triton_unary, 2), "ingress": (ingress_unary, 2), "gRPC short stream": (grpc_short, 1),
           "triton HTTP stream": (triton_stream, 1), "ingress stream": (ingress_stream, 1),
           "gRPC stream": (grpc_stream, 1)}
STREAMS = ("triton HTTP stream", "ingress stream", "gRPC stream", "gRPC short stream")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
    if isinstance(exc, http.client.IncompleteRead):
        return "IncompleteRead (the stream was cut)"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class Load:
    """Worker threads, each sending one kind of request after another until stopped."""

    def __init__(self, lb: dict, clients: dict) -> None:
        self.lb, self.clients = lb, clients
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.running = threading.Event()  # cleared: workers wait before their next request (a restart loads)
        self.running.set()
        self.in_flight = 0
        self.threads = [threading.Thread(target=self._work, args=(kind, call), daemon=True)
                        for kind, (call, count) in clients.items() for _ in range(count)]

    def _work(self, kind, call) -> None:
        while not self.stopping.is_set():
            if not self.running.wait(0.2):
                continue
            with self.lock:
                self.in_flight += 1
            start = time.monotonic()
            try:
                call(self.lb)
                outcome = Outcome(kind, start, time.monotonic(), True)
            except Exception as exc:  # every failure is counted, none ends the worker
                outcome = Outcome(kind, start, time.monotonic(), False, _describe(exc))
            with self.lock:
                self.outcomes.append(outcome)
                self.in_flight -= 1
            self.stopping.wait(0.05)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(REQUEST_BOUND_S + 5)
        if any(thread.is_alive() for thread in self.threads):
            raise TimeoutError(f"a client was still waiting {REQUEST_BOUND_S + 5:.0f}s after the load stopped")


def _wait_states(stats_url: str, server: str, wanted, deadline_s: float, since: float) -> dict[str, float]:
    """Poll haproxy's stats every 50 ms until ``server`` is ``wanted`` in every backend; seconds since ``since``."""
    from tritonrag.deploy.load_balancer import BACKENDS, server_states

    reached: dict[str, float] = {}
    deadline = time.monotonic() + deadline_s
    while len(reached) < len(BACKENDS) and time.monotonic() < deadline:
        states = server_states(stats_url)
        for backend in BACKENDS:
            if backend not in reached and wanted(states.get((backend, server), "")):
                reached[backend] = time.monotonic() - since
        time.sleep(0.05)
    return reached


def _wait_idle(load: Load, timeout_s: float) -> None:
    """Until every request in flight has ended (the workers are paused)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with load.lock:
            if load.in_flight == 0:
                return
        time.sleep(0.1)


def run_failover(workdir: Path, warm_s: float = 4.0, down_s: float = 5.0, after_s: float = 4.0,
                 clients: dict | None = None) -> Figures:
    """The whole scenario (~1-2 minutes); ``workdir`` gets the settings, haproxy.cfg and every log."""
    from tritonrag.deploy.load_balancer import (
        BACKENDS,
        Frontends,
        HAProxyProcess,
        render_haproxy,
        server_sessions,
        server_states,
    )
    from tritonrag.settings import load_settings

    config = settings_file(workdir)
    settings = load_settings(config)
    logs = workdir / "logs"
    ports = distinct_free_ports(12)  # 4 per replica, 4 for haproxy: none may take another's
    replicas = [ReplicaProcesses(f"replica-{i}", settings.home, config, logs, ports[4 * i - 4:4 * i])
                for i in (1, 2)]
    figures = Figures()
    haproxy = None
    try:
        # One after the other, from this thread: a child's "die with the launcher" signal (PR_SET_PDEATHSIG)
        # fires when the thread that started it ends, so no pool threads here.
        for replica in replicas:
            replica.start(settings.server.startup_timeout_s)
        frontends = Frontends("127.0.0.1", *ports[8:12])
        cfg = render_haproxy([r.address() for r in replicas], settings, frontends,
                             stats_socket=str(workdir / "haproxy.sock"))
        haproxy = HAProxyProcess(cfg, workdir, frontends.stats).start()
        up = _wait_states(haproxy.stats_url, "replica-1", lambda s: s == "UP", 20, time.monotonic())
        up2 = _wait_states(haproxy.stats_url, "replica-2", lambda s: s == "UP", 20, time.monotonic())
        if len(up) < len(BACKENDS) or len(up2) < len(BACKENDS):
            raise RuntimeError(f"not every server came UP: {server_states(haproxy.stats_url)}\n"
                               f"{haproxy.log_file.read_text()[-3000:]}")
        lb = {"http": f"127.0.0.1:{frontends.http}", "grpc": f"127.0.0.1:{frontends.grpc}",
              "ingress": f"127.0.0.1:{frontends.ingress}"}
        try:  # gRPC through haproxy (h2 both sides)
            grpc_short(lb)
            figures.grpc_ok = True
        except Exception as exc:
            print(f"gRPC through haproxy failed, left out of the load: {_describe(exc)}", file=sys.stderr)
        chosen = clients or {k: v for k, v in CLIENTS.items() if figures.grpc_ok or not k.startswith("gRPC")}
        load = Load(lb, chosen)
        with load:
            time.sleep(warm_s)
            figures.kill_at = time.monotonic()
            replicas[0].kill()
            figures.down_at = _wait_states(haproxy.stats_url, "replica-1", lambda s: s.startswith(DEAD), 20,
                                           figures.kill_at)
            figures.states_down = {b: s for (b, n), s in server_states(haproxy.stats_url).items() if n == "replica-1"}
            time.sleep(down_s)
            # The load pauses while the replica loads its models (on 2 shared cores it would take minutes),
            # and resumes once it answers health, before haproxy has seen it UP.
            load.running.clear()
            _wait_idle(load, REQUEST_BOUND_S)
            replicas[0].start(settings.server.startup_timeout_s)
            figures.restart_ready_at = time.monotonic()
            load.running.set()
            figures.up_at = _wait_states(haproxy.stats_url, "replica-1", lambda s: s == "UP", 20,
                                         figures.restart_ready_at)
            figures.states_up = {b: s for (b, n), s in server_states(haproxy.stats_url).items() if n == "replica-1"}
            before = server_sessions(haproxy.stats_url)
            # Besides the load (which a busy machine may run slowly), a few requests one after another: with
            # leastconn the replica with no stream in flight, the restarted one, gets them.
            probes = [triton_unary, ingress_unary] * 3 + ([grpc_short] * 2 if figures.grpc_ok else [])
            for probe in probes:
                try:
                    probe(lb)
                except Exception as exc:
                    figures.probe_failures.append(f"{probe.__name__}: {_describe(exc)}")
            time.sleep(after_s)
            after = server_sessions(haproxy.stats_url)
        figures.served_after_up = {b: after[(b, "replica-1")] - before[(b, "replica-1")] for b in BACKENDS}
        figures.outcomes = sorted(load.outcomes, key=lambda o: o.start)
        return figures
    finally:
        if haproxy is not None:
            haproxy.stop()
        for replica in replicas:
            replica.stop()


def report(figures: Figures, wall_s: float, command: str) -> str:
    table = figures.table()
    phases = ["before the kill", "in flight at the kill", "kill -> DOWN", "DOWN -> restarted", "after the restart"]
    kinds = sorted({kind for _, kind in table})
    lines = [
        "# Two replicas behind HAProxy: one killed under load",
        "",
        f"Command: `{command}` (wall time {wall_s:.0f} s, including both Tritons' starts).",
        "",
        "Two replicas (tritonserver with the stand-in embedder, reranker and generator of benchmarks/stand_in.toml, "
        "each with its own ingress) behind Debian's haproxy "
        f"({haproxy_version()}), configured by tritonrag.deploy.load_balancer.render_haproxy (checks every 1 s, "
        "0.5 s while changing state, fall 3, rise 2; retry-on conn-failure empty-response response-timeout 503, "
        "redispatch). Load through haproxy: non-streamed requests (Triton HTTP /generate and the ingress's "
        f"/v1/chat/completions, {SHORT_TOKENS} tokens), long streams ({LONG_TOKENS} tokens: Triton HTTP "
        "/generate_stream, the ingress with stream=true"
        + (", gRPC" if figures.grpc_ok else "") + ")"
        + (f" and short gRPC streams ({SHORT_TOKENS} tokens)" if figures.grpc_ok else "")
        + ". replica-1's process groups (tritonserver + its Python stubs, the ingress + its worker) get SIGKILL "
        "together; it is restarted on the same ports a few seconds after haproxy marked it DOWN.",
        "",
        "| measure | seconds |",
        "| --- | --- |",
    ]
    for backend, seconds in sorted(figures.down_at.items()):
        lines.append(f"| kill -> `{backend}/replica-1` DOWN | {seconds:.2f} |")
    for backend, seconds in sorted(figures.up_at.items()):
        lines.append(f"| restarted replica (Triton, then its ingress) answers health -> `{backend}/replica-1` UP "
                     f"| {seconds:.2f} |")
    lines += [
        "",
        "(Triton's backends see it UP while its ingress is still starting, hence their ~0 s.)",
        "",
        "Sessions replica-1 served in the seconds after it was UP again (the load, and a few requests sent one by "
        "one): " + ", ".join(f"{b} {n}" for b, n in sorted(figures.served_after_up.items()))
        + f"; {len(figures.probe_failures)} of those one-by-one requests failed.",
        "",
        "Requests (failed / sent) by the phase they started in:",
        "",
        "| kind | " + " | ".join(phases) + " |",
        "| --- |" + " --- |" * len(phases),
    ]
    for kind in kinds:
        cells = [f"{table[(p, kind)][1]} / {table[(p, kind)][0]}" if (p, kind) in table else "-" for p in phases]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    longest = max((o.end - o.start for o in figures.outcomes), default=0.0)
    errors: dict[str, int] = {}
    for o in figures.outcomes:
        if not o.ok:
            errors[f"{o.kind}: {o.error[:140]}"] = errors.get(f"{o.kind}: {o.error[:140]}", 0) + 1
    lines += ["", f"Longest request: {longest:.1f} s (bound {REQUEST_BOUND_S:.0f} s: nothing hung).", ""]
    if errors:
        lines += ["What the failed requests' clients saw:", ""]
        lines += [f"- {n} x {text}" for text, n in sorted(errors.items())]
    return "\n".join(lines) + "\n"


def haproxy_version() -> str:
    import subprocess

    try:
        out = subprocess.run([shutil.which("haproxy") or "haproxy", "-v"], capture_output=True, text=True,
                             timeout=10).stdout
    except OSError:
        return "haproxy not found"
    return out.splitlines()[0].split(" - ")[0] if out else "haproxy"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPORT)
    parser.add_argument("--workdir", type=Path, help="keep the settings, haproxy.cfg and logs here")
    args = parser.parse_args()
    if shutil.which("haproxy") is None:
        print("haproxy is not installed (apt-get install haproxy; scripts/setup.sh does as root)", file=sys.stderr)
        return 2
    started = time.monotonic()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = run_failover(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tritonrag-replicas-") as tmp:
            figures = run_failover(Path(tmp))
    text = report(figures, time.monotonic() - started, ".venv/bin/python benchmarks/replicas.py")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
