"""`tritonrag install-runtime` and `prepare-models`: what scripts/setup.sh runs once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tritonrag.cli.app import app, console
from tritonrag.settings import load_settings


@app.command("install-runtime")
def install_runtime_cmd(
    wheel: Annotated[Path | None, typer.Option(help="A local nvidia-pytriton wheel instead of pip download.")] = None,
) -> None:
    """Unpack tritonserver and its Python backend from the nvidia-pytriton wheel (skipped when installed).

    Not needed in the NGC tritonserver container, where `tritonserver` is on PATH.
    """
    from tritonrag.deploy.runtime import install_runtime

    root = install_runtime(load_settings().home, wheel)
    console.print(f"Triton runtime ready in {root}")


@app.command("prepare-models")
def prepare_models_cmd(force: Annotated[bool, typer.Option(help="Convert again.")] = False) -> None:
    """Convert the packaged Gemma-3-270M GGUF into the HF folder the generator loads (once)."""
    from tritonrag.generation.model_prep import convert_packaged_gemma, is_converted

    settings = load_settings()
    target = Path(settings.generator.model)
    if is_converted(target) and not force:
        console.print(f"generator model ready in {target}")
        return
    if target.exists() and not is_converted(target) and not force:
        console.print(f"{target} exists and is not ours: leaving it alone")
        return
    with console.status("converting Gemma-3-270M GGUF -> safetensors (about a minute)..."):
        started = time.monotonic()
        convert_packaged_gemma(target, force=force)
    console.print(f"generator model ready in {target} ({time.monotonic() - started:.0f}s)")
