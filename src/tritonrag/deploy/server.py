"""A tritonserver process on a model repository: ports, start, wait until ready, stop cleanly."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tritonrag.deploy.processes import detach_and_die_with_parent, log_tail, wait_healthy
from tritonrag.deploy.runtime import find_runtime, prepare_backend_dir, server_env

log = logging.getLogger(__name__)
# Triton's APIs that control or reveal the server rather than run inference: restricted to callers that send the
# admin header whenever Triton listens beyond localhost (Triton 2.51's --http-restricted-api and
# --grpc-restricted-protocol): HTTP callers send the header triton-admin-key, gRPC callers
# triton-grpc-protocol-triton-admin-key (Triton prefixes gRPC's). model-config stays open: clients (the ingress) read
# a model's max_batch_size. Health, metadata and inference stay open to every caller.
RESTRICTED_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
ADMIN_HEADER = "triton-admin-key"
ADMIN_KEY_ENV = "TRITONRAG_TRITON_ADMIN_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def admin_key(home: Path) -> str:
    """The value of Triton's admin header: $TRITONRAG_TRITON_ADMIN_KEY, else a random one kept (mode 0600) in
    $TRITONRAG_HOME/triton-admin-key for the operator's tools."""
    if os.environ.get(ADMIN_KEY_ENV):
        return os.environ[ADMIN_KEY_ENV]
    path = home / "triton-admin-key"
    if path.is_file():
        return path.read_text().strip()
    import secrets

    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def restricted_args(address: str, home: Path) -> list[str]:
    """The flags restricting Triton's admin and model-control APIs when it listens beyond localhost."""
    if address in LOOPBACK:
        return []
    rule = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={admin_key(home)}"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def choose(cls, http: int, grpc: int, metrics: int) -> Ports:
        """The preferred ports where free, otherwise any free ones (logged)."""
        chosen: list[int] = []
        for name, port in (("http", http), ("grpc", grpc), ("metrics", metrics)):
            if port <= 0 or port in chosen or not port_is_free(port):
                new = free_port()
                while new in chosen:
                    new = free_port()
                if port > 0:
                    log.warning("%s port %d is busy; using %d", name, port, new)
                port = new
            chosen.append(port)
        return cls(*chosen)


class TritonServer:
    """A tritonserver process on a model repository: start, wait until ready, stop cleanly."""

    def __init__(
        self,
        model_repository: Path,
        home: Path,
        ports: Ports,
        log_file: Path | None = None,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        address: str = "127.0.0.1",
        models: tuple[str, ...] = ("*",),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.home = home
        self.ports = ports
        self.log_file = log_file or home / "logs" / f"tritonserver-{ports.http}.log"
        self.extra_env = env or {}
        self.extra_args = extra_args
        self.address = address
        self.models = models
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def command(self) -> list[str]:
        runtime = find_runtime(self.home)
        args = [
            str(runtime.server),
            f"--model-repository={self.model_repository}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=20",
            # explicit model control: a model whose stub died can be unloaded and loaded again (the supervisor)
            "--model-control-mode=explicit",
            *(f"--load-model={model}" for model in self.models),
        ]
        if runtime.origin == "local":
            args.append(f"--backend-directory={prepare_backend_dir(runtime, self.home)}")
        return [*args, *restricted_args(self.address, self.home), *self.extra_args]

    def start(self, timeout_s: float = 300.0) -> TritonServer:
        runtime = find_runtime(self.home)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting tritonserver (%s), log: %s", runtime.origin, self.log_file)
        with open(self.log_file, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=server_env(runtime, self.extra_env),
                preexec_fn=detach_and_die_with_parent,
            )
        self.wait_ready(timeout_s)
        return self

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_file, lines)

    def wait_ready(self, timeout_s: float) -> None:
        url = f"http://{self.http_url}/v2/health/ready"
        if not wait_healthy(url, self.process, timeout_s, "tritonserver (while loading models)", self.log_file):
            self.stop()
            raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f}s; see {self.log_file}:\n"
                               f"{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT (Triton drains in-flight requests and unloads the models), then SIGKILL whatever is left of
        its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0fs; killing it", timeout_s)
        # Whatever is left of Triton's process group (a stub, or processes an engine such as vLLM spawned)
        # would otherwise outlive the server.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
