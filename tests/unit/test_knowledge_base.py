import json

import numpy as np
import pytest
from fakes import DIM, FakeEmbedder, doc, small_settings

from tritonrag.kb import search
from tritonrag.kb.filters import parse_filter
from tritonrag.kb.ingest import update_knowledge_base
from tritonrag.kb.search import KnowledgeBase, is_current
from tritonrag.kb.versions import MANIFEST_FILE, published_path

DOCS = [
    doc("book1.txt", 40, metadata={"author": "Verne", "year": 1872}),
    doc("book2.txt", 40, metadata={"author": "Verne", "year": 1870}),
    doc("notes.md", 16, metadata={"author": "me"}),
]


def build(root, index_type="flat", docs=DOCS):
    return update_knowledge_base(root, small_settings(index_type=index_type), docs, replace_all=True,
                                 embedder=FakeEmbedder(), progress=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("kb")
    build(path)
    return path


@pytest.fixture
def kb(root):
    base = KnowledgeBase(root)
    yield base
    base.close()


def chunk_texts(kb):
    return dict(kb.docstore._db.execute("SELECT id, text FROM chunks"))


def test_each_chunk_finds_itself_first(kb):
    texts = chunk_texts(kb)
    queries = np.stack([FakeEmbedder.vector(t) for t in texts.values()])
    scores, ids = kb.search(queries, 3)
    assert ids[:, 0].tolist() == list(texts)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_fetch_returns_text_and_metadata_in_the_given_order(kb):
    texts = chunk_texts(kb)
    hits = kb.fetch([9, -1, 2, 0], [0.3, 0.0, 0.2, 0.1])
    assert [h.chunk_id for h in hits] == [9, 2, 0]
    assert [h.text for h in hits] == [texts[9], texts[2], texts[0]]
    assert hits[-1].metadata() == {"author": "Verne", "year": 1872, "source": "book1.txt", "title": "Title book1.txt",
                                   "section": "", "position": 0}
    assert kb.fetch([-1], [0.0]) == [] and kb.fetch([], []) == []


def test_k_larger_than_the_index_is_clipped(kb):
    _, ids = kb.search(np.ones((2, DIM), np.float32), 1000)
    assert ids.shape == (2, len(kb)) and (ids >= 0).all()


@pytest.mark.parametrize("shape", [(1, DIM + 1), (DIM,), (1, 1, DIM)])
def test_wrong_query_shape_rejected(kb, shape):
    with pytest.raises(ValueError, match=str(DIM)):
        kb.search(np.zeros(shape, np.float32), 3)


@pytest.mark.parametrize(
    ("flt", "sources"),
    [
        ({"source": "notes.md"}, {"notes.md"}),
        ({"source": ["book2.txt", "notes.md"]}, {"book2.txt", "notes.md"}),
        ({"author": "Verne"}, {"book1.txt", "book2.txt"}),
        ({"author": "Verne", "year": 1870}, {"book2.txt"}),
        ({"title": "Title notes.md"}, {"notes.md"}),
        ({"author": "nobody"}, set()),
    ],
)
@pytest.mark.parametrize("exact_max", [0, 50000])  # index with an ID selector / exact over the matching chunks
def test_filters_restrict_results(kb, flt, sources, exact_max):
    kb.filter_exact_max = exact_max
    scores, ids = kb.search_filtered(np.ones((2, DIM), np.float32), 50, parse_filter(flt))
    found = {h.source for h in kb.fetch(ids[0], scores[0])}
    assert found == sources
    expected = kb.docstore._db.execute(
        f"SELECT COUNT(*) FROM chunks WHERE source IN ({','.join('?' * len(sources))})", sorted(sources)
    ).fetchone()[0]
    assert ids.shape == (2, expected)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_filtered_exact_and_selector_searches_agree(kb):
    flt = parse_filter({"author": "Verne"})
    queries = np.random.default_rng(3).normal(size=(4, DIM)).astype(np.float32)
    kb.filter_exact_max = 0
    s1, i1 = kb.search_filtered(queries, 5, flt)
    kb.filter_exact_max = 10**6
    s2, i2 = kb.search_filtered(queries, 5, flt)
    assert (i1 == i2).all()
    np.testing.assert_allclose(s1, s2, atol=1e-5)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_indexes_search_and_filter(tmp_path, index_type):
    build(tmp_path, index_type)
    kb = KnowledgeBase(tmp_path, nprobe=1000, ef_search=200, filter_exact_max=0)
    try:
        texts = chunk_texts(kb)
        queries = np.stack([FakeEmbedder.vector(t) for t in texts.values()])
        _, ids = kb.search(queries, 1)
        assert ids[:, 0].tolist() == list(texts)
        scores, ids = kb.search_filtered(queries[:1], 3, parse_filter({"source": "notes.md"}))
        assert {h.source for h in kb.fetch(ids[0], scores[0])} == {"notes.md"}
        assert kb.stats()["index"]["type"] == index_type
    finally:
        kb.close()


def test_stats(kb):
    stats = kb.stats()
    assert stats["version"] == "v000001"
    assert stats["vectors"] == len(kb) and stats["dimension"] == DIM
    assert stats["index"]["type"] == "flat" and stats["index"]["device"] == "cpu"
    assert stats["index"]["bytes"] > DIM * 4 * len(kb)
    assert stats["docstore"]["documents"] == 3 and stats["docstore"]["chunks"] == len(kb)
    assert stats["chunking"] == {"chunk_tokens": 8, "overlap_tokens": 2}
    json.dumps(stats)


def test_stats_list_the_documents_for_a_filter(kb, monkeypatch):
    stats = kb.stats()
    assert [d["source"] for d in stats["documents_list"]] == ["book1.txt", "book2.txt", "notes.md"]
    assert sum(d["chunks"] for d in stats["documents_list"]) == len(kb)
    assert all(set(d) == {"source", "title", "chunks"} for d in stats["documents_list"])
    assert stats["documents_list_truncated"] is False
    monkeypatch.setattr(search, "STATS_DOCUMENTS", 2)
    capped = kb.stats()
    assert [d["source"] for d in capped["documents_list"]] == ["book1.txt", "book2.txt"]
    assert capped["documents_list_truncated"] is True and capped["docstore"]["documents"] == 3


def test_documents_listing(kb):
    assert [d[0] for d in kb.documents()] == ["book1.txt", "book2.txt", "notes.md"]
    assert len(kb.documents(limit=1)) == 1


def test_a_version_folder_opens_directly(root):
    kb = KnowledgeBase(published_path(root))
    assert kb.version == "v000001"
    kb.close()


def test_empty_folder_hints_ingest(tmp_path):
    with pytest.raises(FileNotFoundError, match="tritonrag ingest"):
        KnowledgeBase(tmp_path)


def test_other_format_version_rejected(tmp_path):
    build(tmp_path)
    path = published_path(tmp_path) / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 999}))
    with pytest.raises(ValueError, match="format_version"):
        KnowledgeBase(tmp_path)


def test_is_current(root):
    s = small_settings()
    assert is_current(root, s.embedder.model, 8, 2)
    assert is_current(root, s.embedder.model, 8, 2, "flat")
    assert not is_current(root, s.embedder.model, 8, 2, "hnsw")
    assert not is_current(root, "other", 8, 2)
    assert not is_current(root / "nowhere", s.embedder.model, 8, 2)


@pytest.mark.parametrize("name", ["kb#1", "kb?x", "kb%20"])
def test_paths_with_uri_characters(tmp_path, name):
    build(tmp_path / name, docs=[doc("a.txt")])
    kb = KnowledgeBase(tmp_path / name)
    try:
        assert kb.fetch([0], [1.0])[0].source == "a.txt"
    finally:
        kb.close()
