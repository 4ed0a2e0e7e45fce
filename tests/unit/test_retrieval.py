import numpy as np
import pytest
from fakes import DIM, FakeEmbedder, doc, small_settings

from tritonrag.errors import InvalidInput
from tritonrag.kb.batched_search import parse_search, run_searches
from tritonrag.kb.ingest import update_knowledge_base
from tritonrag.kb.search import KnowledgeBase

SETTINGS = small_settings().retriever


def parse(queries=None, top_k=None, flt=None, **params):
    queries = np.ones((1, DIM), np.float32) if queries is None else queries
    return parse_search(queries, DIM, top_k, flt, params, SETTINGS)


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
        results = run_searches(kb, requests)
        assert [len(r) for r in results] == [2, 1, 1]
        assert [len(rows) for rows in results[0]] == [2, 2] and len(results[1][0]) == 5
        assert {h.source for h in results[2][0]} == {"b.txt"}
        alone = run_searches(kb, [parse(q[2:], top_k=5)])
        assert [h.chunk_id for h in alone[0][0]] == [h.chunk_id for h in results[1][0]]
    finally:
        kb.close()
