"""Bad requests get precise errors, and the server keeps answering everyone else."""

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .helpers import bytes_input, grpc_stream, post_json


def rag_http(server, body):
    return post_json(f"http://{server.http_url}/v2/models/rag/generate", body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text_input": ""}, "input 'text_input' is empty"),
        ({"text_input": "   "}, "input 'text_input' is empty"),
        ({"text_input": "Utah?", "parameters": {"template": "nope"}}, "unknown template 'nope'"),
        ({"text_input": "Utah?", "parameters": {"top_k": 0}}, "top_k must be between 1 and 100, got 0"),
        ({"text_input": "Utah?", "parameters": {"top_k": 1000000}}, "top_k must be between 1 and 100, got 1000000"),
        ({"text_input": "Utah?", "parameters": {"max_tokens": 1000000}}, "max_tokens must be between 1 and 1024"),
        ({"text_input": "Utah?", "parameters": {"temperature": -1}}, "temperature must be between 0 and 2"),
        ({"text_input": "Utah?", "parameters": {"colour": "blue"}}, "unknown parameter(s) colour"),
        ({"text_input": "x" * 20000}, "characters; the limit is"),
        ({"text_input": "Utah?", "parameters": {"filter": "{source"}}, "filter is not valid JSON"),
        ({"text_input": "Utah?", "parameters": {"filter": '{"source": {"$ne": 1}}'}}, "strings, numbers or booleans"),
        ({"text_input": "Utah?", "parameters": {"filter": '{"source": "no-such-book.txt"}'}},
         'the filter {"source": ["no-such-book.txt"]} matches no document'),
    ],
)
def test_rag_rejects_bad_requests_clearly(server, body, message):
    status, reply = rag_http(server, body)
    assert status == 400, reply
    assert message in reply["error"]


def test_wrong_dtype_is_rejected_by_triton(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    wrong = grpcclient.InferInput("text", [1, 1], "FP32")
    wrong.set_data_from_numpy(np.array([[1.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"(?i)datatype|data type|TYPE_STRING|BYTES"):
        client.infer("embedder", [wrong])


def test_invalid_utf8_is_rejected(server):
    _, error = grpc_stream(server.grpc_url, "rag", [bytes_input("text_input", [b"caf\xc3\x28 in Utah"])])
    assert error is not None and "not valid UTF-8" in str(error)
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="not valid UTF-8"):
        client.infer("embedder", [bytes_input("text", [b"\xff\xfe"], [1, 1], httpclient)])


def test_retriever_rejects_wrong_dimension_and_absurd_top_k(server):
    client = httpclient.InferenceServerClient(server.http_url)
    emb = httpclient.InferInput("embedding", [1, 7], "FP32")
    emb.set_data_from_numpy(np.ones((1, 7), np.float32))
    with pytest.raises(InferenceServerException, match=r"must be \[batch, 384\]"):
        client.infer("retriever", [emb])
    good = httpclient.InferInput("embedding", [1, 384], "FP32")
    good.set_data_from_numpy(np.ones((1, 384), np.float32) / np.sqrt(384))
    top_k = httpclient.InferInput("top_k", [1, 1], "INT32")
    top_k.set_data_from_numpy(np.array([[10**6]], np.int32))
    with pytest.raises(InferenceServerException, match="top_k must be between 1 and 100"):
        client.infer("retriever", [good, top_k])


def test_generator_rejects_bad_sampling_parameters(server):
    url = f"http://{server.http_url}/v2/models/generator/generate"
    status, reply = post_json(url, {"text_input": "Hi", "sampling_parameters": "{not json"})
    assert status == 400 and "not valid JSON" in reply["error"]
    status, reply = post_json(url, {"text_input": "Hi", "sampling_parameters": json.dumps({"top_p": 0})})
    assert status == 400 and "top_p must be in (0, 1]" in reply["error"]


def test_one_bad_request_in_a_batch_does_not_fail_the_others(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    texts = ["good one", "", "good two", "  ", "good three"] * 3
    pending = [client.async_infer("embedder", [bytes_input("text", [t], [1, 1], httpclient)]) for t in texts]

    def result(call):
        try:
            return call.get_result().as_numpy("embedding")
        except InferenceServerException as exc:
            return exc

    results = [result(call) for call in pending]
    for text, outcome in zip(texts, results):
        if text.strip():
            assert isinstance(outcome, np.ndarray) and outcome.shape == (1, 384)
        else:
            assert isinstance(outcome, InferenceServerException) and "empty" in str(outcome)


def test_server_still_serves_after_bad_inputs(server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_live() and client.is_server_ready()
    status, body = rag_http(server, {"text_input": "Who is Passepartout?", "parameters": {"max_tokens": 8}})
    assert status == 200 and body["text_output"]
