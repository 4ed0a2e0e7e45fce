"""Build and update knowledge bases: load -> chunk -> batch-embed -> index -> publish a new version.

Every operation writes a new version from the published one: chunks of unchanged documents keep their ids and
vectors (no re-embedding), and embeddings made so far are journalled, so an interrupted build resumes.

A failed operation (a full disk, a docstore locked by another writer, a damaged published version, a pointer naming
a missing version) raises a tritonrag.kb.errors.KnowledgeBaseError saying what to do, removes what it wrote of the
new version and leaves the published one as it was; once the cause is fixed, a rerun succeeds (and resumes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritonrag.kb.chunking import Chunk, Document, chunk_document
from tritonrag.kb.docstore import DocumentRecord, VersionContents, read_contents
from tritonrag.kb.embedding_journal import JOURNAL_FILE, Embedder, EmbeddingJournal, embed_chunks, progress_bar
from tritonrag.kb.errors import disk_full_as_error
from tritonrag.kb.faiss_index import IndexSpec, build_index
from tritonrag.kb.loaders import content_hash
from tritonrag.kb.versions import (
    DOCSTORE_FILE,
    VECTORS_FILE,
    Manifest,
    build_lock,
    check_files,
    current_manifest,
    prune_versions,
    publish,
    published_path,
    remove_stale_builds,
    remove_version,
    write_version,
)
from tritonrag.settings import Settings

log = logging.getLogger(__name__)


class LocalEmbedder:
    """The embedder in this process (sentence-transformers)."""

    def __init__(self, settings: Settings) -> None:
        from tritonrag.embedding.encoder import TextEmbedder

        self._embedder = TextEmbedder(settings.embedder)
        self.model_name = settings.embedder.model
        self.token_spans = self._embedder.token_spans

    def encode(self, texts: Sequence[str], instruction: str = "") -> np.ndarray:
        return self._embedder.encode(texts, instruction)


@dataclass
class BuildReport:
    """What a build did."""

    manifest: Manifest
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    embedded: int = 0
    reused: int = 0
    resumed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.manifest
        return (f"published {m.version} ({m.index_type} index): {m.documents} documents, {m.chunks} chunks; "
                f"documents +{self.added} ~{self.updated} ={self.unchanged} -{self.deleted}; chunks embedded "
                f"{self.embedded}, reused {self.reused}, resumed from an interrupted build {self.resumed}")


@dataclass(frozen=True)
class _OldVersion:
    manifest: Manifest
    documents: dict[str, DocumentRecord]
    chunk_ids: np.ndarray
    chunks: list[Chunk]
    vectors: np.ndarray


def _load_version(path: Path, manifest: Manifest) -> _OldVersion:
    """The contents of a stored version, which a new one reuses: its vectors and docstore must match its manifest
    (CorruptVersion), its docstore must not be held by another writer (DocstoreLocked)."""
    check_files(path, manifest, (VECTORS_FILE, DOCSTORE_FILE))
    documents, chunk_ids, chunks = read_contents(path / DOCSTORE_FILE)
    vectors = np.load(path / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
    return _OldVersion(manifest, documents, chunk_ids, chunks, vectors)


def _compatible(old: Manifest, settings: Settings) -> str | None:
    """Why the old version's vectors cannot be reused with these settings (None when they can)."""
    c = settings.chunking
    if old.embedder_model != settings.embedder.model:
        return f"it was embedded with {old.embedder_model}, the settings say {settings.embedder.model}"
    if (old.chunk_tokens, old.overlap_tokens) != (c.chunk_tokens, c.overlap_tokens):
        return (f"it was chunked {old.chunk_tokens}/{old.overlap_tokens}, the settings say "
                f"{c.chunk_tokens}/{c.overlap_tokens}")
    return None


def update_knowledge_base(
    root: Path,
    settings: Settings,
    upserts: Sequence[Document] = (),
    deletes: Sequence[str] = (),
    *,
    replace_all: bool = False,
    embedder: Embedder | None = None,
    spec: IndexSpec | None = None,
    progress: bool = True,
) -> BuildReport:
    """Publish a new version of the knowledge base at ``root``.

    ``upserts`` are added, or replace the stored document of the same source when their content changed;
    ``deletes`` are sources to remove; with ``replace_all`` the new version holds exactly ``upserts``.
    ``embedder`` is created on demand (in-process) when there is something to embed. Without ``spec``, an
    update keeps the current version's index type and parameters; ``replace_all`` uses the settings'.
    """
    root = Path(root)
    timings: dict[str, float] = {}
    with disk_full_as_error(root), build_lock(root):
        remove_stale_builds(root)
        manifest = current_manifest(root)
        if spec is None:
            keep = manifest is not None and not replace_all
            spec = IndexSpec.from_manifest(manifest.index) if keep else IndexSpec.from_settings(settings.index)
        old = _reusable_version(root, manifest, settings, replace_all)
        changes = _plan_changes(root, old.documents if old is not None else {}, upserts, deletes, replace_all)
        if changes.changed and embedder is None:
            embedder = LocalEmbedder(settings)

        started = time.monotonic()
        new_records, new_chunks = _chunk_documents(changes, embedder, settings, progress)
        timings["chunk_s"] = time.monotonic() - started
        started = time.monotonic()
        with disk_full_as_error(root / JOURNAL_FILE):
            journal = EmbeddingJournal(root / JOURNAL_FILE)
            new_vectors, resumed = None, 0
            if new_chunks:
                new_vectors, resumed = embed_chunks([c.text for c in new_chunks], embedder,
                                                    settings.embedder.document_instruction, journal,
                                                    settings.index.embed_batch_size, progress)
        timings["embed_s"] = time.monotonic() - started

        # chunk ids continue from the published version's, even when its chunks are not reused
        first_id = manifest.next_chunk_id if manifest is not None else 0
        contents, reused = _new_contents(old, changes.kept, new_records, new_chunks, new_vectors, first_id,
                                         _dimension(manifest, new_vectors))
        base = published_path(root) / DOCSTORE_FILE if old is not None else None
        report = _write_and_publish(root, contents, spec, manifest, _built_with(settings),
                                    settings.index.keep_versions, timings, base)
        journal.close(delete=True)
    report.embedded, report.resumed, report.reused = len(new_chunks) - resumed, resumed, reused
    report.added, report.updated, report.unchanged, report.deleted = changes.counts
    return report


def _reusable_version(root: Path, manifest: Manifest | None, settings: Settings,
                      replace_all: bool) -> _OldVersion | None:
    """The published version, whose chunks and vectors the new one may reuse; None when there is none, or when it
    was embedded or chunked otherwise than the settings say (an error unless ``replace_all`` re-embeds it all)."""
    if manifest is None:
        return None
    reason = _compatible(manifest, settings)
    if reason is None:
        return _load_version(published_path(root), manifest)
    if not replace_all:
        raise ValueError(f"cannot update {root} in place: {reason}; rebuild it with `tritonrag ingest`")
    log.warning("re-embedding every document of %s: %s", root, reason)
    return None


@dataclass(frozen=True)
class _Changes:
    """What an update does to the documents of the version it starts from."""

    changed: list[Document]  # new, or with changed content: to chunk and embed
    kept: set[str]  # sources whose stored chunks and vectors carry over
    hashes: dict[str, str]  # the content hash of each upsert, by source
    counts: tuple[int, int, int, int]  # documents added, updated, unchanged, deleted


def _plan_changes(root: Path, old_docs: dict[str, DocumentRecord], upserts: Sequence[Document],
                  deletes: Sequence[str], replace_all: bool) -> _Changes:
    """Compare the upserts and deletes with the stored documents; unknown or contradictory deletes are errors."""
    new_docs = {doc.source: doc for doc in upserts}
    missing = sorted(set(deletes) - set(old_docs))
    if missing:
        raise ValueError(f"no document(s) {', '.join(map(repr, missing[:5]))} in {root}; "
                         "`tritonrag kb documents` lists what is stored")
    overlap = sorted(set(deletes) & set(new_docs))
    if overlap:
        raise ValueError(f"document(s) {', '.join(overlap[:5])} both added and deleted")
    final_sources = set(new_docs) if replace_all else (set(old_docs) - set(deletes)) | set(new_docs)
    hashes = {source: content_hash(doc) for source, doc in new_docs.items()}
    changed = [doc for source, doc in new_docs.items()
               if source not in old_docs or old_docs[source].content_hash != hashes[source]]
    changed_sources = {doc.source for doc in changed}
    counts = (sum(s not in old_docs for s in changed_sources), sum(s in old_docs for s in changed_sources),
              len(set(new_docs) - changed_sources), len(set(old_docs) - final_sources))
    kept = final_sources - changed_sources
    return _Changes(changed, kept, hashes, counts)


def _chunk_documents(changes: _Changes, embedder: Embedder | None, settings: Settings,
                     progress: bool) -> tuple[dict[str, DocumentRecord], list[Chunk]]:
    """The records and chunks of the changed documents; a document without text is left out (with a warning)."""
    records: dict[str, DocumentRecord] = {}
    chunks: list[Chunk] = []
    if not changes.changed:
        return records, chunks
    if embedder is None:
        raise ValueError("documents to chunk need an embedder (its tokenizer)")
    for doc in _iterprogress_bar(changes.changed, "chunking", "doc", progress):
        pieces = chunk_document(doc, embedder.token_spans, settings.chunking.chunk_tokens,
                                settings.chunking.overlap_tokens)
        if not pieces:
            log.warning("%s has no text; skipped", doc.source)
            continue
        chunks += pieces
        records[doc.source] = DocumentRecord(doc.source, doc.title, changes.hashes[doc.source], doc.metadata,
                                             len(pieces))
    return records, chunks


def _new_contents(old: _OldVersion | None, kept: set[str], new_records: dict[str, DocumentRecord],
                  new_chunks: list[Chunk], new_vectors: np.ndarray | None, first_id: int,
                  dimension: int) -> tuple[VersionContents, int]:
    """The new version's contents: the kept documents' chunks, ids and vectors from ``old``, then the new chunks
    numbered from ``first_id``; returns them and how many chunks were reused."""
    rows = [i for i, c in enumerate(old.chunks) if c.source in kept] if old is not None else []
    if old is not None and rows:
        keep_rows = np.array(rows, np.int64)
        kept_ids, kept_chunks = old.chunk_ids[keep_rows], [old.chunks[i] for i in rows]
        kept_vectors = np.asarray(old.vectors[keep_rows], np.float32)
    else:
        kept_ids, kept_chunks, kept_vectors = np.zeros(0, np.int64), [], np.zeros((0, dimension), np.float32)
    chunk_ids = np.concatenate([kept_ids, np.arange(first_id, first_id + len(new_chunks), dtype=np.int64)])
    new_vectors = new_vectors if new_vectors is not None else np.zeros((0, dimension), np.float32)
    records = {source: old.documents[source] for source in kept} if old is not None else {}
    documents = sorted({**records, **new_records}.values(), key=lambda r: r.source)
    contents = VersionContents(chunk_ids, kept_chunks + new_chunks, np.concatenate([kept_vectors, new_vectors]),
                               documents)
    return contents, len(rows)


def _built_with(settings: Settings) -> dict[str, object]:
    """The manifest fields that say how the chunks and vectors were made."""
    return {"embedder_model": settings.embedder.model, "chunk_tokens": settings.chunking.chunk_tokens,
            "overlap_tokens": settings.chunking.overlap_tokens}


def _dimension(published: Manifest | None, new_vectors: np.ndarray | None) -> int:
    if new_vectors is not None and new_vectors.size:
        return int(new_vectors.shape[1])
    if published is not None:
        return published.dimension
    raise ValueError("nothing to index: no documents with text were given")


def _iterprogress_bar(items: Sequence, desc: str, unit: str, enabled: bool):
    with progress_bar(len(items), desc, unit, enabled and len(items) > 1) as bar:
        for item in items:
            yield item
            bar.update(1)


def _write_and_publish(root: Path, contents: VersionContents, spec: IndexSpec, parent: Manifest | None,
                       built_with: dict[str, object], keep_versions: int, timings: dict[str, float],
                       base_docstore: Path | None = None) -> BuildReport:
    """Build the index, write the version (its docstore from ``base_docstore`` when given), flip the pointer, prune
    old versions."""
    started = time.monotonic()
    if len(contents.vectors) > 50000:
        log.warning("building a %s index over %d vectors...", spec.type, len(contents.vectors))
    index = build_index(contents.vectors, spec)
    timings["index_s"] = time.monotonic() - started
    started = time.monotonic()
    manifest = write_version(root, contents, index, {
        "parent": parent.version if parent else None,
        "dimension": int(contents.vectors.shape[1]),
        "metric": "inner_product",
        "index": spec.describe(len(contents.vectors)),
        "build": {k: round(v, 3) for k, v in timings.items()},
        **built_with,
    }, base_docstore)
    try:
        publish(root, manifest.version, verify=False)  # write_version verified it
    except BaseException:
        remove_version(root, manifest.version)  # the pointer still names the old version
        raise
    prune_versions(root, keep_versions)
    timings["write_s"] = time.monotonic() - started
    return BuildReport(manifest, seconds=dict(timings))


def reindex(root: Path, spec: IndexSpec, keep_versions: int = 3) -> BuildReport:
    """Publish the current contents again with another index type or parameters, from the stored vectors."""
    root = Path(root)
    with disk_full_as_error(root), build_lock(root):
        remove_stale_builds(root)
        manifest = current_manifest(root)
        if manifest is None:
            published_path(root)  # raises with the "build one first" hint
            raise FileNotFoundError(f"the published version of {root} is unreadable; rebuild it")
        old = _load_version(published_path(root), manifest)
        contents = VersionContents(old.chunk_ids, old.chunks, np.asarray(old.vectors, np.float32),
                                   sorted(old.documents.values(), key=lambda r: r.source))
        built_with = {"embedder_model": manifest.embedder_model, "chunk_tokens": manifest.chunk_tokens,
                      "overlap_tokens": manifest.overlap_tokens}
        report = _write_and_publish(root, contents, spec, manifest, built_with, keep_versions, {},
                                    published_path(root) / DOCSTORE_FILE)
    report.reused = manifest.chunks
    report.unchanged = manifest.documents
    return report


def rollback(root: Path, version: str) -> None:
    """Publish an older (still stored) version again, once it is checked to load (CorruptVersion if not)."""
    with disk_full_as_error(root), build_lock(Path(root)):
        publish(Path(root), version)
