"""The retriever's pure logic: request validation, batched dense, sparse and hybrid search, and the fusion."""

import dataclasses
import json

import numpy as np
import pytest
from fakes import DIM, FakeEmbedder, doc, small_settings

from tritonrag.errors import InvalidInput
from tritonrag.kb.batched_search import parse_search, run_searches
from tritonrag.kb.fusion import Found, fuse
from tritonrag.kb.ingest import update_knowledge_base
from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.sparse import fts_query, query_terms
from tritonrag.kb.versions import MANIFEST_FILE, published_path

SETTINGS = small_settings().retriever


def parse(queries=None, top_k=None, flt=None, texts=None, **params):
    queries = np.ones((1, DIM), np.float32) if queries is None else queries
    params.setdefault("mode", "dense")
    return parse_search(queries, DIM, top_k, flt, params, SETTINGS, texts)


def test_defaults_and_options():
    request = parse(top_k=7, flt='{"source": "a.txt"}', nprobe=8, ef_search=64)
    assert (request.top_k, request.nprobe, request.ef_search) == (7, 8, 64)
    assert request.filter.fields == (("source", ("a.txt",)),)
    assert parse().top_k == SETTINGS.top_k_default and parse().filter is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queries": np.ones((1, DIM + 1), np.float32)}, rf"\[batch, {DIM}\]"),
        ({"queries": np.full((1, DIM), np.nan, np.float32)}, "NaN"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 10**6}, "top_k"),
        ({"flt": "{oops"}, "filter"),
        ({"nprobe": 0}, "nprobe"),
        ({"ef_search": "x"}, "ef_search"),
        ({"efsearch": 3}, "unknown parameter"),
    ],
)
def test_bad_requests(kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        parse(**kwargs)


def test_run_searches_groups_requests_and_keeps_each_ones_top_k(tmp_path):
    update_knowledge_base(tmp_path, small_settings(), [doc("a.txt", 30), doc("b.txt", 30)], replace_all=True,
                          embedder=FakeEmbedder(), progress=False)
    kb = KnowledgeBase(tmp_path)
    try:
        q = np.random.default_rng(0).normal(size=(3, DIM)).astype(np.float32)
        requests = [parse(q[:2], top_k=2), parse(q[2:], top_k=5), parse(q[:1], top_k=3, flt={"source": "b.txt"})]
        results = [r.rows for r in run_searches(kb, requests, SETTINGS)]
        assert [len(r) for r in results] == [2, 1, 1]
        assert [len(rows) for rows in results[0]] == [2, 2] and len(results[1][0]) == 5
        assert {h.source for h in results[2][0]} == {"b.txt"}
        alone = run_searches(kb, [parse(q[2:], top_k=5)], SETTINGS)[0].rows
        assert [h.chunk_id for h in alone[0]] == [h.chunk_id for h in results[1][0]]
    finally:
        kb.close()


# --- sparse and hybrid ---------------------------------------------------------------------------------------------

def test_query_terms_drop_stop_words_and_never_pass_query_syntax():
    assert query_terms("What is the body of water in Utah?") == ["what", "body", "water", "utah"]
    assert fts_query('Fogg" OR NEAR(x) -y* "') == '"fogg" OR "near" OR "x" OR "y"'
    assert fts_query("is it the?") == ""
    assert len(query_terms(" ".join(f"w{i}" for i in range(500)))) == 64


def test_hybrid_and_sparse_need_the_questions_text():
    with pytest.raises(InvalidInput, match="needs input 'query'"):
        parse(mode="hybrid")
    with pytest.raises(InvalidInput, match="2 rows but 'embedding' has 1"):
        parse(mode="hybrid", texts=["a", "b"])
    with pytest.raises(InvalidInput, match="row 0 is empty"):
        parse(mode="sparse", texts=[" "])
    with pytest.raises(InvalidInput, match="limit is"):
        parse(mode="sparse", texts=["x" * (SETTINGS.max_query_chars + 1)])
    with pytest.raises(InvalidInput, match="mode must be one of dense, sparse, hybrid"):
        parse(mode="bm25")
    with pytest.raises(InvalidInput, match="fusion must be one of rrf, weighted"):
        parse(mode="hybrid", texts=["q"], fusion="max")
    with pytest.raises(InvalidInput, match="candidates must be between"):
        parse(mode="hybrid", texts=["q"], candidates=0)
    with pytest.raises(InvalidInput, match="mode hybrid needs input 'embedding'"):
        parse_search(None, DIM, None, None, {"mode": "hybrid"}, SETTINGS, ["q"])
    sparse_only = parse_search(None, DIM, 3, None, {"mode": "sparse"}, SETTINGS, ["q"])
    assert (sparse_only.queries, sparse_only.texts, sparse_only.rows) == (None, ("q",), 1)
    vector = np.ones((1, DIM), np.float32)
    assert parse_search(vector, DIM, None, None, {}, SETTINGS, ["q"]).mode == SETTINGS.mode
    assert parse_search(vector, DIM, None, None, {}, SETTINGS).mode == "dense"  # no text: dense
    assert parse_search(vector, DIM, None, None, {}, SETTINGS, ["q"], sparse_index=False).mode == "dense"
    with pytest.raises(InvalidInput, match="kb reindex"):
        parse_search(vector, DIM, None, None, {"mode": "sparse"}, SETTINGS, ["q"], sparse_index=False)


def test_rrf_fuses_by_rank_and_weighted_by_normalised_score():
    lists = {"dense": [(1, 0.9), (2, 0.8), (3, 0.1)], "sparse": [(3, 20.0), (2, 5.0)]}
    rrf = fuse(lists, 3)
    assert [f.chunk_id for f in rrf] == [3, 2, 1]  # 3: ranks 3 and 1; 2: ranks 2 and 2; 1: rank 1 only
    assert rrf[0].found == {"dense": Found(3, 0.1), "sparse": Found(1, 20.0)}
    assert rrf[0].score == pytest.approx(1 / 63 + 1 / 61) and rrf[1].score == pytest.approx(2 / 62)
    weighted = fuse(lists, 3, "weighted", weights={"dense": 1.0, "sparse": 2.0})
    assert [f.chunk_id for f in weighted] == [3, 1, 2]  # 3: 0 + 2*1; 1: 1 + 0; 2: 0.875 + 0
    assert fuse({"dense": [(-1, 0.0)], "sparse": []}, 3) == []


def _words_kb(tmp_path):
    texts = {"utah.txt": "the great salt lake in utah is a sheet of salt water",
             "bank.txt": "a robbery at the bank of england fifty five thousand pounds",
             "fogg.txt": "phileas fogg wagered twenty thousand pounds at the reform club"}
    docs = [dataclasses.replace(doc(source), text=text) for source, text in texts.items()]
    settings = small_settings(chunk_tokens=0, overlap_tokens=0)
    update_knowledge_base(tmp_path, settings, docs, replace_all=True, embedder=FakeEmbedder(), progress=False)
    return KnowledgeBase(tmp_path)


def test_sparse_search_finds_words_filters_and_reports_similarity(tmp_path):
    kb = _words_kb(tmp_path)
    try:
        query = FakeEmbedder.vector("robbery").reshape(1, -1)
        (result,) = run_searches(kb, [parse(query, top_k=3, mode="sparse", texts=["Who robbed the Bank?"])],
                                 SETTINGS)
        (hits,) = result.rows
        assert [h.source for h in hits] == ["bank.txt"]  # "bank" (robbed/robbery stem apart)
        assert hits[0].found == {"sparse": Found(1, hits[0].score)} and hits[0].score > 0
        assert hits[0].similarity == pytest.approx(float(kb.similarities(query[0], [hits[0].chunk_id])[0]))
        assert set(result.timing) == {"sparse_ms", "fusion_ms", "fetch_ms"}
        (none,) = run_searches(kb, [parse(query, mode="sparse", texts=["pounds"], flt='{"source": "utah.txt"}')],
                               SETTINGS)
        assert none.rows == [[]]
        (some,) = run_searches(kb, [parse(query, mode="sparse", texts=["pounds"], flt='{"source": "fogg.txt"}')],
                               SETTINGS)
        assert [h.source for h in some.rows[0]] == ["fogg.txt"]
    finally:
        kb.close()


def test_hybrid_search_fuses_both_sides_and_says_where_each_hit_was_found(tmp_path):
    kb = _words_kb(tmp_path)
    try:
        vector = FakeEmbedder.vector(kb.fetch([0], [0.0])[0].text).reshape(1, -1)  # chunk 0's own vector
        (result,) = run_searches(kb, [parse(vector, top_k=3, mode="hybrid", texts=["thousand pounds"])], SETTINGS)
        (hits,) = result.rows
        assert len(hits) == 3 and {"dense_ms", "sparse_ms", "fusion_ms", "fetch_ms"} <= set(result.timing)
        by_id = {h.chunk_id: h for h in hits}
        assert by_id[0].found["dense"].rank == 1 and by_id[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert {h.source for h in hits if "sparse" in (h.found or {})} == {"bank.txt", "fogg.txt"}
        assert all(h.similarity is not None for h in hits)
        assert json.loads(json.dumps(hits[0].found_json()))["similarity"] == pytest.approx(hits[0].similarity, abs=1e-5)
    finally:
        kb.close()


def test_an_update_changes_only_what_changed_in_the_sparse_index(tmp_path):
    kb = _words_kb(tmp_path)
    kb.close()
    settings = small_settings(chunk_tokens=0, overlap_tokens=0)
    new = dataclasses.replace(doc("lake.txt"), text="a lake of fresh water in the mountains")
    update_knowledge_base(tmp_path, settings, [new], deletes=["utah.txt"], embedder=FakeEmbedder(), progress=False)
    build = json.loads((published_path(tmp_path) / MANIFEST_FILE).read_text())["build"]
    assert (build["docstore_incremental"], build["chunks_inserted"], build["chunks_deleted"]) == (True, 1, 1)
    kb = KnowledgeBase(tmp_path)
    try:
        (hits,) = kb.sparse_search(["salt water"], 5)
        assert [kb.fetch([cid], [s])[0].source for cid, s in hits] == ["lake.txt"]  # utah.txt is gone
    finally:
        kb.close()


def test_a_knowledge_base_without_a_sparse_index_says_how_to_add_one(tmp_path):
    kb = _words_kb(tmp_path)
    try:
        kb.manifest = dataclasses.replace(kb.manifest, sparse={})  # as a format-2 version reads
        with pytest.raises(ValueError, match="tritonrag kb reindex"):
            kb.sparse_search(["salt"], 3)
    finally:
        kb.close()
