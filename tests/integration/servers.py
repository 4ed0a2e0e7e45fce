"""Servers an integration test module starts of its own: a tritonserver on the committed model repository with
settings of its own, and a throwaway redis-server."""

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tritonrag.deploy.server import Ports, TritonServer
from tritonrag.settings import CONFIG_ENV, load_settings

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@contextlib.contextmanager
def triton_with(config: Path, log_file: Path, models: Sequence[str] = ("*",)) -> Iterator[TritonServer]:
    """A started tritonserver on free ports reading ``config`` (TRITONRAG_CONFIG), loading ``models`` (default:
    all), logging to ``log_file``; stopped on exit."""
    settings = load_settings(config)
    server = TritonServer(REPOSITORY, settings.home, Ports.choose(0, 0, 0), env={CONFIG_ENV: str(config)},
                          log_file=log_file, models=tuple(models))
    server.start(settings.server.startup_timeout_s)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server on a free loopback port, persisting nothing (skips the test when redis-server is missing);
    yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it from Debian)")
    port = Ports.choose(0, 0, 0).http
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
