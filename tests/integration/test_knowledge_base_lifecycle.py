"""Knowledge base lifecycle on a real Triton (embedder + retriever) while a client keeps querying:
ingest -> query -> add -> query sees it -> delete -> gone; a build killed midway leaves the old version served."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonrag_client import retriever_stats

from .helpers import bytes_input
from .servers import triton_with

CLI = [sys.executable, "-m", "tritonrag.cli"]
QUESTION = "How tall is Mount Glorp, the highest mountain of Freedonia?"
DOCS = {
    "tea.md": "# Tea\n\nZanzibar spiced tea must steep for seven minutes in water at ninety degrees.",
    "river.txt": "The river Wibble floods the valley of Oskland every spring, carrying silt to the farms.",
}
MOUNTAIN = "Mount Glorp, the highest mountain of Freedonia, rises 4810 metres above the sea."
VOLCANO = "<html><head><title>Volcanoes</title></head><body><p>The volcano Smoky Pete erupts every 12 years."


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A knowledge base of its own, and settings that point the retriever at it and reload quickly."""
    root = tmp_path_factory.mktemp("lifecycle")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    config = root / "config.toml"
    config.write_text(f'[retriever]\nindex_dir = "{root / "kb"}"\nreload_interval_s = 0.2\n'
                      "[index]\nembed_batch_size = 8\n")
    environ = {**os.environ, "TRITONRAG_CONFIG": str(config)}
    run_cli(environ, "ingest", str(docs))
    return {"root": root, "kb": root / "kb", "config": config, "environ": environ}


@pytest.fixture(scope="module")
def triton(env):
    with triton_with(env["config"], env["root"] / "triton.log", models=("embedder", "retriever")) as server:
        yield server


def run_cli(environ, *args, timeout=600):
    done = subprocess.run([*CLI, *args], env=environ, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def embed(url, text):
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.infer("embedder", [bytes_input("text", [text], [1, 1])]).as_numpy("embedding")
    finally:
        client.close()


def search(client, vector, top_k=3, flt=None):
    inputs = [grpcclient.InferInput("embedding", list(vector.shape), "FP32"),
              grpcclient.InferInput("top_k", [1, 1], "INT32")]
    inputs[0].set_data_from_numpy(vector)
    inputs[1].set_data_from_numpy(np.array([[top_k]], np.int32))
    if flt is not None:
        inputs.append(bytes_input("filter", [json.dumps(flt)], [1, 1]))
    result = client.infer("retriever", inputs)
    return [json.loads(m) for m in result.as_numpy("metadata").reshape(-1)]


def wait_for_version(url, version, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if retriever_stats(url)["version"] == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"retriever still serves {retriever_stats(url)['version']}, not {version}")


class BackgroundQueries:
    """Queries the retriever (gRPC) and its stats (HTTP) in a loop; records every error."""

    def __init__(self, triton, vector):
        self.triton, self.vector = triton, vector
        self.errors, self.count, self.versions = [], 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        client = grpcclient.InferenceServerClient(self.triton.grpc_url)
        while not self._stop.is_set():
            try:
                assert len(search(client, self.vector)) >= 1
                self.versions.add(retriever_stats(self.triton.http_url)["version"])
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
        self._thread.join(30)


def test_add_query_delete_while_serving_with_zero_errors(env, triton):
    url, environ = triton.http_url, env["environ"]
    vector = embed(triton.grpc_url, QUESTION)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    assert retriever_stats(url)["version"] == "v000001"
    assert "mountain.md" not in {m["source"] for m in search(client, vector)}
    with BackgroundQueries(triton, vector) as background:
        (env["root"] / "mountain.md").write_text(MOUNTAIN)
        run_cli(environ, "kb", "add", str(env["root"] / "mountain.md"))
        wait_for_version(url, "v000002")
        assert search(client, vector)[0]["source"] == "mountain.md"

        # Embedding through the served embedder (concurrent gRPC requests) instead of in-process.
        (env["root"] / "volcano.html").write_text(VOLCANO)
        out = run_cli(environ, "kb", "add", str(env["root"] / "volcano.html"), "--via", triton.grpc_url)
        assert "embedded 1" in " ".join(out.split())
        wait_for_version(url, "v000003")
        volcano = embed(triton.grpc_url, "When does Smoky Pete erupt?")
        top = search(client, volcano)[0]
        assert (top["source"], top["title"]) == ("volcano.html", "Volcanoes")

        # A filter restricts retrieval to one document.
        assert {m["source"] for m in search(client, vector, 5, {"source": "tea.md"})} == {"tea.md"}

        run_cli(environ, "kb", "delete", "mountain.md")
        wait_for_version(url, "v000004")
        assert "mountain.md" not in {m["source"] for m in search(client, vector, 10)}
        time.sleep(0.5)
    client.close()
    assert background.errors == []
    assert background.count > 10
    assert {"v000001", "v000002", "v000004"} <= background.versions
    stats = retriever_stats(url)
    assert stats["docstore"]["documents"] == 3 and stats["reloads"] >= 3
    metrics = urllib.request.urlopen(triton.metrics_url).read().decode()
    assert 'tritonrag_retriever_index_version{instance="retriever_0_0",model="retriever"} 4' in metrics


def test_a_build_killed_midway_leaves_the_old_version_served_and_resumes(env, triton):
    url, environ = triton.http_url, env["environ"]
    before = retriever_stats(url)["version"]
    big = env["root"] / "big"
    big.mkdir()
    words = " ".join(f"token{i % 997} word{i}" for i in range(3000))
    (big / "long.txt").write_text(words)
    vector = embed(triton.grpc_url, QUESTION)
    journal = env["kb"] / ".embedding-journal.sqlite"
    with BackgroundQueries(triton, vector) as background:
        build = subprocess.Popen([*CLI, "kb", "add", str(big)], env=environ, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        embedded = 0
        while embedded < 16 and time.monotonic() < deadline and build.poll() is None:
            time.sleep(0.2)
            if journal.exists():
                try:
                    with sqlite3.connect(journal, timeout=1) as db:
                        embedded = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
                except sqlite3.Error:
                    pass
        assert build.poll() is None, "the build finished before it could be killed; make the document longer"
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
        time.sleep(1.0)  # several reload intervals
        assert retriever_stats(url)["version"] == before
        assert background.errors == []
    out = " ".join(run_cli(environ, "kb", "add", str(big)).split())
    assert "resumed from an interrupted build" in out and "interrupted build 0" not in out
    assert not journal.exists()
