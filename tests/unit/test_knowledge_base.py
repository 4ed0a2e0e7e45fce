import json

import numpy as np
import pytest

from tritonrag.chunking import Chunk
from tritonrag.knowledge_base import KnowledgeBase, read_manifest, write_knowledge_base

DIM = 16
N = 12


def unit_vectors(n, dim=DIM, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_chunks(n, source_count=3):
    return [
        Chunk(source=f"doc{i % source_count}.txt", title=f"Doc {i % source_count}", position=i // source_count,
              text=f"chunk text number {i}", n_tokens=4, section=f"CHAPTER {i}.")
        for i in range(n)
    ]


def build(target, vectors=None, chunks=None, **kw):
    vectors = unit_vectors(N) if vectors is None else vectors
    chunks = make_chunks(len(vectors)) if chunks is None else chunks
    args = {"embedder_model": "test-model", "chunk_tokens": 10, "overlap_tokens": 2, **kw}
    return write_knowledge_base(target, vectors, chunks, **args)


@pytest.fixture
def kb(tmp_path):
    build(tmp_path / "kb")
    base = KnowledgeBase(tmp_path / "kb")
    yield base
    base.close()


def test_manifest_describes_the_index(tmp_path):
    manifest = build(tmp_path / "kb")
    assert manifest.dimension == DIM
    assert manifest.chunks == N
    assert manifest.documents == 3
    assert manifest.embedder_model == "test-model"
    assert (manifest.chunk_tokens, manifest.overlap_tokens) == (10, 2)
    assert read_manifest(tmp_path / "kb") == manifest


def test_open_and_size(kb):
    assert len(kb) == N
    assert kb.dimension == DIM


def test_each_vector_finds_itself_first(kb):
    vectors = unit_vectors(N)
    scores, ids = kb.search(vectors, 3)
    assert scores.shape == ids.shape == (N, 3)
    assert ids[:, 0].tolist() == list(range(N))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_fetch_returns_texts_and_metadata_in_order(kb):
    scores, ids = kb.search(unit_vectors(N)[5:6], 4)
    hits = kb.fetch(ids[0], scores[0])
    assert [h.chunk_id for h in hits] == ids[0].tolist()
    assert hits[0].chunk_id == 5
    chunks = make_chunks(N)
    for hit, score in zip(hits, scores[0], strict=True):
        chunk = chunks[hit.chunk_id]
        assert hit.text == chunk.text
        assert hit.score == pytest.approx(float(score))
        assert hit.metadata() == {
            "source": chunk.source, "title": chunk.title, "section": chunk.section, "position": chunk.position
        }


def test_fetch_keeps_requested_order_and_skips_padding(kb):
    hits = kb.fetch([9, -1, 2, 0], [0.3, 0.0, 0.2, 0.1])
    assert [h.chunk_id for h in hits] == [9, 2, 0]
    assert [h.score for h in hits] == pytest.approx([0.3, 0.2, 0.1])
    assert [h.text for h in hits] == ["chunk text number 9", "chunk text number 2", "chunk text number 0"]
    assert kb.fetch([-1, -1], [0.0, 0.0]) == []
    assert kb.fetch([], []) == []


def test_k_larger_than_index_is_clipped(kb):
    _, ids = kb.search(unit_vectors(2, seed=7), 1000)
    assert ids.shape == (2, N)
    assert sorted(ids[0].tolist()) == list(range(N))
    assert (ids >= 0).all()


@pytest.mark.parametrize("shape", [(1, DIM + 1), (1, DIM - 1), (DIM,), (1, 1, DIM)])
def test_wrong_query_shape_rejected(kb, shape):
    with pytest.raises(ValueError, match=str(DIM)):
        kb.search(np.zeros(shape, dtype=np.float32), 3)


def test_float64_queries_accepted(kb):
    _, ids = kb.search(unit_vectors(N).astype(np.float64)[:2], 1)
    assert ids[:, 0].tolist() == [0, 1]


def test_read_manifest_on_empty_dir_hints_ingest(tmp_path):
    with pytest.raises(FileNotFoundError, match="tritonrag ingest"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="tritonrag ingest"):
        KnowledgeBase(tmp_path)


def test_read_manifest_rejects_other_format_version(tmp_path):
    build(tmp_path / "kb")
    path = tmp_path / "kb" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["format_version"] = 999
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="format_version"):
        read_manifest(tmp_path / "kb")


def test_vector_chunk_count_mismatch_rejected(tmp_path):
    with pytest.raises(ValueError, match="chunks"):
        build(tmp_path / "kb", vectors=unit_vectors(3), chunks=make_chunks(2))
    assert not (tmp_path / "kb").exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder was removed


def test_rewrite_replaces_target_atomically(tmp_path):
    target = tmp_path / "kb"
    build(target)
    new_vectors = unit_vectors(4, seed=42)
    new_chunks = [Chunk(source="new.txt", title="New", position=i, text=f"new {i}", n_tokens=2) for i in range(4)]
    manifest = build(target, new_vectors, new_chunks)
    assert manifest.chunks == 4
    assert [p.name for p in tmp_path.iterdir()] == ["kb"]  # no staging or old folders left behind
    kb = KnowledgeBase(target)
    try:
        assert len(kb) == 4
        scores, ids = kb.search(new_vectors[3:4], 10)
        assert ids.shape == (1, 4)
        assert kb.fetch(ids[0], scores[0])[0].text == "new 3"
    finally:
        kb.close()


def test_reader_of_old_version_keeps_working_after_rewrite(tmp_path):
    target = tmp_path / "kb"
    build(target)
    old = KnowledgeBase(target)
    try:
        build(target, unit_vectors(4, seed=42), make_chunks(4))
        new = KnowledgeBase(target)
        assert len(new) == 4
        new.close()
        assert len(old) == N  # the open index is in memory; the swap did not corrupt it
    finally:
        old.close()


def test_search_with_k_zero(kb):
    try:
        scores, ids = kb.search(unit_vectors(1), 0)
    except ValueError:
        return
    assert ids.shape == scores.shape == (1, 0)


@pytest.mark.parametrize("name", ["kb#1", "kb?x", "kb%20"])
def test_paths_with_uri_characters(tmp_path, name):
    build(tmp_path / name)
    kb = KnowledgeBase(tmp_path / name)
    try:
        scores, ids = kb.search(unit_vectors(N)[:1], 1)
        assert kb.fetch(ids[0], scores[0])[0].text == "chunk text number 0"
    finally:
        kb.close()
