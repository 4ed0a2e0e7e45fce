"""A knowledge base on disk: immutable versions and an atomically flipped pointer to the published one.

    ROOT/
      published.json          {"version": "v000003", ...}   replaced atomically (os.replace)
      versions/v000003/       index.faiss (dense), vectors.npy, docstore.sqlite (chunks, BM25 index), manifest.json
      versions/.building-*/   a build in progress (or one that crashed; removed by the next build)
      .lock                   held by the one build that may run at a time

A build writes a complete version folder, renames it into place, then flips the pointer, so readers only
ever see a whole version and a crash at any point leaves the published version as it was.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonrag.kb.docstore import VersionContents, write_docstore
from tritonrag.kb.sparse import TOKENIZER

log = logging.getLogger(__name__)


FORMAT_VERSION = 3  # 3: the docstore holds a BM25 (FTS5) index of the chunks
READABLE_FORMATS = (2, 3)  # a version 2 knowledge base serves dense search only, until rebuilt or reindexed
POINTER_FILE = "published.json"
VERSIONS_DIR = "versions"
LOCK_FILE = ".lock"
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
DOCSTORE_FILE = "docstore.sqlite"
MANIFEST_FILE = "manifest.json"
_VERSION_NAME = re.compile(r"^v(\d{6,})$")


@dataclass(frozen=True)
class Manifest:
    """What one version holds and how it was built."""

    format_version: int
    version: str
    parent: str | None
    embedder_model: str
    dimension: int
    metric: str
    index: dict[str, Any]
    chunk_tokens: int
    overlap_tokens: int
    documents: int
    chunks: int
    next_chunk_id: int
    created_at: str
    build: dict[str, Any] = field(default_factory=dict)
    sparse: dict[str, Any] = field(default_factory=dict)  # the BM25 index ({} before format 3: none)

    @property
    def index_type(self) -> str:
        return str(self.index["type"])

    @property
    def has_sparse(self) -> bool:
        return bool(self.sparse)


def version_number(name: str) -> int:
    match = _VERSION_NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a version name (v000001, v000002, ...)")
    return int(match.group(1))


def versions_dir(root: Path) -> Path:
    return Path(root) / VERSIONS_DIR


def list_versions(root: Path) -> list[str]:
    """Complete versions on disk, oldest first."""
    folder = versions_dir(root)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if _VERSION_NAME.match(p.name) and (p / MANIFEST_FILE).exists()]
    return sorted(names, key=version_number)


def published_version(root: Path) -> str | None:
    """The version the pointer names, or None when nothing was published yet."""
    try:
        raw = json.loads((Path(root) / POINTER_FILE).read_text())
    except FileNotFoundError:
        return None
    return str(raw["version"])


def published_path(root: Path) -> Path:
    """The folder of the published version, with a hint when there is none."""
    root = Path(root)
    name = published_version(root)
    if name is None:
        raise FileNotFoundError(
            f"no knowledge base at {root}: build one with `tritonrag ingest PATH...` (or scripts/setup.sh)"
        )
    return versions_dir(root) / name


def read_manifest(version_path: Path) -> Manifest:
    path = Path(version_path) / MANIFEST_FILE
    raw = json.loads(path.read_text())
    if raw.get("format_version") not in READABLE_FORMATS:
        raise ValueError(f"{path}: format_version {raw.get('format_version')} is not one of {READABLE_FORMATS}; "
                         "rebuild it with `tritonrag ingest`")
    return Manifest(**raw)


def current_manifest(root: Path) -> Manifest | None:
    """The published version's manifest, or None when there is none (or it is unreadable)."""
    try:
        return read_manifest(published_path(root))
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(root: Path, version: str) -> None:
    """Atomically point the knowledge base at ``version`` (which must exist on disk)."""
    root = Path(root)
    if not (versions_dir(root) / version / MANIFEST_FILE).exists():
        raise FileNotFoundError(f"version {version} does not exist in {root}; see `tritonrag kb versions`")
    tmp = root / f".{POINTER_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"version": version, "published_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, root / POINTER_FILE)
    _fsync_dir(root)


@contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Hold the knowledge base's build lock (one writer at a time; readers never wait)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another build is running on {root}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale_builds(root: Path) -> list[Path]:
    """Delete leftovers of crashed builds (call with the build lock held)."""
    folder = versions_dir(root)
    stale = sorted(folder.glob(".building-*")) if folder.is_dir() else []
    for path in stale:
        log.warning("removing %s, left by a build that did not finish", path)
        shutil.rmtree(path, ignore_errors=True)
    return stale


def next_version_name(root: Path) -> str:
    existing = [version_number(v) for v in list_versions(root)]
    return f"v{(max(existing) if existing else 0) + 1:06d}"


def write_version(root: Path, contents: VersionContents, index, manifest_fields: dict[str, Any],
                  base_docstore: Path | None = None) -> Manifest:
    """Write a complete version (call with the build lock held) and return its manifest; does not publish.

    ``index`` is a built CPU FAISS index whose ids are the rows of ``contents.vectors``; ``base_docstore``, the
    docstore of the version ``contents`` was made from, is copied and changed rather than rewritten.
    """
    import faiss

    root = Path(root)
    name = next_version_name(root)
    versions_dir(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=versions_dir(root), prefix=f".building-{name}-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        np.save(staging / VECTORS_FILE, np.ascontiguousarray(contents.vectors, dtype=np.float32))
        faiss.write_index(index, str(staging / INDEX_FILE))
        started = time.monotonic()
        written = write_docstore(staging / DOCSTORE_FILE, contents, base_docstore)
        fields = dict(manifest_fields)
        build = {**fields.pop("build", {}), "docstore_s": round(time.monotonic() - started, 3),
                 "docstore_incremental": written.incremental, "chunks_inserted": written.inserted,
                 "chunks_deleted": written.deleted}
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            version=name,
            documents=len(contents.documents),
            chunks=len(contents.chunks),
            next_chunk_id=int(contents.chunk_ids[-1]) + 1 if len(contents.chunk_ids) else 0,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            build=build,
            sparse={"type": "sqlite-fts5", "tokenizer": TOKENIZER, "bm25": {"k1": 1.2, "b": 0.75}},
            **fields,
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
        for file in staging.iterdir():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        staging.rename(versions_dir(root) / name)
        _fsync_dir(versions_dir(root))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def prune_versions(root: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the published one; returns the deleted names."""
    published = published_version(root)
    names = list_versions(root)
    doomed = [v for v in names[: max(len(names) - max(keep, 1), 0)] if v != published]
    for name in doomed:
        shutil.rmtree(versions_dir(root) / name, ignore_errors=True)
    return doomed
