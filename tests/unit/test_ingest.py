import numpy as np
import pytest
from fakes import DIM, FakeEmbedder, doc, small_settings

from tritonrag.kb.embedding_journal import JOURNAL_FILE
from tritonrag.kb.faiss_index import IndexSpec
from tritonrag.kb.ingest import reindex, rollback, update_knowledge_base
from tritonrag.kb.sample import sample_corpus
from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.versions import list_versions, published_version, read_manifest, versions_dir


def build(root, docs, embedder=None, settings=None, **kw):
    return update_knowledge_base(root, settings or small_settings(), docs, embedder=embedder or FakeEmbedder(),
                                 progress=False, **kw)


def open_kb(root):
    return KnowledgeBase(root)


def stored(root):
    kb = open_kb(root)
    try:
        rows = kb.docstore._db.execute("SELECT id, source, text FROM chunks ORDER BY id").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        kb.close()


def test_build_publishes_a_searchable_first_version(tmp_path):
    report = build(tmp_path, [doc("a.txt", 20), doc("b.txt", 5)], replace_all=True)
    m = report.manifest
    assert (m.version, m.parent, m.documents, m.index_type) == ("v000001", None, 2, "flat")
    assert m.chunks == 3 + 1  # 20 words in windows of 8 with stride 6: 0-7, 6-13, 12-19; 5 words: one chunk
    assert (report.added, report.embedded, report.reused) == (2, 4, 0)
    assert published_version(tmp_path) == "v000001"
    kb = open_kb(tmp_path)
    try:
        text = stored(tmp_path)[1][1]
        scores, ids = kb.search(FakeEmbedder.vector(text)[None], 2)
        assert ids[0, 0] == 1 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
        assert kb.stats()["docstore"] == {"documents": 2, "chunks": 4, "bytes": kb.stats()["docstore"]["bytes"]}
    finally:
        kb.close()


def test_reingesting_unchanged_documents_embeds_nothing(tmp_path):
    docs = [doc("a.txt", 20), doc("b.txt", 5)]
    build(tmp_path, docs, replace_all=True)
    before = stored(tmp_path)
    embedder = FakeEmbedder()
    report = build(tmp_path, docs, embedder, replace_all=True)
    assert embedder.embedded == []
    assert (report.unchanged, report.reused, report.embedded) == (2, 4, 0)
    assert stored(tmp_path) == before  # same chunk ids and texts
    assert report.manifest.parent == "v000001"


def test_add_embeds_only_new_documents_and_keeps_old_ids(tmp_path):
    build(tmp_path, [doc("a.txt", 20)], replace_all=True)
    before = stored(tmp_path)
    embedder = FakeEmbedder()
    report = build(tmp_path, [doc("new.md", 8)], embedder)
    after = stored(tmp_path)
    assert embedder.embedded == [after[3][1]]
    assert {k: after[k] for k in before} == before
    assert after[3][0] == "new.md" and (report.added, report.reused) == (1, 3)


def test_changed_document_is_replaced(tmp_path):
    build(tmp_path, [doc("a.txt", 20), doc("b.txt", 5)], replace_all=True)
    old_b = [text for source, text in stored(tmp_path).values() if source == "b.txt"]
    embedder = FakeEmbedder()
    report = build(tmp_path, [doc("b.txt", 5, tag="fresh")], embedder)
    assert report.updated == 1 and report.embedded == 1 and report.reused == 3
    texts = [text for source, text in stored(tmp_path).values() if source == "b.txt"]
    assert texts != old_b and texts[0].startswith("fresh")
    kb = open_kb(tmp_path)
    try:
        _, ids = kb.search(FakeEmbedder.vector(old_b[0])[None], 1)
        assert stored(tmp_path)[int(ids[0, 0])][1] != old_b[0]  # the old text is gone from the index
    finally:
        kb.close()


def test_delete_removes_documents_without_embedding(tmp_path):
    build(tmp_path, [doc("a.txt", 20), doc("b.txt", 5)], replace_all=True)
    embedder = FakeEmbedder()
    report = update_knowledge_base(tmp_path, small_settings(), deletes=["a.txt"], embedder=embedder, progress=False)
    assert embedder.calls == 0 and report.deleted == 1
    assert {source for source, _ in stored(tmp_path).values()} == {"b.txt"}
    kb = open_kb(tmp_path)
    try:
        assert len(kb) == 1 and kb.index.ntotal == 1
    finally:
        kb.close()


def test_delete_unknown_source_is_an_error_and_publishes_nothing(tmp_path):
    build(tmp_path, [doc("a.txt")], replace_all=True)
    with pytest.raises(ValueError, match=r"nope\.txt"):
        update_knowledge_base(tmp_path, small_settings(), deletes=["nope.txt"], progress=False)
    assert list_versions(tmp_path) == ["v000001"]


def test_replace_all_drops_documents_not_given(tmp_path):
    build(tmp_path, [doc("a.txt"), doc("b.txt")], replace_all=True)
    report = build(tmp_path, [doc("b.txt")], replace_all=True)
    assert (report.deleted, report.unchanged) == (1, 1)
    assert {s for s, _ in stored(tmp_path).values()} == {"b.txt"}


def test_other_chunking_cannot_be_updated_in_place_but_can_be_rebuilt(tmp_path):
    build(tmp_path, [doc("a.txt", 20)], replace_all=True)
    other = small_settings(chunk_tokens=4, overlap_tokens=0)
    with pytest.raises(ValueError, match="chunked 8/2"):
        build(tmp_path, [doc("b.txt")], settings=other)
    embedder = FakeEmbedder()
    report = build(tmp_path, [doc("a.txt", 20)], embedder, settings=other, replace_all=True)
    assert report.embedded == 5 and report.manifest.chunk_tokens == 4


def test_an_interrupted_build_resumes_and_leaves_the_old_version_published(tmp_path):
    build(tmp_path, [doc("seed.txt", 4)], replace_all=True)
    docs = [doc(f"d{i}.txt", 8) for i in range(10)]  # 10 chunks, embedded 4 per call
    with pytest.raises(RuntimeError, match="embedder died"):
        build(tmp_path, docs, FakeEmbedder(fail_after=2))
    assert published_version(tmp_path) == "v000001"
    assert list_versions(tmp_path) == ["v000001"]
    assert (tmp_path / JOURNAL_FILE).exists()
    embedder = FakeEmbedder()
    report = build(tmp_path, docs, embedder)
    assert (report.resumed, report.embedded) == (8, 2)
    assert len(embedder.embedded) == 2
    assert not (tmp_path / JOURNAL_FILE).exists()
    assert report.manifest.chunks == 11


def test_crash_while_writing_leaves_no_version(tmp_path, monkeypatch):
    import faiss

    build(tmp_path, [doc("a.txt")], replace_all=True)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        build(tmp_path, [doc("b.txt")])
    assert published_version(tmp_path) == "v000001"
    assert [p.name for p in versions_dir(tmp_path).iterdir()] == ["v000001"]  # no staging folder left


def test_reindex_changes_the_index_type_not_the_contents(tmp_path):
    build(tmp_path, [doc(f"d{i}.txt", 20) for i in range(30)], replace_all=True)
    before = stored(tmp_path)
    for kind in ("hnsw", "ivf"):
        report = reindex(tmp_path, IndexSpec(kind))
        assert report.manifest.index_type == kind
        assert stored(tmp_path) == before
        kb = open_kb(tmp_path)
        try:
            chunk_id, (_, text) = next(iter(before.items()))
            _, ids = kb.search(FakeEmbedder.vector(text)[None], 1, nprobe=64)
            assert ids[0, 0] == chunk_id
            assert kb.stats()["index"]["loaded_type"] == kind
        finally:
            kb.close()


def test_reindex_of_nothing_says_to_ingest(tmp_path):
    with pytest.raises(FileNotFoundError, match="tritonrag ingest"):
        reindex(tmp_path, IndexSpec("hnsw"))


def test_old_versions_are_pruned_and_rollback_publishes_a_stored_one(tmp_path):
    settings = small_settings(keep_versions=2)
    for i in range(4):
        build(tmp_path, [doc(f"d{i}.txt")], settings=settings)
    assert list_versions(tmp_path) == ["v000003", "v000004"]
    rollback(tmp_path, "v000003")
    assert published_version(tmp_path) == "v000003"
    assert read_manifest(versions_dir(tmp_path) / "v000003").documents == 3
    with pytest.raises(FileNotFoundError, match="v000001"):
        rollback(tmp_path, "v000001")


def test_documents_without_text_are_skipped(tmp_path):
    report = build(tmp_path, [doc("a.txt"), doc("empty.txt", 0)], replace_all=True)
    assert report.manifest.documents == 1


def test_nothing_to_index(tmp_path):
    with pytest.raises(ValueError, match="nothing to index"):
        build(tmp_path, [doc("empty.txt", 0)], replace_all=True)


def test_deleting_everything_leaves_an_empty_searchable_version(tmp_path):
    build(tmp_path, [doc("a.txt")], replace_all=True)
    update_knowledge_base(tmp_path, small_settings(), deletes=["a.txt"], progress=False)
    kb = open_kb(tmp_path)
    try:
        _, ids = kb.search(np.ones((1, DIM), np.float32), 3)
        assert ids.shape == (1, 0)
    finally:
        kb.close()


def test_sample_corpus_from_env(monkeypatch, tmp_path):
    folder = tmp_path / "data" / "eighty_days"
    folder.mkdir(parents=True)
    (folder / "around_the_world.txt").write_text("Phileas Fogg")
    monkeypatch.setenv("TRITONRAG_DATA", str(tmp_path / "data"))
    assert sample_corpus() == folder


def test_sample_corpus_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONRAG_DATA", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="TRITONRAG_DATA"):
        sample_corpus()


def test_updates_keep_the_current_index_type_and_a_full_build_uses_the_settings(tmp_path):
    build(tmp_path, [doc("a.txt")], replace_all=True)
    reindex(tmp_path, IndexSpec("hnsw", hnsw_m=16))
    report = build(tmp_path, [doc("b.txt")])
    assert report.manifest.index == {"type": "hnsw", "m": 16, "ef_construction": 80}
    report = update_knowledge_base(tmp_path, small_settings(), deletes=["a.txt"], progress=False)
    assert report.manifest.index_type == "hnsw"
    assert build(tmp_path, [doc("b.txt")], replace_all=True).manifest.index_type == "flat"
    assert build(tmp_path, [doc("c.txt")], spec=IndexSpec("ivf")).manifest.index_type == "ivf"
