"""`tritonrag`: set up, index, serve and query the RAG service."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .config import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

DEMO_QUESTIONS = (
    "Describe the body of water in Utah",
    "Tell me as much as you can about the robbery",
    "Did Phileas Fogg really rob the bank?",
)
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def _repository(path: Path | None) -> Path:
    repo = path or REPOSITORY
    if not (repo / "rag" / "config.pbtxt").exists():
        raise typer.BadParameter(f"{repo} is not a tritonrag model repository; pass --model-repository")
    return repo


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@app.command("install-runtime")
def install_runtime_cmd(
    wheel: Annotated[Path | None, typer.Option(help="A local nvidia-pytriton wheel instead of pip download.")] = None,
) -> None:
    """Unpack tritonserver and its Python backend from the nvidia-pytriton wheel (skipped when installed).

    Not needed in the NGC tritonserver container, where `tritonserver` is on PATH.
    """
    from .runtime import install_runtime

    root = install_runtime(load_settings().home, wheel)
    console.print(f"Triton runtime ready in {root}")


@app.command("prepare-models")
def prepare_models_cmd(force: Annotated[bool, typer.Option(help="Convert again.")] = False) -> None:
    """Convert the packaged Gemma-3-270M GGUF into the HF folder the generator loads (once)."""
    from .model_prep import convert_packaged_gemma, is_converted

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


@app.command()
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders of .txt/.md documents.")] = None,
    index_dir: Annotated[Path | None, typer.Option(help="Where to write the knowledge base.")] = None,
    sample: Annotated[bool, typer.Option(help="Index the sample book (Around the World in 80 Days).")] = False,
    if_missing: Annotated[bool, typer.Option(
        help="Do nothing when the index exists and matches the current embedder and chunking settings.")] = False,
) -> None:
    """Chunk, embed and index documents into a knowledge base.

    Examples:\n
      tritonrag ingest ~/notes ~/papers/paper.md\n
      tritonrag ingest --sample
    """
    from .ingest import build_index, sample_corpus
    from .knowledge_base import is_current

    settings = load_settings()
    target = index_dir or settings.index_dir
    chunking = settings.chunking
    if if_missing and is_current(target, settings.embedder.model, chunking.chunk_tokens, chunking.overlap_tokens):
        console.print(f"knowledge base already in {target}")
        return
    if sample or not paths:
        try:
            paths = [sample_corpus()]
        except FileNotFoundError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    started = time.monotonic()
    manifest = build_index(paths, settings, target)
    console.print(f"indexed {manifest.documents} documents as {manifest.chunks} chunks ({manifest.dimension}-d) "
                  f"into {target} in {time.monotonic() - started:.0f}s")


@app.command()
def render(
    model_repository: Annotated[Path | None, typer.Option(help="Repository to write.")] = None,
    check: Annotated[bool, typer.Option(help="Only report files that differ; exit 1 if any.")] = False,
) -> None:
    """Write every config.pbtxt from the settings (defaults + $TRITONRAG_CONFIG)."""
    from .repository import render_repository

    differing = render_repository(load_settings(), model_repository or REPOSITORY, check=check)
    for path in differing:
        console.print(f"{'differs' if check else 'wrote'}: {path}")
    if check and differing:
        raise typer.Exit(1)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_server(model_repository: Path | None, http_port: int | None, grpc_port: int | None,
                  metrics_port: int | None, host: str = "127.0.0.1"):
    from .runtime import Ports, TritonServer

    settings = load_settings()
    ports = Ports.choose(http_port or settings.server.http_port, grpc_port or settings.server.grpc_port,
                         metrics_port or settings.server.metrics_port)
    server = TritonServer(_repository(model_repository), settings.home, ports, address=host)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops Triton as cleanly as Ctrl-C
    with console.status(f"starting Triton (models loading; log: {server.log_file})..."):
        started = time.monotonic()
        server.start(settings.server.startup_timeout_s)
    console.print(f"Triton ready in {time.monotonic() - started:.0f}s: HTTP {server.http_url}, "
                  f"gRPC {server.grpc_url}, metrics {server.metrics_url}")
    return server


@app.command()
def serve(
    model_repository: Annotated[Path | None, typer.Option(help="Model repository to serve.")] = None,
    http_port: Annotated[int | None, typer.Option()] = None,
    grpc_port: Annotated[int | None, typer.Option()] = None,
    metrics_port: Annotated[int | None, typer.Option()] = None,
    host: Annotated[str, typer.Option(help="Address for HTTP and gRPC; 0.0.0.0 to serve other hosts.")] = "127.0.0.1",
) -> None:
    """Run Triton on the model repository until Ctrl-C.

    Example: tritonrag serve --http-port 8000, then: tritonrag ask "Who is Passepartout?"
    """
    server = _start_server(model_repository, http_port, grpc_port, metrics_port, host)
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
        console.print(f"[red]tritonserver exited[/red]; see {server.log_file}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping Triton...")
    finally:
        server.stop()


@app.command()
def demo(
    protocol: Annotated[str, typer.Option(help="http or grpc.")] = "http",
    model_repository: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Start Triton, stream answers to the original demo's three questions with their sources, stop."""
    from tritonrag_client import RagAnswer, RagClient
    from tritonrag_client.cli import print_sources

    server = _start_server(model_repository, None, None, None)
    try:
        client = RagClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
        for question in DEMO_QUESTIONS:
            console.rule(f"[bold]{question}")
            answer, started, first = RagAnswer(), time.monotonic(), None
            for event in client.stream(question):
                if event.text and first is None:
                    first = time.monotonic() - started
                answer.add(event)
                console.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
            print_sources(answer.sources)
            console.print(f"[dim]first token {first or 0:.2f}s, total {time.monotonic() - started:.2f}s, "
                          f"finish: {answer.finish_reason}[/dim]")
    finally:
        server.stop()


def _register_ask() -> None:
    from tritonrag_client.cli import ask

    app.command(help=ask.__doc__)(ask)


_register_ask()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
