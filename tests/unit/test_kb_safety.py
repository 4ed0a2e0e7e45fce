"""Data safety of a knowledge base on disk, without Triton: a full disk during a build, a corrupt index.faiss, a
pointer naming a missing version, a docstore locked by another writer. In each case the published version stays
published (and a LiveKnowledgeBase keeps serving it), the operation fails with a message saying what to do, and a
rerun succeeds once the cause is gone."""

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import DIM, FakeEmbedder, doc, small_settings
from typer.testing import CliRunner

from tritonrag.kb.docstore import BUSY_TIMEOUT_ENV
from tritonrag.kb.embedding_journal import JOURNAL_FILE
from tritonrag.kb.errors import CorruptVersion, DocstoreLocked, MissingVersion, NoSpaceLeft
from tritonrag.kb.faiss_index import IndexSpec
from tritonrag.kb.ingest import reindex, rollback, update_knowledge_base
from tritonrag.kb.live import LiveKnowledgeBase
from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.versions import (
    DOCSTORE_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    POINTER_FILE,
    VECTORS_FILE,
    list_versions,
    published_version,
    read_manifest,
    verify_version,
    versions_dir,
)

NO_SPACE = "no space left on device writing"
LOCKED = "the docstore {} is locked by another writer (another ingest?): wait for it to finish and rerun"


def build(root, docs, **kw):
    return update_knowledge_base(root, small_settings(keep_versions=10), docs, embedder=FakeEmbedder(),
                                 progress=False, **kw)


def two_versions(root):
    build(root, [doc("a.txt")])
    build(root, [doc("b.txt")])
    assert published_version(root) == "v000002"


def leftovers(root):
    """Anything besides complete versions, the pointer and the lock (the journal of an interrupted build aside)."""
    names = {p.name for p in Path(root).iterdir()} - {POINTER_FILE, ".lock", "versions", JOURNAL_FILE}
    return sorted(names | {p.name for p in versions_dir(root).iterdir() if not p.name.startswith("v")})


def search_works(kb_or_live):
    query = np.ones((1, DIM), np.float32)
    if isinstance(kb_or_live, LiveKnowledgeBase):
        with kb_or_live.use() as kb:
            return search_works(kb)
    scores, ids = kb_or_live.search(query, 2)
    return bool(kb_or_live.fetch(ids[0], scores[0]))


def corrupt(path, keep_size=True):
    data = bytearray(path.read_bytes())
    if keep_size:
        data[len(data) // 2 :] = os.urandom(len(data) - len(data) // 2)
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[: len(data) // 3]))


# ---- a full disk ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["np.save", "faiss.write_index", "docstore", "pointer"])
def test_a_full_disk_removes_the_partial_version_and_a_rerun_succeeds(tmp_path, monkeypatch, target):
    import faiss

    import tritonrag.kb.docstore as docstore_module
    import tritonrag.kb.versions as versions_module

    two_versions(tmp_path)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if target == "np.save":
        monkeypatch.setattr(versions_module.np, "save", lambda *a, **k: (_ for _ in ()).throw(full))
    elif target == "faiss.write_index":
        def write_index(index, path):  # what faiss says when fwrite comes up short
            Path(path).write_bytes(b"x")
            raise RuntimeError(f"Error: 'ret == (size * 4)' failed: write error in {path}: 1 != 99 "
                               "(No space left on device)")
        monkeypatch.setattr(faiss, "write_index", write_index)
    elif target == "docstore":
        def copy_docstore(base, path):
            import sqlite3
            raise sqlite3.OperationalError("database or disk is full")
        monkeypatch.setattr(docstore_module, "copy_docstore", copy_docstore)
    else:
        real_open = open

        def open_(file, mode="r", *args, **kwargs):
            if str(file).endswith(".tmp") and POINTER_FILE in str(file) and "w" in mode:
                raise full
            return real_open(file, mode, *args, **kwargs)
        monkeypatch.setattr("builtins.open", open_)
    with pytest.raises(NoSpaceLeft, match=NO_SPACE) as raised:
        build(tmp_path, [doc("c.txt")])
    assert "free space or point --index-dir elsewhere, then rerun" in str(raised.value)
    assert published_version(tmp_path) == "v000002"
    assert list_versions(tmp_path) == ["v000001", "v000002"]  # the new version is gone, whole or partial
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    report = build(tmp_path, [doc("c.txt")])
    assert report.manifest.version == "v000003" and published_version(tmp_path) == "v000003"


def test_a_full_disk_while_journalling_embeddings(tmp_path, monkeypatch):
    from tritonrag.kb.embedding_journal import EmbeddingJournal

    two_versions(tmp_path)

    def put(self, keys, vectors):
        import sqlite3
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(EmbeddingJournal, "put", put)
    with pytest.raises(NoSpaceLeft, match=re.escape(f"{NO_SPACE} {tmp_path / JOURNAL_FILE}")):
        build(tmp_path, [doc("c.txt")])
    assert published_version(tmp_path) == "v000002"
    monkeypatch.undo()
    assert build(tmp_path, [doc("c.txt")]).manifest.version == "v000003"


def test_other_write_errors_pass_through(tmp_path, monkeypatch):
    import tritonrag.kb.versions as versions_module

    two_versions(tmp_path)
    monkeypatch.setattr(versions_module.np, "save",
                        lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(PermissionError):
        build(tmp_path, [doc("c.txt")])
    assert leftovers(tmp_path) == [] and published_version(tmp_path) == "v000002"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (root only; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"could not mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder, leave_bytes):
    """Fill the file system of ``folder`` up to ``leave_bytes`` free; returns the filler file."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    size = max(stat.f_bavail * stat.f_frsize - leave_bytes, 0)
    with open(filler, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * (1 << 20)
        while size > 0:
            fh.write(chunk[: min(size, len(chunk))])
            size -= min(size, len(chunk))
    return filler


def test_a_real_full_disk(small_tmpfs):
    root = small_tmpfs / "kb"
    build(root, [doc(f"d{i}.txt", 40) for i in range(20)])
    live = LiveKnowledgeBase(root, interval_s=0)
    try:
        filler = fill(small_tmpfs, 16 * 1024)
        with pytest.raises(NoSpaceLeft, match=NO_SPACE):
            build(root, [doc(f"e{i}.txt", 400) for i in range(20)])
        assert published_version(root) == "v000001" and list_versions(root) == ["v000001"]
        assert leftovers(root) == []
        assert live.check() is False and search_works(live)
        filler.unlink()
        report = build(root, [doc(f"e{i}.txt", 400) for i in range(20)])
        assert report.manifest.version == "v000002"
        assert live.check() is True and live.version == "v000002" and search_works(live)
    finally:
        live.close()


# ---- a corrupt index.faiss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_size", [True, False])
def test_a_corrupt_index_is_never_published_nor_served(tmp_path, keep_size):
    two_versions(tmp_path)
    live = LiveKnowledgeBase(tmp_path, interval_s=0)
    try:
        corrupt(versions_dir(tmp_path) / "v000001" / INDEX_FILE, keep_size)
        with pytest.raises(CorruptVersion, match="version v000001 is damaged") as raised:
            rollback(tmp_path, "v000001")
        assert "tritonrag kb versions" in str(raised.value) and "tritonrag kb rollback" in str(raised.value)
        assert published_version(tmp_path) == "v000002"
        with pytest.raises(CorruptVersion, match=r"index\.faiss"):
            KnowledgeBase(versions_dir(tmp_path) / "v000001")
        # a pointer flipped by hand (not through publish) is not followed either
        (tmp_path / POINTER_FILE).write_text(json.dumps({"version": "v000001"}))
        assert live.check() is False and live.version == "v000002" and search_works(live)
        error = live.stats()["reload_error"]
        assert error["version"] == "v000001" and "damaged" in error["error"] and error["serving"] == "v000002"
        assert "v000001" in live.stats()["last_reload_error"]
        rollback(tmp_path, "v000002")  # the fix: publish a good version again
        assert live.check() is False and "reload_error" not in live.stats()
    finally:
        live.close()


def test_a_corrupt_index_of_the_published_version_is_rebuilt_by_reindex(tmp_path):
    two_versions(tmp_path)
    corrupt(versions_dir(tmp_path) / "v000002" / INDEX_FILE)
    with pytest.raises(CorruptVersion, match="tritonrag kb reindex"):
        KnowledgeBase(tmp_path)
    report = reindex(tmp_path, IndexSpec("flat"))  # from the stored vectors, which are intact
    assert report.manifest.version == "v000003"
    kb = KnowledgeBase(tmp_path)
    try:
        assert search_works(kb) and kb.stats()["docstore"]["documents"] == 2
    finally:
        kb.close()


def test_an_index_faiss_cannot_parse_is_reported_for_versions_without_checksums(tmp_path):
    two_versions(tmp_path)
    path = versions_dir(tmp_path) / "v000001"
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    del manifest["files"]  # as a version written before the manifest recorded its files
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    (path / INDEX_FILE).write_bytes(b"not a faiss index at all")
    with pytest.raises(CorruptVersion, match="does not load"):
        verify_version(path)
    with pytest.raises(CorruptVersion, match="does not load"):
        KnowledgeBase(path)


def test_damaged_vectors_are_not_carried_into_a_new_version(tmp_path):
    two_versions(tmp_path)
    corrupt(versions_dir(tmp_path) / "v000002" / VECTORS_FILE)
    with pytest.raises(CorruptVersion, match=r"vectors\.npy") as raised:
        build(tmp_path, [doc("c.txt")])
    assert "tritonrag kb rollback" in str(raised.value)
    assert published_version(tmp_path) == "v000002" and list_versions(tmp_path) == ["v000001", "v000002"]
    rollback(tmp_path, "v000001")
    assert build(tmp_path, [doc("c.txt")]).manifest.version == "v000003"


def test_every_new_version_records_and_passes_its_checksums(tmp_path):
    build(tmp_path, [doc("a.txt")])
    path = versions_dir(tmp_path) / "v000001"
    manifest = read_manifest(path)
    assert set(manifest.files) == {INDEX_FILE, VECTORS_FILE, DOCSTORE_FILE}
    assert manifest.files[INDEX_FILE]["bytes"] == (path / INDEX_FILE).stat().st_size
    assert verify_version(path) == manifest


# ---- a pointer naming a missing version -------------------------------------------------------------------------


@pytest.mark.parametrize("pointer", ['{"version": "v000099"}', '{"versi', "not json", '{"version": "latest"}'])
def test_a_broken_pointer_fails_updates_and_keeps_the_served_version(tmp_path, pointer):
    two_versions(tmp_path)
    live = LiveKnowledgeBase(tmp_path, interval_s=0)
    try:
        (tmp_path / POINTER_FILE).write_text(pointer)
        for attempt in (lambda: build(tmp_path, [doc("c.txt")]), lambda: reindex(tmp_path, IndexSpec("flat")),
                        lambda: KnowledgeBase(tmp_path)):
            with pytest.raises(MissingVersion) as raised:
                attempt()
            assert "tritonrag kb versions" in str(raised.value) and "tritonrag kb rollback" in str(raised.value)
        assert list_versions(tmp_path) == ["v000001", "v000002"]  # nothing was built without the stored documents
        assert live.check() is False and live.check() is False
        assert live.version == "v000002" and search_works(live)
        assert "reload_error" in live.stats()
        rollback(tmp_path, "v000002")
        assert live.check() is False and "reload_error" not in live.stats()
        report = build(tmp_path, [doc("c.txt")])
        assert report.manifest.version == "v000003" and report.manifest.documents == 3
    finally:
        live.close()


def test_a_missing_version_is_looked_for_again(tmp_path):
    two_versions(tmp_path)
    live = LiveKnowledgeBase(tmp_path, interval_s=0)
    try:
        hidden = versions_dir(tmp_path) / "v000001"
        hidden.rename(tmp_path / "elsewhere")
        (tmp_path / POINTER_FILE).write_text(json.dumps({"version": "v000001"}))
        assert live.check() is False
        assert "which is not in" in live.stats()["reload_error"]["error"]
        (tmp_path / "elsewhere").rename(hidden)  # restored: the retriever follows the pointer now
        assert live.check() is True and live.version == "v000001"
        assert "reload_error" not in live.stats()
    finally:
        live.close()


# ---- a docstore locked by another writer ------------------------------------------------------------------------


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class ExclusiveLock:
    """Another process holding a write transaction (BEGIN EXCLUSIVE) on a SQLite file until released."""

    def __init__(self, path):
        self.process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def release(self):
        if self.process.poll() is None:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            self.process.wait(timeout=10)


def test_a_locked_docstore_fails_a_build_in_bounded_time_and_the_served_version_keeps_serving(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "0.5")
    two_versions(tmp_path)
    live = LiveKnowledgeBase(tmp_path, interval_s=0)
    docstore = versions_dir(tmp_path) / "v000002" / DOCSTORE_FILE
    lock = ExclusiveLock(docstore)
    try:
        started = time.monotonic()
        with pytest.raises(DocstoreLocked) as raised:
            build(tmp_path, [doc("c.txt")])
        assert time.monotonic() - started < 5
        assert LOCKED.format(docstore) in str(raised.value)
        with pytest.raises(DocstoreLocked):
            reindex(tmp_path, IndexSpec("flat"))
        assert published_version(tmp_path) == "v000002" and leftovers(tmp_path) == []
        assert search_works(live)  # searches ignore the lock: the version is immutable
        kb = KnowledgeBase(tmp_path)  # and so does loading it
        kb.close()
    finally:
        lock.release()
    report = build(tmp_path, [doc("c.txt")])
    assert report.manifest.version == "v000003" and report.manifest.documents == 3
    assert live.check() is True and search_works(live)
    live.close()


# ---- the CLI ------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    from tritonrag.cli import app

    monkeypatch.setenv("COLUMNS", "1000")  # messages on one line

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        return result.exit_code, " ".join(result.output.split())

    return run


def test_the_cli_says_what_to_do(tmp_path, cli, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text("[chunking]\nchunk_tokens = 8\noverlap_tokens = 2\n")  # as small_settings
    monkeypatch.setenv("TRITONRAG_CONFIG", str(config))
    tmp_path = tmp_path / "kb"
    two_versions(tmp_path)
    corrupt(versions_dir(tmp_path) / "v000001" / INDEX_FILE)
    code, out = cli("kb", "rollback", "v000001", "--index-dir", tmp_path)
    assert code == 1 and "version v000001 is damaged" in out and "tritonrag kb versions" in out
    assert published_version(tmp_path) == "v000002"
    code, out = cli("kb", "rollback", "v000002", "--index-dir", tmp_path)
    assert code == 0, out

    (tmp_path / POINTER_FILE).write_text(json.dumps({"version": "v000099"}))
    code, out = cli("kb", "delete", "a.txt", "--index-dir", tmp_path)
    assert code == 1 and "names version v000099, which is not in" in out and "tritonrag kb rollback" in out
    code, out = cli("kb", "stats", "--index-dir", tmp_path)
    assert code == 1 and "v000099" in out
    code, out = cli("kb", "reindex", "--index-dir", tmp_path)
    assert code == 1 and "v000099" in out
    code, out = cli("kb", "versions", "--index-dir", tmp_path)
    assert code == 0 and "v000002" in out and "tritonrag kb rollback VERSION" in out
    assert cli("kb", "rollback", "v000002", "--index-dir", tmp_path)[0] == 0
    code, out = cli("kb", "delete", "a.txt", "--index-dir", tmp_path)
    assert code == 0 and "published v000003" in out

    monkeypatch.setenv(BUSY_TIMEOUT_ENV, "0.2")
    lock = ExclusiveLock(versions_dir(tmp_path) / "v000003" / DOCSTORE_FILE)
    try:
        code, out = cli("kb", "delete", "b.txt", "--index-dir", tmp_path)
        assert code == 1 and "is locked by another writer (another ingest?): wait for it to finish and rerun" in out
    finally:
        lock.release()
    assert cli("kb", "delete", "b.txt", "--index-dir", tmp_path)[0] == 0
