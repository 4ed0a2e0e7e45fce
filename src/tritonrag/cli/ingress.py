"""`tritonrag ingress` (the OpenAI-compatible HTTP service) and `tritonrag ingress-key` (create an API key)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from tritonrag.cli.app import app, console, exit_on
from tritonrag.settings import load_settings


@app.command()
def ingress(
    triton: Annotated[str | None, typer.Option(
        "--triton", help="Triton's gRPC endpoint HOST:PORT (default: \\[ingress] triton_grpc).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to serve (default: \\[ingress] host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve (default: \\[ingress] port, 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: \\[ingress] workers).")] = None,
    triton_health: Annotated[str | None, typer.Option(
        "--triton-health",
        help="The supervisor's readiness URL of that Triton (default: \\[ingress] triton_health).")] = None,
    api_keys_file: Annotated[Path | None, typer.Option(
        "--api-keys-file", help="API keys, one per line (`tritonrag ingress-key` writes them).")] = None,
    allow_anonymous: Annotated[bool, typer.Option(
        "--allow-anonymous", help="Serve other hosts without API keys.")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
) -> None:
    """Serve the OpenAI-compatible API (and the chat page at /) in front of a running Triton.

    Examples:
      tritonrag ingress --triton 127.0.0.1:8001            # http://127.0.0.1:8080/v1, chat page at /
      tritonrag ingress --triton triton:8001 --host 0.0.0.0 --workers 4 --api-keys-file /etc/tritonrag/keys
      OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=... python -c "import openai; ..."
    """
    from tritonrag.ingress.keys import KeyFileError
    from tritonrag.ingress.run import describe, serve

    settings = load_settings()
    defaults = settings.ingress
    options = {"triton_grpc": triton, "triton_health": triton_health, "host": host, "port": port, "workers": workers,
               "api_keys_file": str(api_keys_file) if api_keys_file else None,
               "allow_anonymous": True if allow_anonymous else None}
    with exit_on(ValueError, KeyFileError):
        config = replace(defaults, **{k: v for k, v in options.items() if v is not None})
        console.print(f"ingress: {describe(config)}; OpenAI API at http://{config.host}:{config.port}/v1, "
                      f"chat page at http://{config.host}:{config.port}/", markup=False, highlight=False)
        serve(config, defaults, log_level)


@app.command("ingress-key")
def ingress_key(
    name: Annotated[str, typer.Option(help="A name for the key (logs and per-key limits show it).")] = "default",
    file: Annotated[Path | None, typer.Option(
        help="Append the key's hash to this keys file (default: \\[ingress] api_keys_file, if set).")] = None,
) -> None:
    """Create an API key: print it once, and store only its SHA-256 hash in the keys file.

    Examples:
      tritonrag ingress-key --name alice --file ~/.config/tritonrag/api-keys
    """
    from tritonrag.ingress.keys import hashed_line, new_key

    if not name.replace("-", "").replace("_", "").isalnum():
        raise typer.BadParameter("use letters, digits, - and _ in a key's name")
    target = file or (Path(load_settings().ingress.api_keys_file) if load_settings().ingress.api_keys_file else None)
    key = new_key()
    if target is not None:
        target = target.expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as out:
            out.write(hashed_line(name, key) + "\n")
        console.print(f"stored the hash of key {name!r} in {target}", markup=False, highlight=False)
    else:
        console.print("no keys file (--file or [ingress] api_keys_file): put this line in one, or the key in "
                      f"$TRITONRAG_API_KEYS:\n{hashed_line(name, key)}", markup=False, highlight=False)
    console.print(f"API key (shown once): {key}", markup=False, highlight=False)
