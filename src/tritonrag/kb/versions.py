"""A knowledge base on disk: immutable versions and an atomically flipped pointer to the published one.

    ROOT/
      published.json          {"version": "v000003", ...}   replaced atomically (os.replace)
      versions/v000003/       index.faiss (dense), vectors.npy, docstore.sqlite (chunks, BM25 index), manifest.json
      versions/.building-*/   a build in progress (or one that crashed; removed by the next build)
      .lock                   held by the one build that may run at a time

A build writes a complete version folder (every file fsynced, its size and SHA-256 in the manifest), checks that
it loads, renames it into place, then flips the pointer, so readers only ever see a whole version and a crash, a
full disk or any other failure at any point removes the partial version and leaves the published one as it was.
Loading a version checks its files against the manifest first, so a damaged file is reported, never served.
"""

from __future__ import annotations

import fcntl
import hashlib
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
from tritonrag.kb.errors import VERSIONS_HINT, CorruptVersion, MissingVersion, disk_full_as_error
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
DATA_FILES = (INDEX_FILE, VECTORS_FILE, DOCSTORE_FILE)  # sized and hashed in the manifest's "files"
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
    files: dict[str, Any] = field(default_factory=dict)  # {name: {"bytes", "sha256"}} of DATA_FILES ({}: older)

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
    """The version the pointer names, or None when nothing was published yet (MissingVersion: unreadable)."""
    path = Path(root) / POINTER_FILE
    try:
        raw = json.loads(path.read_text())
        name = str(raw["version"])
        version_number(name)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise MissingVersion(f"the pointer {path} is unreadable ({exc}): {VERSIONS_HINT}") from None
    return name


class PublishedVersionWatch:
    """``published_version(root)`` for callers that ask per request (the answer cache): the pointer is read again
    only when its file changed (a stat per call); an unreadable pointer reads as None."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / POINTER_FILE
        self._stamp: tuple[int, int, int] | None = None
        self._version: str | None = None

    def __call__(self) -> str | None:
        try:
            info = self.path.stat()
            stamp = (info.st_mtime_ns, info.st_ino, info.st_size)
        except OSError:
            self._stamp = self._version = None
            return None
        if stamp != self._stamp:
            try:
                self._version = published_version(self.path.parent)
            except MissingVersion:
                self._version = None
            self._stamp = stamp
        return self._version


def missing_version_error(root: Path, name: str) -> MissingVersion:
    return MissingVersion(f"the pointer {Path(root) / POINTER_FILE} names version {name}, which is not in "
                          f"{versions_dir(root)}: {VERSIONS_HINT}, then rerun")


def published_path(root: Path) -> Path:
    """The folder of the published version, with a hint when there is none (FileNotFoundError) or when the pointer
    names a version that is not on disk (MissingVersion)."""
    root = Path(root)
    name = published_version(root)
    if name is None:
        raise FileNotFoundError(
            f"no knowledge base at {root}: build one with `tritonrag ingest PATH...` (or scripts/setup.sh)"
        )
    path = versions_dir(root) / name
    if not (path / MANIFEST_FILE).exists():
        raise missing_version_error(root, name)
    return path


def read_manifest(version_path: Path) -> Manifest:
    path = Path(version_path) / MANIFEST_FILE
    raw = json.loads(path.read_text())
    if raw.get("format_version") not in READABLE_FORMATS:
        raise ValueError(f"{path}: format_version {raw.get('format_version')} is not one of {READABLE_FORMATS}; "
                         "rebuild it with `tritonrag ingest`")
    return Manifest(**raw)


def current_manifest(root: Path) -> Manifest | None:
    """The published version's manifest, or None when nothing was published; MissingVersion when the pointer names
    no stored version, CorruptVersion when the manifest is unreadable (an update must not mistake either for an
    empty knowledge base and publish a version without the stored documents)."""
    try:
        path = published_path(root)
    except FileNotFoundError:
        return None
    try:
        return read_manifest(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CorruptVersion(f"{path / MANIFEST_FILE} is unreadable ({exc}): {VERSIONS_HINT}, or rebuild with "
                             "`tritonrag ingest`") from None


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as a manifest's ``files`` records them."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": sha.hexdigest()}


def _repair_hint(name: str) -> str:
    if name == INDEX_FILE:
        return ("`tritonrag kb reindex` rebuilds the index from the stored vectors when this is the published "
                f"version; otherwise {VERSIONS_HINT}")
    return f"{VERSIONS_HINT}, or rebuild with `tritonrag ingest`"


def check_files(version_path: Path, manifest: Manifest, names: tuple[str, ...] = DATA_FILES) -> None:
    """Raise CorruptVersion unless the files ``names`` of a version are there and match the size and SHA-256 its
    manifest recorded (a version written before the manifest recorded them is checked for presence only)."""
    version_path = Path(version_path)
    for name in names:
        path = version_path / name
        if not path.is_file():
            raise CorruptVersion(f"version {version_path.name} is damaged: {path} is missing: {_repair_hint(name)}")
        want = manifest.files.get(name)
        if not want:
            continue
        size = path.stat().st_size
        if size != want["bytes"]:
            raise CorruptVersion(f"version {version_path.name} is damaged: {path} is {size} bytes, its manifest says "
                                 f"{want['bytes']} (truncated or overwritten): {_repair_hint(name)}")
        if file_digest(path)["sha256"] != want["sha256"]:
            raise CorruptVersion(f"version {version_path.name} is damaged: {path} does not match the SHA-256 of "
                                 f"its manifest (corrupt): {_repair_hint(name)}")


def verify_version(version_path: Path) -> Manifest:
    """Check that a version loads: a readable manifest, files matching it, a FAISS index, vectors and a docstore
    that agree with it; returns the manifest, raises CorruptVersion saying what is wrong and what to do."""
    import faiss

    from tritonrag.kb.docstore import count_chunks

    version_path = Path(version_path)
    try:
        manifest = read_manifest(version_path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CorruptVersion(f"version {version_path.name} is damaged: its manifest is unreadable ({exc}): "
                             f"{_repair_hint(MANIFEST_FILE)}") from None
    check_files(version_path, manifest)
    try:
        index = faiss.read_index(str(version_path / INDEX_FILE))
    except RuntimeError as exc:
        raise CorruptVersion(f"version {version_path.name} is damaged: {version_path / INDEX_FILE} does not load "
                             f"({str(exc).splitlines()[-1]}): {_repair_hint(INDEX_FILE)}") from None
    shape = (index.ntotal, index.d)
    del index
    try:
        vectors = np.load(version_path / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        vectors_shape = tuple(vectors.shape)
        del vectors
    except (OSError, ValueError) as exc:
        raise CorruptVersion(f"version {version_path.name} is damaged: {version_path / VECTORS_FILE} does not load "
                             f"({exc}): {_repair_hint(VECTORS_FILE)}") from None
    chunks = count_chunks(version_path / DOCSTORE_FILE)
    if shape != (manifest.chunks, manifest.dimension) or vectors_shape != shape or chunks != manifest.chunks:
        raise CorruptVersion(f"version {version_path.name} is damaged: its index holds {shape[0]} x {shape[1]}, its "
                             f"vectors {vectors_shape}, its docstore {chunks} chunks, its manifest "
                             f"{manifest.chunks} x {manifest.dimension}: {_repair_hint(MANIFEST_FILE)}")
    return manifest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(root: Path, version: str, verify: bool = True) -> None:
    """Atomically point the knowledge base at ``version``, which must exist on disk and (``verify``) load: a damaged
    version is never published (CorruptVersion), and a failure leaves the pointer as it was."""
    root = Path(root)
    if not (versions_dir(root) / version / MANIFEST_FILE).exists():
        raise FileNotFoundError(f"version {version} does not exist in {root}; see `tritonrag kb versions`")
    if verify:
        verify_version(versions_dir(root) / version)
    tmp = root / f".{POINTER_FILE}.{os.getpid()}.tmp"
    try:
        with disk_full_as_error(root / POINTER_FILE):
            with open(tmp, "w") as fh:
                fh.write(json.dumps({"version": version, "published_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, root / POINTER_FILE)
    finally:
        tmp.unlink(missing_ok=True)
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
    """Delete leftovers of crashed builds and pointer updates (call with the build lock held)."""
    folder = versions_dir(root)
    stale = sorted(folder.glob(".building-*")) if folder.is_dir() else []
    for path in stale:
        log.warning("removing %s, left by a build that did not finish", path)
        shutil.rmtree(path, ignore_errors=True)
    for path in sorted(Path(root).glob(f".{POINTER_FILE}.*.tmp")):
        path.unlink(missing_ok=True)
        stale.append(path)
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
    with disk_full_as_error(versions_dir(root)):
        versions_dir(root).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=versions_dir(root), prefix=f".building-{name}-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        with disk_full_as_error(staging / VECTORS_FILE):
            np.save(staging / VECTORS_FILE, np.ascontiguousarray(contents.vectors, dtype=np.float32))
        with disk_full_as_error(staging / INDEX_FILE):
            faiss.write_index(index, str(staging / INDEX_FILE))
        started = time.monotonic()
        with disk_full_as_error(staging / DOCSTORE_FILE):
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
            files={file: file_digest(staging / file) for file in DATA_FILES},
            **fields,
        )
        with disk_full_as_error(staging / MANIFEST_FILE):
            with open(staging / MANIFEST_FILE, "w") as fh:
                fh.write(json.dumps(asdict(manifest), indent=2))
            for file in staging.iterdir():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(staging)
        verify_version(staging)  # what a reader will load: the bytes on disk, not the ones in memory
        staging.rename(versions_dir(root) / name)
        _fsync_dir(versions_dir(root))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def remove_version(root: Path, version: str) -> None:
    """Delete an unpublished version (one whose publishing failed)."""
    if version == published_version(root):
        raise ValueError(f"{version} is published")
    shutil.rmtree(versions_dir(root) / version, ignore_errors=True)


def prune_versions(root: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the published one; returns the deleted names."""
    published = published_version(root)
    names = list_versions(root)
    doomed = [v for v in names[: max(len(names) - max(keep, 1), 0)] if v != published]
    for name in doomed:
        shutil.rmtree(versions_dir(root) / name, ignore_errors=True)
    return doomed
