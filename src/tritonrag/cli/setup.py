"""`tritonrag install-runtime` and `prepare-models`: what scripts/setup.sh runs once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tritonrag.cli.app import app, console, exit_on
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
def prepare_models_cmd(
    model: Annotated[str | None, typer.Option(
        "--model", help="A packaged model's name (see --list); default: the one \\[generator] model names.")] = None,
    force: Annotated[bool, typer.Option(help="Install and convert again.")] = False,
    list_models: Annotated[bool, typer.Option("--list", help="List the packaged models and exit.")] = False,
) -> None:
    """Convert a packaged generator model (GGUF inside PyPI packages) into the HF folder the generator loads (once).

    Without --model it prepares the model that \\[generator] model names (the default: Qwen2.5-Coder-0.5B-Instruct).
    To use another, prepare it, then set \\[generator] model = "{home}/models/NAME" in the file named by
    TRITONRAG_CONFIG. --model all-mpnet-base-v2 unpacks the reranker's default encoder (sha256 checked; a second run
    only checks it).

    Examples:\n
      tritonrag prepare-models\n
      tritonrag prepare-models --list\n
      tritonrag prepare-models --model qwen2.5-coder-0.5b-instruct\n
      tritonrag prepare-models --model smollm2-135m-instruct --force\n
      tritonrag prepare-models --model all-mpnet-base-v2
    """
    from tritonrag.generation import packaged_models as pm
    from tritonrag.generation.model_prep import is_converted
    from tritonrag.reranking.packaged import ENCODERS

    settings = load_settings()
    configured = settings.generator.model
    if list_models:
        _print_registry(settings.home, configured)
        return
    if model in ENCODERS:
        _prepare_encoder(model, settings.reranker.model, settings.home, force)
        return
    with exit_on(ValueError):
        name = model or _configured_name(configured)
        entry = pm.lookup(name)
    target = pm.resolve_target(name, configured, settings.home)
    if is_converted(target) and not force:
        console.print(f"generator model {name} ready in {target}")
        return
    if target.exists() and not is_converted(target) and not force:
        console.print(f"{target} exists and is not ours: leaving it alone")
        return
    with console.status(f"preparing {name}: install, verify sha256, convert GGUF -> safetensors (minutes)..."):
        started = time.monotonic()
        with exit_on(pm.PackagedModelError, OSError):
            pm.prepare(entry.name, target, settings.home, force=force)
    console.print(f"generator model {name} ready in {target} ({time.monotonic() - started:.0f}s)")
    if Path(configured) != target:
        console.print(f'to use it: [generator] model = "{target}" in the file named by TRITONRAG_CONFIG', markup=False)


def _prepare_encoder(name: str, configured: str, home: Path, force: bool) -> None:
    """Unpack a packaged encoder into the [reranker] model folder when it is this one's, else {home}/models/NAME."""
    from tritonrag.generation import packaged_models as pm
    from tritonrag.reranking import packaged

    target = pm.resolve_target(name, configured, home)
    if target.exists() and not packaged.is_prepared(target) and not force:
        console.print(f"{target} exists and is not ours: leaving it alone")
        return
    checking = packaged.is_prepared(target) and not force
    what = "checking sha256" if checking else "install, verify sha256, unpack (a 404 MB download the first time)"
    with console.status(f"preparing {name}: {what}..."):
        started = time.monotonic()
        with exit_on(pm.PackagedModelError, OSError, ValueError):
            packaged.prepare(name, target, home, force=force)
    console.print(f"encoder {name} ready in {target} ({time.monotonic() - started:.0f}s)")
    if Path(configured) != target:
        console.print(f'to use it: [reranker] model = "{target}" in the file named by TRITONRAG_CONFIG', markup=False)


def _configured_name(configured: str) -> str:
    from tritonrag.generation import packaged_models as pm

    entry = pm.registry_model_for(configured)
    if entry is None:
        raise ValueError(
            f"[generator] model = {configured!r} is not a packaged model, so there is nothing to prepare "
            f"(an HF id or folder loads as it is); pass --model with one of: {', '.join(pm.REGISTRY)}"
        )
    return entry.name


def _print_registry(home: Path, configured: str) -> None:
    from rich.table import Table

    from tritonrag.generation import packaged_models as pm
    from tritonrag.generation.model_prep import is_converted

    table = Table("name", "what", "size", "licence", "provenance", "prepared")
    for entry in pm.REGISTRY.values():
        target = pm.resolve_target(entry.name, configured, home)
        how = "project dependency" if entry.dependency else "pip --no-deps outside the venv, never imported"
        provenance = f"{entry.packages_label} ({how}); GGUF sha256 {entry.sha256[:12]}…"
        prepared = f"yes: {target}" if is_converted(target) else "no"
        table.add_row(entry.name, entry.what, f"{entry.size_bytes / 1e6:.0f} MB", entry.licence, provenance, prepared)
    from tritonrag.reranking import packaged

    for encoder in packaged.ENCODERS.values():
        entry = encoder.package
        target = pm.resolve_target(entry.name, load_settings().reranker.model, home)
        provenance = (f"{entry.packages_label} (pip --no-deps outside the venv, never imported); "
                      f"{packaged.WEIGHTS} sha256 {encoder.weights_sha256[:12]}…")
        prepared = f"yes: {target}" if packaged.is_prepared(target) else "no"
        table.add_row(entry.name, entry.what, f"{entry.size_bytes / 1e6:.0f} MB", entry.licence, provenance, prepared)
    console.print(table)
