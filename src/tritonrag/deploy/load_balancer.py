"""HAProxy in front of several tritonrag replicas (each a tritonserver and its ingress): the configuration, rendered
from the settings, and a foreground haproxy process with its stats page (the integration test, benchmarks/replicas.py).

Three front ends, each with a backend of every replica: the ingress's OpenAI-compatible API (health: GET /health, 200
only while the ingress's Triton is ready), Triton's HTTP and Triton's gRPC (HTTP/2 cleartext, `proto h2`). Triton's
health is its supervisor's GET /health/ready (`tritonrag serve`, port 8003) where the replica names that port, else
Triton's own GET /v2/health/ready on its HTTP port; the gRPC backend checks it in HTTP/1 (`port ... check-proto h1`).

`python -m tritonrag.deploy.load_balancer` writes deploy/haproxy/haproxy.cfg, the compose layout's (docker/compose.yaml:
replicas triton-1/ingress-1 and triton-2/ingress-2, Docker's DNS); tests/unit/test_load_balancer.py checks that the
committed file is what the renderer gives today.
"""

from __future__ import annotations

import csv
import io
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tritonrag.settings import Settings, load_settings

HAPROXY_CFG = Path(__file__).resolve().parents[3] / "deploy" / "haproxy" / "haproxy.cfg"
BACKENDS = ("ingress", "triton_http", "triton_grpc")


@dataclass(frozen=True)
class Replica:
    """One replica's addresses: its Triton's HTTP and gRPC ports, and its ingress's port (None: no ingress)."""

    name: str
    host: str
    http: int
    grpc: int
    ingress: int | None = None
    ingress_host: str | None = None  # the ingress's host when it is not ``host`` (compose: a container of its own)
    # the port of its supervisor's readiness (`tritonrag serve`, [server] health_port: GET /health/ready), checked
    # instead of Triton's /v2/health/ready, which is 200 again while a broken model is being restored; None: a bare
    # tritonserver, checked on its HTTP port
    health: int | None = None


@dataclass(frozen=True)
class Frontends:
    """Where haproxy listens. Ports 0: the settings' ([ingress] port, [server] http_port and grpc_port)."""

    bind: str = "*"
    ingress: int = 0
    http: int = 0
    grpc: int = 0
    stats: int = 8404


@dataclass(frozen=True)
class HealthCheck:
    """How fast a replica leaves and rejoins the pool. A dead replica (connection refused) fails a check at most
    ``inter_s`` after it died, then ``fall - 1`` more every ``fastinter_s``: out after <= 1 + 2 x 0.5 = 2 s. Back
    after ``rise`` good checks (the first within ``downinter_s``, the next ``fastinter_s`` later): <= 1.5 s.
    ``timeout_s`` bounds one check (a Triton busy on 2 cores answers ready in milliseconds; a host that vanished
    without a reset fails each check after it)."""

    inter_s: float = 1.0
    fastinter_s: float = 0.5
    downinter_s: float = 1.0
    fall: int = 3
    rise: int = 2
    timeout_s: float = 2.0


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def stream_timeout_s(settings: Settings) -> float:
    """The longest silence a request may have, either way: a non-streamed answer is silent until it is complete,
    which the ingress bounds by [ingress] request_timeout_s and rag by [rag] bls_timeout_s. 30 s more, so that the
    service answers its own timeout error before haproxy cuts the connection."""
    return max(settings.ingress.request_timeout_s, settings.rag.bls_timeout_s) + 30.0


def render_haproxy(replicas: list[Replica], settings: Settings, frontends: Frontends = Frontends(),
                   health: HealthCheck = HealthCheck(), stats_socket: str | None = None,
                   resolver: str | None = None, log_target: str = "stdout") -> str:
    """The haproxy.cfg serving ``replicas``. ``resolver`` (e.g. Docker's "127.0.0.11:53"): host names are resolved
    at run time, so haproxy starts while a replica is down and follows a container that comes back on a new
    address; without one they are resolved once, at start (IP addresses in the tests)."""
    if not replicas:
        raise ValueError("render_haproxy needs at least one replica")
    if len({r.name for r in replicas}) != len(replicas):
        raise ValueError(f"replica names must differ: {[r.name for r in replicas]}")
    if len({r.health is None for r in replicas}) != 1:
        raise ValueError("give every replica a supervisor's health port, or none (one check path per backend)")
    triton_check = "/v2/health/ready" if replicas[0].health is None else "/health/ready"
    ingress_port = frontends.ingress or settings.ingress.port
    http_port = frontends.http or settings.server.http_port
    grpc_port = frontends.grpc or settings.server.grpc_port
    silence = _ms(stream_timeout_s(settings))
    checks = (f"inter {_ms(health.inter_s)} fastinter {_ms(health.fastinter_s)} downinter {_ms(health.downinter_s)} "
              f"fall {health.fall} rise {health.rise}")
    if resolver:
        checks += " resolvers dns init-addr last,libc,none"
    lines = [
        "# haproxy in front of tritonrag replicas, rendered by tritonrag.deploy.load_balancer.render_haproxy from",
        "# the settings: do not edit by hand (`python -m tritonrag.deploy.load_balancer` writes this file).",
        "global",
        f"    log {log_target} format raw local0 notice" if log_target == "stdout" else f"    log {log_target} local0",
        "    maxconn 4096",
    ]
    if stats_socket:
        lines.append(f"    stats socket {stats_socket} mode 600 level admin  # `set server ingress/NAME state drain`")
    if resolver:
        lines += ["", "resolvers dns", f"    nameserver dns {resolver}", "    hold valid 5s",
                  "    accepted_payload_size 8192"]
    lines += [
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        "    # Requests that had not started on a replica go to another one. conn-failure: refused or timed out",
        "    # before the request was sent; empty-response: the replica closed (crashed) before answering anything;",
        "    # junk-response: it died while writing its answer's headers (HAProxy's 502 \"invalid or incomplete",
        "    # response\", seen when a replica was killed under load);",
        "    # 503: the ingress's \"Triton unavailable\"; response-timeout: nothing within `timeout server`. A request",
        "    # is retried only while the client has received nothing, and only if it fits in one buffer",
        "    # (tune.bufsize, 16 kB). Retrying our POSTs is safe: inference is stateless (a RAG answer, an embedding,",
        "    # a search), nothing is written, so a replayed request only costs its compute again. The one thing never",
        "    # retried is a stream that has begun: its client sees it cut, and asks again. Each retry goes to another",
        "    # replica (redispatch 1).",
        "    retries 2",
        "    option redispatch 1",
        "    option http-buffer-request  # the whole request in the buffer first, so that it can be replayed",
        "    retry-on conn-failure empty-response junk-response response-timeout 503",
        "    timeout connect 2s",
        "    # No request or stream waits on a silent peer forever: a non-streamed answer is silent until complete",
        "    # ([ingress] request_timeout_s, [rag] bls_timeout_s, + 30 s), and so may a client be while it reads a",
        "    # stream; streams of tokens are never silent that long. tunnel: upgraded connections, the same bound.",
        f"    timeout client {silence}",
        f"    timeout server {silence}",
        f"    timeout tunnel {silence}",
        "    timeout client-fin 5s",
        "    timeout server-fin 5s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 10s",
        f"    timeout check {_ms(health.timeout_s)}",
        "    # A replica host that vanishes without resetting its connections: TCP keep-alive ends them in ~20 s.",
        "    option srvtcpka",
        "    srvtcpka-idle 10s",
        "    srvtcpka-intvl 3s",
        "    srvtcpka-cnt 3",
        "    option clitcpka",
        "    # Not `on-marked-down shutdown-sessions`: a replica draining (Triton answers not ready on SIGINT) is",
        "    # marked down yet finishes its streams in flight; a dead one has reset them already.",
        f"    default-server check {checks}",
        "",
        "# The OpenAI-compatible API: one ingress per replica, each in front of its own Triton.",
        "frontend ingress",
        f"    bind {frontends.bind}:{ingress_port}",
        "    option forwardfor",
        "    default_backend ingress",
        "",
        "backend ingress",
        "    balance leastconn",
        "    option httpchk GET /health  # 200 only while this ingress's Triton is ready",
        "    http-check expect status 200",
    ]
    lines += [f"    server {r.name} {r.ingress_host or r.host}:{r.ingress}" for r in replicas if r.ingress]
    lines += [
        "",
        "# Triton's HTTP/REST (KServe v2 and /generate, /generate_stream).",
        "frontend triton_http",
        f"    bind {frontends.bind}:{http_port}",
        "    default_backend triton_http",
        "",
        "backend triton_http",
        "    balance leastconn",
        f"    option httpchk GET {triton_check}",
        "    http-check expect status 200",
        *[f"    server {r.name} {r.host}:{r.http}" + (f" port {r.health}" if r.health else "") for r in replicas],
        "",
        "# Triton's gRPC: HTTP/2 cleartext both sides; health checked in HTTP/1, as for Triton's HTTP.",
        "frontend triton_grpc",
        f"    bind {frontends.bind}:{grpc_port} proto h2",
        "    default_backend triton_grpc",
        "",
        "backend triton_grpc",
        "    balance leastconn",
        f"    option httpchk GET {triton_check}",
        "    http-check expect status 200",
        *[f"    server {r.name} {r.host}:{r.grpc} proto h2 port {r.health or r.http} check-proto h1" for r in replicas],
        "",
        "# Every server's state (UP, DOWN), checks and sessions: /stats (HTML), /stats;csv. /healthz answers 503 when",
        "# no ingress is up (the container's health check).",
        "listen stats",
        f"    bind {frontends.bind}:{frontends.stats}",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 2s",
        "    stats show-legends",
        "    monitor-uri /healthz",
        "    monitor fail if { nbsrv(ingress) eq 0 }",
        "",
    ]
    return "\n".join(lines)


def compose_replicas(count: int = 2) -> list[Replica]:
    """docker/compose.yaml's replicas: services triton-N (8000, 8001) and ingress-N (8080)."""
    return [Replica(f"replica-{i}", f"triton-{i}", 8000, 8001, 8080, f"ingress-{i}", 8003)
            for i in range(1, count + 1)]


def render_compose(settings: Settings | None = None) -> str:
    """deploy/haproxy/haproxy.cfg: the compose layout, with the default settings (not $TRITONRAG_CONFIG's)."""
    settings = settings or load_defaults()
    return render_haproxy(compose_replicas(), settings, stats_socket="/tmp/haproxy-admin.sock",  # noqa: S108 (tmpfs)
                          resolver="127.0.0.11:53")


def load_defaults() -> Settings:
    """The package's default settings alone (the committed haproxy.cfg must not depend on who renders it)."""
    import os

    from tritonrag.settings import CONFIG_ENV

    saved = os.environ.pop(CONFIG_ENV, None)
    try:
        return load_settings()
    finally:
        if saved is not None:
            os.environ[CONFIG_ENV] = saved


def server_states(stats_url: str, timeout_s: float = 2.0) -> dict[tuple[str, str], str]:
    """{(backend, server): status} from the stats page's CSV ("UP", "DOWN", "UP 1/2", "DOWN 1/3", "MAINT"...)."""
    with urllib.request.urlopen(f"{stats_url};csv;norefresh", timeout=timeout_s) as response:  # noqa: S310
        text = response.read().decode().lstrip("# ")
    states = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row["svname"] not in ("FRONTEND", "BACKEND"):
            states[(row["pxname"], row["svname"])] = row["status"]
    return states


def server_sessions(stats_url: str, timeout_s: float = 2.0) -> dict[tuple[str, str], int]:
    """{(backend, server): sessions served so far} (the stats CSV's stot)."""
    with urllib.request.urlopen(f"{stats_url};csv;norefresh", timeout=timeout_s) as response:  # noqa: S310
        text = response.read().decode().lstrip("# ")
    return {(row["pxname"], row["svname"]): int(row["stot"] or 0) for row in csv.DictReader(io.StringIO(text))
            if row["svname"] not in ("FRONTEND", "BACKEND")}


class HAProxyProcess:
    """haproxy in the foreground (-db) on a rendered configuration, logging to ``log_file``."""

    def __init__(self, config: str, workdir: Path, stats_port: int, executable: str | None = None) -> None:
        self.executable = executable or shutil.which("haproxy") or "haproxy"
        self.config_file = workdir / "haproxy.cfg"
        self.log_file = workdir / "haproxy.log"
        self.config = config
        self.stats_url = f"http://127.0.0.1:{stats_port}/stats"
        self.process: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """`haproxy -c`: the configuration is valid (raises with haproxy's words otherwise)."""
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config)
        result = subprocess.run([self.executable, "-c", "-f", str(self.config_file)],  # noqa: S603
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise ValueError(f"haproxy rejects {self.config_file}:\n{result.stdout}{result.stderr}")

    def start(self, timeout_s: float = 15.0) -> HAProxyProcess:
        self.check()
        with open(self.log_file, "wb") as out:
            self.process = subprocess.Popen([self.executable, "-f", str(self.config_file), "-db"],  # noqa: S603
                                            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.log_file.read_text()}")
            try:
                server_states(self.stats_url)
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"haproxy's stats page did not answer in {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGUSR1)  # soft stop: stops listening, lets connections end
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> HAProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Write (or, with --check, compare) deploy/haproxy/haproxy.cfg."""
    args = sys.argv[1:] if argv is None else argv
    text = render_compose()
    if "--check" in args:
        current = HAPROXY_CFG.read_text() if HAPROXY_CFG.is_file() else ""
        if current != text:
            print(f"{HAPROXY_CFG} is out of date: run python -m tritonrag.deploy.load_balancer", file=sys.stderr)
            return 1
        return 0
    HAPROXY_CFG.parent.mkdir(parents=True, exist_ok=True)
    HAPROXY_CFG.write_text(text)
    print(f"wrote {HAPROXY_CFG}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
