"""The ingress as a child process of `tritonrag serve` (and of the integration tests): start, wait until it
answers /health, stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from tritonrag.deploy.processes import detach_and_die_with_parent, log_tail, wait_healthy

log = logging.getLogger(__name__)


class IngressProcess:
    """`tritonrag ingress` in its own process group, logging to ``log_file``."""

    def __init__(self, triton_grpc: str, port: int, home: Path, host: str = "127.0.0.1", workers: int = 1,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 log_file: Path | None = None) -> None:
        self.triton_grpc, self.port, self.host, self.workers = triton_grpc, port, host, workers
        self.extra_args = extra_args
        self.env = {**os.environ, **(env or {})}
        self.log_file = log_file or home / "logs" / f"ingress-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104  (compared, not bound)
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tritonrag.cli", "ingress", "--triton", self.triton_grpc, "--host", self.host,
                "--port", str(self.port), "--workers", str(self.workers), *self.extra_args]

    def start(self, timeout_s: float = 60.0) -> IngressProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            preexec_fn=detach_and_die_with_parent)
        self.wait_ready(timeout_s)
        return self

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_file, lines)

    def wait_ready(self, timeout_s: float) -> None:
        if not wait_healthy(f"{self.url}/health", self.process, timeout_s, "the ingress", self.log_file, 0.3):
            self.stop()
            raise TimeoutError(f"the ingress did not answer /health in {timeout_s:.0f}s; see {self.log_file}:\n"
                               f"{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:  # it died: its workers (own process group) may not have
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the ingress did not stop in %.0fs; killing it", timeout_s)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> IngressProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
