"""Run the ingress under uvicorn: one process, or several workers (multiprocess metrics, limits shared out)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, fields

from tritonrag.ingress.app import OVERRIDES_ENV, check_exposure
from tritonrag.ingress.keys import KeyStore
from tritonrag.ingress.metrics import MULTIPROC_ENV
from tritonrag.settings import IngressSettings


def serve(config: IngressSettings, defaults: IngressSettings, log_level: str = "warning") -> None:
    """Serve until interrupted. ``config`` differs from ``defaults`` (the settings) by the command line's options,
    which reach the worker processes through the environment."""
    import uvicorn

    check_exposure(config, KeyStore.load(config.api_keys_file, os.environ.get(config.api_keys_env)))
    changed = {f.name: getattr(config, f.name) for f in fields(config)
               if getattr(config, f.name) != getattr(defaults, f.name)}
    os.environ[OVERRIDES_ENV] = json.dumps(changed)
    if config.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="tritonrag-ingress-metrics-")
    uvicorn.run("tritonrag.ingress.app:create_app", factory=True, host=config.host, port=config.port,
                workers=config.workers, log_level=log_level, timeout_graceful_shutdown=10,
                server_header=False, proxy_headers=True)


def describe(config: IngressSettings) -> str:
    shown = {k: v for k, v in asdict(config).items() if k in ("host", "port", "workers", "triton_grpc")}
    return ", ".join(f"{k} {v}" for k, v in shown.items())
