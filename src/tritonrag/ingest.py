"""Build a knowledge base from folders of .txt/.md files: clean -> chunk -> batch-embed -> index."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .chunking import Chunk, chunk_document, load_document
from .config import Settings
from .knowledge_base import Manifest, write_knowledge_base

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".md")
DATA_ENV = "TRITONRAG_DATA"


def discover(paths: Iterable[Path]) -> list[Path]:
    """Every .txt/.md file under ``paths`` (files are taken as given), sorted for reproducible ids."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not found:
        raise FileNotFoundError(f"no {'/'.join(SUFFIXES)} files under {', '.join(map(str, paths))}")
    return found


def sample_corpus() -> Path:
    """The demo's corpus, *Around the World in Eighty Days*: $TRITONRAG_DATA, or shared/data near the checkout."""
    candidates = []
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]) / "eighty_days")
    here = Path.cwd().resolve()
    candidates += [parent / "shared" / "data" / "eighty_days" for parent in (here, *here.parents)]
    for candidate in candidates:
        if (candidate / "around_the_world.txt").exists():
            return candidate
    raise FileNotFoundError(
        "the sample corpus (shared/data/eighty_days/around_the_world.txt) was not found next to this checkout; "
        f"set {DATA_ENV} to the folder holding eighty_days/, or index your own documents with "
        "`tritonrag ingest PATH...` (a folder of .txt/.md files)"
    )


def chunk_files(files: Sequence[Path], token_spans, settings: Settings) -> list[Chunk]:
    chunks: list[Chunk] = []
    for file in files:
        try:
            raw = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            log.warning("%s is not UTF-8; decoding as latin-1", file)
            raw = file.read_text(encoding="latin-1")
        doc = load_document(file.name, raw)
        chunks += chunk_document(doc, token_spans, settings.chunking.chunk_tokens, settings.chunking.overlap_tokens)
    return chunks


def build_index(paths: Sequence[Path], settings: Settings, index_dir: Path | None = None,
                progress: bool = True) -> Manifest:
    """Ingest ``paths`` into ``index_dir`` (default: the configured index) and return its manifest."""
    from .embedding import TextEmbedder

    files = discover(paths)
    embedder = TextEmbedder(settings.embedder)
    chunks = chunk_files(files, embedder.token_spans, settings)
    log.info("%d files -> %d chunks; embedding on %s", len(files), len(chunks), embedder.device)
    vectors = embedder.encode([c.text for c in chunks], settings.embedder.document_instruction, show_progress=progress)
    return write_knowledge_base(
        Path(index_dir or settings.index_dir), vectors, chunks,
        embedder_model=settings.embedder.model,
        chunk_tokens=settings.chunking.chunk_tokens, overlap_tokens=settings.chunking.overlap_tokens,
    )
