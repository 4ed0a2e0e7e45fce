"""`tritonrag`: set up, index, serve and query the RAG service."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


IndexDir = Annotated[Path | None, typer.Option(help="Knowledge base folder (default: [retriever] index_dir).")]
IndexType = Annotated[str | None, typer.Option(help="flat, ivf or hnsw (default: [index] type).")]
Via = Annotated[str | None, typer.Option(
    help="Embed through a running Triton's `embedder` at this gRPC address (host:8001) instead of in-process.")]
Concurrency = Annotated[int, typer.Option(help="Concurrent embedding requests with --via.")]


@contextmanager
def _exit_on(*errors: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Turn the expected ``errors`` into their message in red and exit status 1 (no traceback)."""
    try:
        yield
    except errors as exc:
        console.print(f"{prefix}{exc}", style="red", markup=False)
        raise typer.Exit(1) from None


def _open_knowledge_base(index_dir: Path | None):
    from .knowledge_base import KnowledgeBase

    with _exit_on(FileNotFoundError, ValueError):
        return KnowledgeBase(index_dir or load_settings().index_dir)


def _index_spec(settings, index_type: str | None, nlist: int | None = None, m: int | None = None,
                ef_construction: int | None = None, keep_current: bool = False):
    """The index to build: as asked, else (``keep_current``: None, the current version's) the settings'."""
    from .index_types import IndexSpec

    if keep_current and index_type is None:
        return None
    base = IndexSpec.from_settings(settings.index)
    try:
        return IndexSpec(index_type or base.type, base.ivf_nlist if nlist is None else nlist,
                         m or base.hnsw_m, ef_construction or base.hnsw_ef_construction)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _embedder(settings, via: str | None, concurrency: int):
    if via is None:
        return None
    from .remote_embedding import TritonEmbedder

    with _exit_on(RuntimeError):
        return TritonEmbedder(via, settings.embedder, concurrency=concurrency)


def _load(paths: list[Path]):
    from .loaders import load_documents

    with _exit_on(FileNotFoundError, ValueError), console.status("reading documents..."):
        return load_documents(paths)


def _run_update(target: Path, settings, **kwargs) -> None:
    from .ingest import update_knowledge_base

    started = time.monotonic()
    with _exit_on(ValueError, RuntimeError, FileNotFoundError):
        report = update_knowledge_base(target, settings, **kwargs)
    console.print(f"{report.summary()}\n  into {target} in {time.monotonic() - started:.0f}s")


@app.command()
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Files or folders of .txt, .md, .html, .pdf and .jsonl (BEIR rows) documents.")] = None,
    index_dir: IndexDir = None,
    sample: Annotated[bool, typer.Option(help="Index the sample book (Around the World in 80 Days).")] = False,
    if_missing: Annotated[bool, typer.Option(
        help="Do nothing when the index exists and matches the current embedder and chunking settings.")] = False,
    index_type: IndexType = None,
    via: Via = None,
    concurrency: Concurrency = 8,
) -> None:
    """Build a knowledge base holding exactly these documents, published as a new version.

    Unchanged documents of the current version keep their vectors; an interrupted build resumes where it
    stopped. A running retriever picks the new version up without dropping a request.

    Examples:\n
      tritonrag ingest ~/notes ~/papers/paper.pdf\n
      tritonrag ingest --sample\n
      tritonrag ingest ../shared/data/scifact/corpus.jsonl --index-type hnsw --via localhost:8001
    """
    from .ingest import sample_corpus
    from .knowledge_base import is_current

    settings = load_settings()
    target = index_dir or settings.index_dir
    chunking = settings.chunking
    if if_missing and is_current(target, settings.embedder.model, chunking.chunk_tokens, chunking.overlap_tokens):
        console.print(f"knowledge base already in {target}")
        return
    if sample or not paths:
        with _exit_on(FileNotFoundError):
            paths = [sample_corpus()]
    docs = _load(paths)
    _run_update(target, settings, upserts=docs, replace_all=True, spec=_index_spec(settings, index_type),
                embedder=_embedder(settings, via, concurrency))


kb_app = typer.Typer(no_args_is_help=True, help="Inspect and change a knowledge base: add, delete, reindex, "
                     "stats, versions, rollback.")
app.add_typer(kb_app, name="kb")


@kb_app.command("add")
def kb_add(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to add (or update, when changed).")],
    index_dir: IndexDir = None,
    index_type: IndexType = None,
    via: Via = None,
    concurrency: Concurrency = 8,
) -> None:
    """Add documents, or update stored ones whose content changed; only those are embedded.

    The index keeps its current type unless --index-type says otherwise.

    Example: tritonrag kb add ~/notes/new-chapter.md
    """
    settings = load_settings()
    _run_update(index_dir or settings.index_dir, settings, upserts=_load(paths),
                spec=_index_spec(settings, index_type, keep_current=True),
                embedder=_embedder(settings, via, concurrency))


@kb_app.command("delete")
def kb_delete(
    sources: Annotated[list[str], typer.Argument(help="Sources to delete, as `tritonrag kb documents` lists them.")],
    index_dir: IndexDir = None,
    index_type: IndexType = None,
) -> None:
    """Delete documents by source (nothing is re-embedded).

    Example: tritonrag kb delete notes/old.md "corpus.jsonl#4983"
    """
    settings = load_settings()
    _run_update(index_dir or settings.index_dir, settings, deletes=sources,
                spec=_index_spec(settings, index_type, keep_current=True))


@kb_app.command("reindex")
def kb_reindex(
    index_type: IndexType = None,
    nlist: Annotated[int | None, typer.Option(help="IVF lists (0 = 4 * sqrt(vectors)).")] = None,
    m: Annotated[int | None, typer.Option(help="HNSW links per node.")] = None,
    ef_construction: Annotated[int | None, typer.Option(help="HNSW build-time candidate list.")] = None,
    index_dir: IndexDir = None,
) -> None:
    """Publish the current contents with another index type or parameters (from the stored vectors).

    Example: tritonrag kb reindex --index-type hnsw --m 32
    """
    from .ingest import reindex

    settings = load_settings()
    target = index_dir or settings.index_dir
    with _exit_on(FileNotFoundError, RuntimeError):
        report = reindex(target, _index_spec(settings, index_type, nlist, m, ef_construction),
                         settings.index.keep_versions)
    console.print(f"{report.summary()}; index built in {report.seconds['index_s']:.1f}s")


@kb_app.command("stats")
def kb_stats(
    url: Annotated[str | None, typer.Option(
        help="Ask the running retriever (HTTP host:8000) instead of reading the files.")] = None,
    index_dir: IndexDir = None,
) -> None:
    """Version, index type, vectors, dimension, memory and docstore counts, as JSON.

    Examples:\n
      tritonrag kb stats\n
      tritonrag kb stats --url localhost:8000   (what the server is serving right now)
    """
    import json

    if url:
        from tritonrag_client import retriever_stats

        with _exit_on(Exception, prefix=f"could not ask {url}: "):
            stats = retriever_stats(url)
    else:
        kb = _open_knowledge_base(index_dir)
        stats = kb.stats()
        kb.close()
    console.print_json(json.dumps(stats))


@kb_app.command("documents")
def kb_documents(
    index_dir: IndexDir = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (0 = all).")] = 50,
) -> None:
    """List the stored documents: source, title, chunks."""
    from rich.table import Table

    kb = _open_knowledge_base(index_dir)
    table = Table("source", "title", "chunks")
    for source, title, n in kb.documents(limit):
        table.add_row(source, title[:60], str(n))
    console.print(table)
    kb.close()


@kb_app.command("versions")
def kb_versions(index_dir: IndexDir = None) -> None:
    """List the stored versions; the published one is marked."""
    from rich.table import Table

    from .kb_store import list_versions, published_version, read_manifest, versions_dir

    root = index_dir or load_settings().index_dir
    published = published_version(root)
    table = Table("", "version", "created", "index", "documents", "chunks", "parent")
    for name in list_versions(root):
        m = read_manifest(versions_dir(root) / name)
        table.add_row("*" if name == published else "", name, m.created_at, m.index_type, str(m.documents),
                      str(m.chunks), m.parent or "")
    console.print(table)


@kb_app.command("rollback")
def kb_rollback(
    version: Annotated[str, typer.Argument(help="A stored version, e.g. v000002.")],
    index_dir: IndexDir = None,
) -> None:
    """Publish an older stored version again (the retriever swaps it in)."""
    from .ingest import rollback

    root = index_dir or load_settings().index_dir
    with _exit_on(FileNotFoundError, RuntimeError):
        rollback(root, version)
    console.print(f"published {version} of {root}")


SpecPath = Annotated[Path | None, typer.Option(
    "--spec", help="Deployment spec (YAML); default: the CPU spec, deploy/specs/cpu.yaml. Examples in deploy/specs/.")]


DetectGpus = Annotated[bool, typer.Option(
    "--detect-gpus", help="Place on this machine's GPUs (nvidia-smi) instead of the spec's inventory.")]


def _plan(spec: Path | None, detect_gpus: bool = False):
    from .deploy_spec import SpecError
    from .deployment import load_plan
    from .repository import default_plan

    try:
        if spec is None and detect_gpus:
            raise SpecError("--detect-gpus needs --spec: the default CPU spec places nothing on GPUs")
        return load_plan(spec, load_settings(), use_machine_gpus=detect_gpus) if spec else default_plan(load_settings())
    except (SpecError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _print_plan(plan, spec: Path | None) -> None:
    from rich.table import Table

    from .deployment import gpu_rows, plan_rows

    gpus = ", ".join(f"{g.index}: {g.memory_gib:g} GiB" for g in plan.gpus) or "none (CPU only)"
    table = Table(title=f"Plan for {spec or 'the default CPU spec'} (GPUs {gpus})")
    for column in ("component", "instances", "where", "share/GPU", "memory cap", "Triton instance_group",
                   "settings"):
        table.add_column(column, overflow="fold")
    for row in plan_rows(plan):
        table.add_row(*row)
    console.print(table)
    if plan.gpus:
        per_gpu = Table(title="Per GPU")
        for column in ("GPU", "memory", "shares", "capped", "instances"):
            per_gpu.add_column(column, overflow="fold")
        for row in gpu_rows(plan):
            per_gpu.add_row(*row)
        console.print(per_gpu)
    low, high = plan.replicas
    console.print(f"Cluster: {low} to {high if high is not None else 'any number of'} replicas of this server "
                  "(from min_instances/max_instances).")
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


@app.command()
def render(
    spec: SpecPath = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "--model-repository", help="Repository to write (default: model_repository/ of this checkout); "
        "another folder gets the models' code too.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the placement plan as a table; write nothing.")] = False,
    check: Annotated[bool, typer.Option(help="Only report files that differ; exit 1 if any.")] = False,
    detect_gpus: DetectGpus = False,
) -> None:
    """Render the model repository from a deployment spec and the settings (defaults + $TRITONRAG_CONFIG).

    Examples:
      tritonrag render --spec deploy/specs/gpu-8.yaml --dry-run
      tritonrag render --spec deploy/specs/gpu-1.yaml --output /srv/tritonrag-repo
      tritonrag render --check      # is model_repository/ the rendering of the default CPU spec?
    """
    from .repository import render_repository

    plan = _plan(spec, detect_gpus)
    if dry_run:
        _print_plan(plan, spec)
        return
    target = output or REPOSITORY
    differing = render_repository(load_settings(), target, check=check, plan=plan, code_from=REPOSITORY)
    for path in differing:
        console.print(f"{'differs' if check else 'wrote'}: {path}")
    if check and differing:
        raise typer.Exit(1)
    if not check:
        console.print(f"{target} is the rendering of {spec or 'the default CPU spec'}")


def _render_spec(spec: Path, detect_gpus: bool) -> Path:
    from .repository import render_repository

    plan = _plan(spec, detect_gpus)
    _print_plan(plan, spec)
    target = load_settings().home / "repositories" / spec.stem
    render_repository(load_settings(), target, plan=plan, code_from=REPOSITORY)
    console.print(f"rendered {spec} into {target}")
    return target


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
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="Render this deployment spec into $TRITONRAG_HOME/repositories/<name> and serve that.")] = None,
    detect_gpus: DetectGpus = False,
) -> None:
    """Run Triton on the model repository until Ctrl-C.

    Examples:
      tritonrag serve --http-port 8000, then: tritonrag ask "Who is Passepartout?"
      tritonrag serve --spec deploy/specs/gpu-1.yaml --detect-gpus --host 0.0.0.0
    """
    if spec is not None:
        if model_repository is not None:
            raise typer.BadParameter("give --spec or --model-repository, not both")
        model_repository = _render_spec(spec, detect_gpus)
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
