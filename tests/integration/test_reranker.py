"""The reranker over HTTP and gRPC on a real tritonserver (tests/integration/settings.toml: the MiniLM bi-encoder)."""

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritonrag.serving.contract import RERANKER

from .helpers import bytes_input

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
UTAH = "Describe the body of water in Utah"
UTAH_PASSAGES = ["Passepartout bought a pair of shoes in Hong Kong.",
                 "The Great Salt Lake, seventy miles long and thirty-five wide, lies in Utah above the sea.",
                 "Phileas Fogg played whist at the Reform Club every evening."]
ROBBERY = "Who robbed the Bank of England?"
ROBBERY_PASSAGES = ["A well-dressed gentleman took fifty-five thousand pounds from the cashier's table at the Bank.",
                    "The steamer Mongolia reached Suez on time."]


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    module = PROTOCOLS[request.param]
    url = server.http_url if request.param == "http" else server.grpc_url
    c = module.InferenceServerClient(url, concurrency=8) if module is httpclient else module.InferenceServerClient(url)
    c.module = module
    yield c
    c.close()


def inputs(module, query, passages):
    return [bytes_input(RERANKER.query, [query], [1, 1], module),
            bytes_input(RERANKER.passages, passages, [1, len(passages)], module)]


def rerank(client, query, passages):
    return client.infer(RERANKER.model, inputs(client.module, query, passages)).as_numpy(RERANKER.scores)


def test_two_requests_with_different_passage_counts_rank_the_answer_first(client):
    if client.module is httpclient:  # in flight together, so Triton may hand them to one execute call
        pending = [client.async_infer(RERANKER.model, inputs(httpclient, q, p))
                   for q, p in ((UTAH, UTAH_PASSAGES), (ROBBERY, ROBBERY_PASSAGES))]
        utah, robbery = (p.get_result().as_numpy(RERANKER.scores) for p in pending)
    else:
        utah, robbery = rerank(client, UTAH, UTAH_PASSAGES), rerank(client, ROBBERY, ROBBERY_PASSAGES)
    assert utah.shape == (1, 3) and robbery.shape == (1, 2) and utah.dtype == np.float32
    assert int(np.argmax(utah)) == 1 and int(np.argmax(robbery)) == 0
    assert -1.0 <= utah.min() and utah.max() <= 1.0  # cosine similarity (bi-encoder)
    assert utah[0, 1] > utah[0, 0] + 0.1


def test_requests_of_different_lengths_share_dynamic_batches(server):
    """passages is a ragged input: requests with 1, 2, 3 or 4 passages can be batched together."""
    client = httpclient.InferenceServerClient(server.http_url, concurrency=16)
    before = client.get_inference_statistics(RERANKER.model)["model_stats"][0]
    requests = [(f"question {i} about the voyage", [f"passage {i}.{j} about Fogg's travels" for j in range(1 + i % 4)])
                for i in range(32)]
    pending = [client.async_infer(RERANKER.model, inputs(httpclient, q, p)) for q, p in requests]
    results = [p.get_result().as_numpy(RERANKER.scores) for p in pending]
    assert [r.shape for r in results] == [(1, len(p)) for _, p in requests]
    single = httpclient.InferenceServerClient(server.http_url)
    single.module = httpclient
    np.testing.assert_allclose(results[6], rerank(single, *requests[6]), atol=1e-5)
    deadline = time.monotonic() + 10
    while True:  # statistics are updated just after the responses go out
        after = client.get_inference_statistics(RERANKER.model)["model_stats"][0]
        inferences = after["inference_count"] - before["inference_count"]
        if inferences >= 33 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    client.close()
    executions = after["execution_count"] - before["execution_count"]
    assert inferences >= 33
    assert executions < inferences, "requests of different lengths should share executions (allow_ragged_batch)"


@pytest.mark.parametrize(("query", "passages", "message"), [
    ("", ["a passage"], "input 'query' is empty"),
    ("   ", ["a passage"], "input 'query' is empty"),
    ("x" * 2001, ["a passage"], "input 'query' has 2001 characters; the limit is 2000"),
    (UTAH, [], "input 'passages' is empty: send 1 to 100 passages"),
    (UTAH, ["a passage"] * 101, "input 'passages' has 101 passages; the limit is 100 per query"),
    (UTAH, ["a passage", "x" * 8001], "input 'passages' element 1 has 8001 characters; the limit is 8000"),
    (UTAH, ["a passage", ""], "input 'passages' element 1 is empty or whitespace"),
    (b"caf\xc3\x28 in Utah", ["a passage"], "input 'query' row 0 is not valid UTF-8"),
    (UTAH, ["a passage", b"\xff\xfe"], "input 'passages' row 1 is not valid UTF-8"),
])
def test_bad_requests_get_a_precise_invalid_arg(client, query, passages, message):
    with pytest.raises(InferenceServerException, match=message) as err:
        rerank(client, query, passages)
    assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert int(np.argmax(rerank(client, UTAH, UTAH_PASSAGES))) == 1  # and the server keeps serving


def test_reranker_metrics(server, client):
    import urllib.request

    rerank(client, UTAH, UTAH_PASSAGES)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    line = next(x for x in text.splitlines() if x.startswith("tritonrag_reranker_pairs_total{"))
    assert 'kind="bi-encoder"' in line and 'model="reranker"' in line and float(line.split()[-1]) >= 3
    assert "tritonrag_reranker_cache_hits_total" in text
    assert 'tritonrag_reranker_step_seconds_count{' in text and 'step="rerank"' in text
