"""`tritonrag ingest` and `tritonrag kb ...`: build, change and inspect knowledge bases."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tritonrag.cli.app import app, console, exit_on
from tritonrag.settings import load_settings

IndexDir = Annotated[Path | None, typer.Option(help="Knowledge base folder (default: [retriever] index_dir).")]


IndexType = Annotated[str | None, typer.Option(help="flat, ivf or hnsw (default: [index] type).")]


Via = Annotated[str | None, typer.Option(
    help="Embed through a running Triton's `embedder` at this gRPC address (host:8001) instead of in-process.")]


Concurrency = Annotated[int, typer.Option(help="Concurrent embedding requests with --via.")]


def _open_knowledge_base(index_dir: Path | None):
    from tritonrag.kb.search import KnowledgeBase

    with exit_on(FileNotFoundError, ValueError, RuntimeError):  # RuntimeError: tritonrag.kb.errors
        return KnowledgeBase(index_dir or load_settings().index_dir)


def _index_spec(settings, index_type: str | None, nlist: int | None = None, m: int | None = None,
                ef_construction: int | None = None, keep_current: bool = False):
    """The index to build: as asked, else (``keep_current``: None, the current version's) the settings'."""
    from tritonrag.kb.faiss_index import IndexSpec

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
    from tritonrag.serving.remote_embedder import TritonEmbedder

    with exit_on(RuntimeError):
        return TritonEmbedder(via, settings.embedder, concurrency=concurrency)


def _load(paths: list[Path]):
    from tritonrag.kb.loaders import load_documents

    with exit_on(FileNotFoundError, ValueError), console.status("reading documents..."):
        return load_documents(paths)


def _run_update(target: Path, settings, **kwargs) -> None:
    from tritonrag.kb.ingest import update_knowledge_base

    started = time.monotonic()
    with exit_on(ValueError, RuntimeError, OSError):  # a full disk, a locked docstore, ...: tritonrag.kb.errors
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
    from tritonrag.kb.sample import sample_corpus
    from tritonrag.kb.search import is_current

    settings = load_settings()
    target = index_dir or settings.index_dir
    chunking = settings.chunking
    with exit_on(RuntimeError):  # a pointer naming a missing version, an unreadable manifest
        current = if_missing and is_current(target, settings.embedder.model, chunking.chunk_tokens,
                                            chunking.overlap_tokens)
    if current:
        console.print(f"knowledge base already in {target}")
        return
    if sample or not paths:
        with exit_on(FileNotFoundError):
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
    from tritonrag.kb.ingest import reindex

    settings = load_settings()
    target = index_dir or settings.index_dir
    with exit_on(RuntimeError, ValueError, OSError):
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

        with exit_on(Exception, prefix=f"could not ask {url}: "):
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

    from tritonrag.kb.errors import MissingVersion
    from tritonrag.kb.versions import list_versions, published_version, read_manifest, versions_dir

    root = index_dir or load_settings().index_dir
    names = list_versions(root)
    try:
        published, problem = published_version(root), None
    except MissingVersion as exc:
        published, problem = None, str(exc)
    if published is not None and published not in names:
        problem = f"the pointer names version {published}, which is not stored"
    table = Table("", "version", "created", "index", "documents", "chunks", "parent")
    for name in names:
        try:
            m = read_manifest(versions_dir(root) / name)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            table.add_row("*" if name == published else "", name, f"unreadable manifest: {exc}", "", "", "", "")
            continue
        table.add_row("*" if name == published else "", name, m.created_at, m.index_type, str(m.documents),
                      str(m.chunks), m.parent or "")
    console.print(table)
    if problem:
        console.print(f"{problem}: publish a stored version with `tritonrag kb rollback VERSION`", style="red",
                      markup=False)


@kb_app.command("rollback")
def kb_rollback(
    version: Annotated[str, typer.Argument(help="A stored version, e.g. v000002.")],
    index_dir: IndexDir = None,
) -> None:
    """Publish an older stored version again (the retriever swaps it in)."""
    from tritonrag.kb.ingest import rollback

    root = index_dir or load_settings().index_dir
    with exit_on(RuntimeError, ValueError, OSError):  # a damaged version is refused (CorruptVersion)
        rollback(root, version)
    console.print(f"published {version} of {root}")
