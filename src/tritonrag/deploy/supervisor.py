"""Keeps a served Triton whole without a person: restores a model whose stub died, restarts a dead tritonserver
and a dead ingress, each with exponential backoff.

What Triton 2.51 does by itself (measured: benchmarks/faults.py): when a Python backend stub is killed, the
model stays READY, ``/v2/health/ready`` stays 200, and every request to it fails with "Stub process '<model>_0_0'
is not healthy" until a person reloads it; reloading a loaded model (``load`` alone) changes nothing. So the server
runs in explicit model-control mode, and when a model's stub dies the supervisor unloads the model (readiness turns
false: load balancers and Kubernetes stop sending traffic), kills what the dead stub left behind (a vLLM engine
process), and loads the model again (a fresh stub).

Triton's own readiness cannot say so: once an unload completes, ``/v2/health/ready`` is 200 again (an unloaded
model does not count), for as long as the reload takes (minutes for vLLM). So the supervisor answers readiness
itself (``HealthServer``, ``[server] health_port``): 200 only while Triton is ready and nothing it watches is
broken or being restored. Load balancers and Kubernetes probes check that.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from tritonrag.procfs import stat_fields

log = logging.getLogger(__name__)
STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it; ``start`` (clock ticks after boot) tells a reused pid from the original."""

    pid: int
    ppid: int
    start: int
    cmdline: tuple[str, ...]

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start


def _read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat_fields(stat)
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return Proc(pid, int(fields[1]), int(fields[19]), tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a))


def process_table() -> dict[int, Proc]:
    """Every live process this user can see, by pid."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := _read_proc(int(entry))) is not None:
            table[proc.pid] = proc
    return table


def descendants(table: dict[int, Proc], root: int) -> list[Proc]:
    """The processes below ``root`` in ``table`` (children, grandchildren, ...)."""
    children: dict[int, list[Proc]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child.pid)
    return found


def model_of_stub(proc: Proc, repository: Path) -> str | None:
    """The model a Python backend stub serves: its first argument is <repository>/<model>/<version>/model.py."""
    if not proc.cmdline or not proc.cmdline[0].endswith(STUB) or len(proc.cmdline) < 2:
        return None
    try:
        return Path(proc.cmdline[1]).relative_to(repository).parts[0]
    except (ValueError, IndexError):
        return None


@dataclass
class ModelProcesses:
    """One model's stubs and what each spawned (vLLM's engine processes), as last seen."""

    stubs: set[tuple[int, int]] = field(default_factory=set)
    spawned: set[tuple[int, int]] = field(default_factory=set)


def model_processes(table: dict[int, Proc], server_pid: int, repository: Path) -> dict[str, ModelProcesses]:
    """The stubs of each model below tritonserver ``server_pid``, with their descendants."""
    models: dict[str, ModelProcesses] = {}
    for proc in descendants(table, server_pid):
        if (model := model_of_stub(proc, repository)) is not None:
            entry = models.setdefault(model, ModelProcesses())
            entry.stubs.add(proc.key)
            entry.spawned.update(p.key for p in descendants(table, proc.pid))
    return models


@dataclass
class Backoff:
    """Exponential backoff: ``initial_s``, doubling to ``max_s``; a run of ``reset_after_s`` without a failure
    starts again from ``initial_s``."""

    initial_s: float = 1.0
    max_s: float = 60.0
    reset_after_s: float = 300.0
    _next: float = 0.0
    _last_failure: float | None = None

    def delay(self, now: float) -> float:
        """The wait before the next attempt, after a failure at ``now``."""
        if self._last_failure is None or now - self._last_failure > self.reset_after_s:
            self._next = self.initial_s
        else:
            self._next = min(self.max_s, max(self.initial_s, self._next * 2))
        self._last_failure = now
        return self._next


class ModelControl:
    """Triton's model-repository API over HTTP (explicit model-control mode), with the admin header when the
    server restricts it."""

    def __init__(self, http_url: str, admin_key: str | None = None) -> None:
        self.base = f"http://{http_url}"
        self.headers = {"triton-admin-key": admin_key} if admin_key else {}

    def _post(self, path: str, timeout_s: float) -> None:
        request = urllib.request.Request(self.base + path, data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                return
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise RuntimeError(f"{path}: HTTP {exc.code}: {detail}") from None

    def unload(self, model: str) -> None:
        self._post(f"/v2/repository/models/{model}/unload", 60)

    def load(self, model: str, timeout_s: float) -> None:
        self._post(f"/v2/repository/models/{model}/load", timeout_s)

    def ready(self, model: str | None = None) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False


class Restartable(Protocol):
    """A child service the supervisor can restart (TritonServer, IngressProcess)."""

    process: Any
    log_file: Path

    def start(self, timeout_s: float = ...) -> Any: ...

    def stop(self, timeout_s: float = ...) -> None: ...


def kill_all(keys: Iterable[tuple[int, int]]) -> int:
    """SIGKILL the processes named by (pid, start) that still run as themselves; how many were killed."""
    killed = 0
    for pid, start in keys:
        proc = _read_proc(pid)
        if proc is not None and proc.start == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


@dataclass
class Event:
    """Something the supervisor saw or did, for the log and the fault benchmark."""

    at: float
    what: str  # "model-died", "model-restored", "model-restore-failed", "server-died", "server-restarted", ...
    target: str
    detail: str = ""


class _Load:
    """A model load on a daemon thread: Triton's load call blocks until the model is ready (minutes for vLLM), and
    the supervisor must keep watching the server meanwhile (Triton 2.51 once segfaulted during such a load)."""

    def __init__(self, control: ModelControl, model: str, timeout_s: float) -> None:
        self.error: str | None = None
        self.seconds = 0.0
        self.done = threading.Event()
        started = time.monotonic()

        def run() -> None:
            try:
                control.load(model, timeout_s)
            except Exception as exc:  # reported as the load's failure, retried with backoff
                self.error = str(exc) or type(exc).__name__
            finally:
                self.seconds = time.monotonic() - started
                self.done.set()

        threading.Thread(target=run, name=f"supervisor-load-{model}", daemon=True).start()


class Supervisor:
    """Watches a tritonserver (and optionally the ingress) and restores what breaks; call ``check`` every
    ``interval_s`` (``run`` does)."""

    def __init__(self, server: Any, control: ModelControl, *, startup_timeout_s: float = 300.0,
                 backoff: Callable[[], Backoff] = Backoff, ingress: Restartable | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.server, self.control, self.ingress = server, control, ingress
        self.startup_timeout_s = startup_timeout_s
        self.on_event = on_event or (lambda event: log.warning("%s %s %s", event.what, event.target, event.detail))
        self._new_backoff = backoff
        self._backoffs: dict[str, Backoff] = {}
        self._retry_at: dict[str, float] = {}
        self._broken: set[str] = set()  # models unloaded and waiting to be loaded again
        self.restarting: str | None = None  # the service being restarted now ("tritonserver", "ingress")
        self._loading: dict[str, _Load] = {}  # models being loaded again, each on a thread of its own
        self.watched: dict[str, ModelProcesses] = {}
        self.events: list[Event] = []
        self.deaths = 0  # processes seen dead (a model's stubs, tritonserver): requests in flight then are lost
        self.rescan()

    def _event(self, what: str, target: str, detail: str = "") -> None:
        event = Event(time.time(), what, target, detail)
        self.events.append(event)
        self.on_event(event)

    def rescan(self) -> None:
        """Record the processes of every model now loaded."""
        if self.server.process is not None and self.server.process.poll() is None:
            found = model_processes(process_table(), self.server.process.pid, self.server.model_repository)
            self.watched.update(found)

    def _due(self, target: str) -> bool:
        return time.monotonic() >= self._retry_at.get(target, 0.0)

    def _failed(self, target: str) -> float:
        delay = self._backoffs.setdefault(target, self._new_backoff()).delay(time.monotonic())
        self._retry_at[target] = time.monotonic() + delay
        return delay

    def check(self) -> None:
        """One pass: the server, then each model's stubs, then the ingress."""
        if self.server.process is None or self.server.process.poll() is not None:
            self._restart_server()
        else:
            self._check_models()
        if self.ingress is not None and (self.ingress.process is None or self.ingress.process.poll() is not None):
            self._restart("ingress", self.ingress, "ingress")

    def _check_models(self) -> None:
        table = process_table()
        alive = {proc.key for proc in table.values()}
        for model, processes in list(self.watched.items()):
            if model in self._broken or not processes.stubs or processes.stubs <= alive:
                continue
            dead = len(processes.stubs - alive)
            left = kill_all(processes.spawned | processes.stubs)
            self.deaths += 1
            self._event("model-died", model, f"{dead} stub(s) gone; killed {left} process(es) they left")
            self._broken.add(model)
            try:
                self.control.unload(model)  # readiness false until it is loaded again
            except (OSError, RuntimeError) as exc:
                self._event("model-unload-failed", model, str(exc))
        for model in sorted(self._broken):
            loading = self._loading.get(model)
            if loading is not None:
                if not loading.done.is_set():
                    continue  # still loading; the server is watched meanwhile (it may die during a load)
                del self._loading[model]
                self._restored(model, loading)
            elif self._due(model):
                self._loading[model] = _Load(self.control, model, self.startup_timeout_s)

    def _restored(self, model: str, loading: _Load) -> None:
        if loading.error is not None:
            delay = self._failed(model)
            self._event("model-restore-failed", model, f"{loading.error}; retrying in {delay:.0f}s")
            return
        self._broken.discard(model)
        self.watched.pop(model, None)
        self.rescan()
        self._event("model-restored", model, f"loaded again in {loading.seconds:.1f}s")

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until no model load runs (tests)."""
        deadline = time.monotonic() + timeout_s
        for loading in list(self._loading.values()):
            loading.done.wait(max(0.0, deadline - time.monotonic()))

    def _restart_server(self) -> None:
        if not self._due("tritonserver"):
            return
        code = self.server.process.returncode if self.server.process is not None else None
        self.deaths += 1
        self._loading.clear()  # loads in flight on the dead server: their threads end on their own
        self._event("server-died", "tritonserver", f"exit code {code}; restarting")
        self.watched.clear()
        self._broken.clear()
        if self._restart("tritonserver", self.server, "tritonserver"):
            self.rescan()

    def _restart(self, target: str, service: Restartable, name: str) -> bool:
        if not self._due(target):
            return False
        started = time.monotonic()
        self.restarting = target
        try:
            service.stop()  # whatever is left of it (its process group)
            service.start(self.startup_timeout_s)
        except (OSError, RuntimeError, TimeoutError) as exc:
            delay = self._failed(target)
            self._event(f"{name}-restart-failed", target, f"{str(exc).splitlines()[0]}; retrying in {delay:.0f}s")
            return False
        finally:
            self.restarting = None
        self._event(f"{name}-restarted", target, f"ready again in {time.monotonic() - started:.1f}s")
        return True

    def status(self) -> dict[str, Any]:
        """Readiness as the supervisor sees it: Triton ready, no model broken, no service restarting."""
        server_up = self.server.process is not None and self.server.process.poll() is None
        triton_ready = server_up and self.restarting != "tritonserver" and self.control.ready()
        broken = sorted(self._broken)
        ingress_up = self.ingress is None or (self.ingress.process is not None
                                              and self.ingress.process.poll() is None)
        return {"ready": bool(triton_ready and not broken and self.restarting is None), "triton_ready": triton_ready,
                "broken_models": broken, "restarting": self.restarting, "ingress_running": ingress_up,
                "deaths": self.deaths,
                "events": [asdict(event) for event in self.events[-20:]]}

    def run(self, interval_s: float = 1.0, stop: Callable[[], bool] = lambda: False) -> None:
        """Check every ``interval_s`` until ``stop()`` is true (or KeyboardInterrupt)."""
        while not stop():
            self.check()
            time.sleep(interval_s)


class HealthServer:
    """The supervisor's readiness over HTTP on a thread: ``/health/ready`` (200 or 503, JSON: what is broken,
    recent events) and ``/health/live`` (200 while the supervisor runs)."""

    def __init__(self, supervisor: Supervisor, port: int, host: str = "127.0.0.1") -> None:
        watched = supervisor

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/health/live":
                    self._send(200, {"status": "live"})
                elif path in ("/health/ready", "/health"):
                    status = watched.status()
                    self._send(200 if status["ready"] else 503, status)
                else:
                    self._send(404, {"error": f"no route {path}: use /health/ready or /health/live"})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # probes every second: not worth a log line each
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="supervisor-health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
