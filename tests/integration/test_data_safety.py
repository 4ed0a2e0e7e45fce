"""Data safety on a real Triton retriever while a client keeps querying it: a full disk during `kb add`, a corrupt
index.faiss, a pointer naming a missing version, a docstore locked by another writer. Each time every query
succeeds and the served version stays the same, the CLI command fails with a message saying what to do, and a
rerun (after the fix the message names) succeeds.

The server runs the stand-in settings (benchmarks/stand_in.toml: stand-in embedder, real retriever) over a
knowledge base of twelve generated chapters built with the stand-in embedder in a temp dir: on a tmpfs of its own
when it can be mounted (root), so the disk can be filled; the disk-full test skips otherwise."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonrag_client import retriever_stats

from tritonrag.kb.docstore import BUSY_TIMEOUT_ENV
from tritonrag.kb.versions import POINTER_FILE, published_version, versions_dir
from tritonrag.settings import CONFIG_ENV

from .helpers import bytes_input
from .servers import triton_with

ROOT = Path(__file__).resolve().parents[2]
STAND_IN = ROOT / "benchmarks" / "stand_in.toml"
CLI = [sys.executable, "-m", "tritonrag.cli"]
TMPFS_SIZE = "64m"
RELOAD_S = 0.2


def run_cli(env, *args, ok=True, timeout=300):
    """Run `tritonrag ARGS`; returns (exit status, output with whitespace collapsed)."""
    done = subprocess.run([*CLI, *map(str, args)], env=env["environ"], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    out = " ".join((done.stdout + done.stderr).split())
    if ok:
        assert done.returncode == 0, out
    return done.returncode, out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("data_safety")
    disk = base / "disk"
    disk.mkdir()
    tmpfs = None
    if os.geteuid() != 0:
        tmpfs = "not root: cannot mount a size-limited tmpfs to fill"
    else:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(disk)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            tmpfs = f"could not mount a tmpfs: {done.stderr.strip() or done.returncode}"
    kb = disk / "kb"
    docs = base / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\nThe lighthouse keeper number {i} counts {i * 7} gulls.")
    first = base / "first"  # the first version: its own text, so it needs no shared data folder
    first.mkdir()
    for i in range(12):
        (first / f"chapter{i}.md").write_text(f"# Chapter {i}\n\n" + " ".join(
            f"Phileas Fogg crossed the bridge number {j} of chapter {i} and counted the lamps." for j in range(40)))
    config = base / "config.toml"
    config.write_text(f'{STAND_IN.read_text()}\n[retriever]\nindex_dir = "{kb}"\nreload_interval_s = {RELOAD_S}\n')
    environ = {**os.environ, CONFIG_ENV: str(config), BUSY_TIMEOUT_ENV: "1", "COLUMNS": "1000"}
    state = {"base": base, "disk": disk, "kb": kb, "docs": docs, "config": config, "environ": environ,
             "tmpfs_skip": tmpfs}
    try:
        run_cli(state, "ingest", first)  # a book of its own (no sample corpus needed), embedded by the stand-in
        yield state
    finally:
        if tmpfs is None:
            subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture(scope="module")
def triton(env):
    with triton_with(env["config"], env["base"] / "triton.log", models=("retriever",)) as server:
        yield server


def served(triton):
    return retriever_stats(triton.http_url)


def wait_for_version(triton, version, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served(triton)["version"] == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"retriever serves {served(triton)['version']}, not {version}")


class Queries:
    """Searches the retriever (gRPC, hybrid: a vector and the question's text) in a loop, with its stats (HTTP);
    records every error and every version served."""

    def __init__(self, triton):
        self.triton = triton
        self.vector = np.random.default_rng(0).normal(size=(1, 384)).astype(np.float32)
        self.vector /= np.linalg.norm(self.vector)
        self.errors, self.count, self.versions = [], 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        client = grpcclient.InferenceServerClient(self.triton.grpc_url)
        inputs = [grpcclient.InferInput("embedding", [1, 384], "FP32"),
                  bytes_input("query", ["Where did Passepartout go?"], [1, 1])]
        inputs[0].set_data_from_numpy(self.vector)
        while not self._stop.is_set():
            try:
                result = client.infer("retriever", inputs)
                assert len(result.as_numpy("chunk_ids").reshape(-1)) >= 1
                self.versions.add(served(self.triton)["version"])
                self.count += 1
            except Exception as exc:
                self.errors.append(repr(exc))
            time.sleep(0.02)
        client.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)

    def check(self, version):
        assert self.errors == [], self.errors[:3]
        assert self.count > 0 and self.versions == {version}


def no_leftovers(env):
    assert [p.name for p in versions_dir(env["kb"]).iterdir() if not p.name.startswith("v")] == []
    assert not list(env["kb"].glob(f".{POINTER_FILE}.*.tmp"))


def test_a_full_disk(env, triton):
    if env["tmpfs_skip"]:
        pytest.skip(env["tmpfs_skip"])
    before = published_version(env["kb"])
    wait_for_version(triton, before)
    doc = env["docs"] / "note0.md"
    filler = env["disk"] / "filler"
    with Queries(triton) as queries:
        stat = os.statvfs(env["disk"])
        with open(filler, "wb") as fh:  # all but 16 KiB
            left = stat.f_bavail * stat.f_frsize - 16 * 1024
            while left > 0:
                left -= fh.write(b"\0" * min(left, 1 << 20))
        code, out = run_cli(env, "kb", "add", doc, ok=False)
        assert code == 1
        assert "no space left on device writing" in out
        assert "free space or point --index-dir elsewhere, then rerun" in out
        assert published_version(env["kb"]) == before
        no_leftovers(env)
        time.sleep(5 * RELOAD_S)
        queries.check(before)
    filler.unlink()
    code, out = run_cli(env, "kb", "add", doc)
    after = published_version(env["kb"])
    assert after != before and f"published {after}" in out
    wait_for_version(triton, after)


def test_a_corrupt_index(env, triton):
    if published_version(env["kb"]) == "v000001":  # the disk-full test was skipped: publish a second version
        run_cli(env, "kb", "add", env["docs"] / "note3.md")
    current = published_version(env["kb"])
    wait_for_version(triton, current)
    older = versions_dir(env["kb"]) / "v000001"
    index = older / "index.faiss"
    saved = env["base"] / "index.faiss.good"
    shutil.copyfile(index, saved)
    data = bytearray(index.read_bytes())
    data[len(data) // 2 :] = os.urandom(len(data) - len(data) // 2)  # same size, other bytes
    index.write_bytes(bytes(data))
    try:
        with Queries(triton) as queries:
            code, out = run_cli(env, "kb", "rollback", "v000001", ok=False)
            assert code == 1 and "version v000001 is damaged" in out and "does not match the SHA-256" in out
            assert "tritonrag kb versions" in out and "tritonrag kb rollback VERSION" in out
            assert published_version(env["kb"]) == current
            code, out = run_cli(env, "kb", "stats", "--index-dir", older, ok=False)
            assert code == 1 and "version v000001 is damaged" in out
            # a pointer flipped past the checks (by hand, another tool): the retriever does not follow it
            (env["kb"] / POINTER_FILE).write_text(json.dumps({"version": "v000001"}))
            time.sleep(5 * RELOAD_S)
            stats = served(triton)
            assert stats["reload_error"]["version"] == "v000001" and "damaged" in stats["reload_error"]["error"]
            queries.check(current)
        run_cli(env, "kb", "rollback", current)  # the fix the message names
        time.sleep(3 * RELOAD_S)
        assert "reload_error" not in served(triton) and served(triton)["version"] == current
    finally:
        shutil.copyfile(saved, index)


def test_a_pointer_naming_a_missing_version(env, triton):
    current = published_version(env["kb"])
    wait_for_version(triton, current)
    doc = env["docs"] / "note1.md"
    with Queries(triton) as queries:
        (env["kb"] / POINTER_FILE).write_text(json.dumps({"version": "v000099"}))
        time.sleep(5 * RELOAD_S)
        assert "v000099, which is not in" in served(triton)["reload_error"]["error"]
        code, out = run_cli(env, "kb", "add", doc, ok=False)
        assert code == 1 and "names version v000099, which is not in" in out
        assert "`tritonrag kb versions` lists the stored versions and `tritonrag kb rollback VERSION`" in out
        code, out = run_cli(env, "kb", "versions")
        assert code == 0 and "tritonrag kb rollback VERSION" in out
        assert [p.name for p in versions_dir(env["kb"]).iterdir() if p.name == "v000099"] == []
        no_leftovers(env)
        queries.check(current)
    run_cli(env, "kb", "rollback", current)
    run_cli(env, "kb", "add", doc)
    after = published_version(env["kb"])
    assert after != current
    wait_for_version(triton, after)
    assert "reload_error" not in served(triton)


HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def test_a_docstore_locked_by_another_writer(env, triton):
    current = published_version(env["kb"])
    wait_for_version(triton, current)
    doc = env["docs"] / "note2.md"
    docstore = versions_dir(env["kb"]) / current / "docstore.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(docstore)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with Queries(triton) as queries:
            started = time.monotonic()
            code, out = run_cli(env, "kb", "add", doc, ok=False)
            assert code == 1 and time.monotonic() - started < 60
            assert (f"the docstore {docstore} is locked by another writer (another ingest?): wait for it to finish "
                    "and rerun") in out
            assert published_version(env["kb"]) == current
            no_leftovers(env)
            queries.check(current)  # the served version's searches ignore the lock (it is immutable)
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=10)
    run_cli(env, "kb", "add", doc)
    after = published_version(env["kb"])
    assert after != current
    wait_for_version(triton, after)
