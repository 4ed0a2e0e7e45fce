"""What the launchers of child services share: a log's last lines, and waiting until a health URL answers 200."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None, timeout_s: float, what: str, log_file: Path,
                 interval_s: float = 0.5) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout_s`` passes (False); raise RuntimeError with the
    log's tail when ``process`` exits first."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}; last lines of {log_file}:\n"
                               f"{log_tail(log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  (http(s): checked above)
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(interval_s)
    return False


def detach_and_die_with_parent() -> None:
    """In the child: own process group (Ctrl-C goes to the launcher, which stops it in order), and
    SIGTERM to the service if the launcher dies without stopping it, so no server outlives its launcher."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
