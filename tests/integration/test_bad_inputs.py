"""Bad requests get precise errors, and the server keeps answering everyone else.

Table-driven: each case is one bad request on one surface (HTTP generate and generate_stream (SSE) of rag and the
generator, KServe v2 infer over HTTP and gRPC for each model, gRPC streams), expected to be refused with HTTP 400 /
gRPC INVALID_ARGUMENT and a message that names what to change (a substring), is non-empty and is not a bare
exception name; after each case a cheap good request (an embedder infer) must still succeed.

Triton 2.51's HTTP frontend answers HTTP 500 to request JSON it cannot parse itself (TRITON_PARSE_FAILURES): no
model sees those requests, so our code cannot make them 400s. Those cases only check that the body says what is
wrong; the ingress (the public surface) answers the same requests 400/422 (INGRESS_EQUIVALENTS).
"""

import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .helpers import assert_clear, bytes_input, grpc_stream, post_json, post_raw, sse_error

Q = "Who is Passepartout?"
DEEP = "[" * 5000 + "]" * 5000  # far past Python's recursion limit when parsed naively
LONG_INT = "1" * 5000  # past int's 4300-digit conversion limit
DIM = 384


@pytest.fixture(scope="module")
def serving(server):
    """A cheap good request (one embedder infer over gRPC): call it after a bad one to see the server still serves."""
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def check():
        result = client.infer("embedder", [bytes_input("text", ["still serving?"], [1, 1])])
        assert result.as_numpy("embedding").shape == (1, DIM)

    check()
    yield check
    client.close()


def case(what, *values):
    return pytest.param(*values, id=what)


# --- rag over HTTP generate ---------------------------------------------------------------------------------------

def rag_body(parameters=None, **inputs):
    return {"text_input": inputs.pop("text_input", Q), **inputs, "parameters": {"max_tokens": 4, **(parameters or {})}}


RAG_HTTP = [
    case("empty text", {"text_input": ""}, "input 'text_input' is empty"),
    case("blank text", {"text_input": "   "}, "input 'text_input' is empty"),
    case("unknown template", rag_body({"template": "nope"}), "unknown template 'nope'"),
    case("top_k 0", rag_body({"top_k": 0}), "top_k must be between 1 and 100, got 0"),
    case("top_k absurd", rag_body({"top_k": 1000000}), "top_k must be between 1 and 100, got 1000000"),
    case("max_tokens absurd", rag_body({"max_tokens": 1000000}), "max_tokens must be between 1 and 1024"),
    case("max_tokens a word", rag_body({"max_tokens": "many"}), "max_tokens must be an integer"),
    case("temperature negative", rag_body({"temperature": -1}), "temperature must be between 0 and 2"),
    case("temperature NaN text", rag_body({"temperature": "NaN"}), "temperature must be finite"),
    case("top_p 0", rag_body({"top_p": 0}), "top_p must be in (0, 1]"),
    case("unknown parameter", rag_body({"colour": "blue"}), "unknown parameter(s) colour"),
    case("text too long", {"text_input": "x" * 20000}, "characters; the limit is"),
    case("seed 2**70", rag_body({"seed": 2**70}), "seed must be an integer between 0 and 9223372036854775807"),
    case("seed negative", rag_body({"seed": -1}), "seed must be an integer between 0 and"),
    case("seed a word", rag_body({"seed": "abc"}), "seed must be an integer"),
    case("filter not JSON", rag_body({"filter": "{source"}), "filter is not valid JSON"),
    case("filter not scalar", rag_body({"filter": '{"source": {"$ne": 1}}'}), "strings, numbers or booleans"),
    case("filter nested deeply", rag_body({"filter": DEEP}), "filter nests arrays and objects more than 2 levels"),
    case("filter a list", rag_body({"filter": '["source"]'}), "filter must be a JSON object"),
    case("filter bad field name", rag_body({"filter": '{"a b": 1}'}), "is not a valid name"),
    case("filter lone surrogate", rag_body({"filter": '{"source": "\\ud800"}'}), "lone surrogate"),
    case("filter long number", rag_body({"filter": '{"year": ' + LONG_INT + "}"}), "digits"),
    case("filter matches nothing", rag_body({"filter": '{"source": "no-such-book.txt"}'}),
         'the filter {"source": ["no-such-book.txt"]} matches no document'),
    case("history not JSON", rag_body(history="{not json"), "input 'history' is not valid JSON"),
    case("history wrong role", rag_body(history='[{"role": "system", "content": "x"}]'),
         "history[0].role must be user or assistant"),
    case("history unknown key", rag_body(history='[{"role": "user", "content": "x", "name": "bob"}]'),
         "has unknown key(s) name"),
    case("history nested deeply", rag_body(history=DEEP), "input 'history' nests arrays and objects"),
    case("history not a list", rag_body(history='"hello"'), "must be a JSON list"),
    case("json_schema not JSON", rag_body({"json_schema": "{x"}), "json_schema is not valid JSON"),
    case("json_schema a list", rag_body({"json_schema": "[1]"}), "json_schema must be a JSON object"),
    case("json_object a word", rag_body({"json_object": "yes"}), "json_object must be true or false"),
    case("min_score absurd", rag_body({"min_score": 5}), "min_score must be between -1 and 1"),
    case("mode unknown", rag_body({"mode": "fuzzy"}), "mode must be one of dense, sparse, hybrid"),
    case("fusion unknown", rag_body({"fusion": "max"}), "fusion must be one of"),
    case("flow unknown", rag_body({"flow": "nope"}), "unknown flow 'nope'"),
    case("rerank a word", rag_body({"rerank": "yes"}), "rerank must be true or false"),
    case("candidates 0", rag_body({"candidates": 0}), "candidates must be between 1 and"),
    case("rerank_candidates under top_k", rag_body({"rerank": True, "top_k": 4, "rerank_candidates": 2}),
         "rerank_candidates (2) must be at least top_k (4)"),
    case("system_prompt too long", rag_body({"system_prompt": "x" * 5000}), "system_prompt must hold 1 to"),
]


@pytest.mark.parametrize(("body", "words"), RAG_HTTP)
def test_rag_generate_rejects_bad_requests_clearly(server, serving, body, words):
    status, reply = post_json(f"http://{server.http_url}/v2/models/rag/generate", body)
    assert status == 400, reply
    assert_clear(reply["error"], words)
    serving()


# --- rag over generate_stream (SSE) -------------------------------------------------------------------------------

def stream_body(parameters=None, **inputs):
    body = rag_body(parameters, **inputs)
    body["parameters"]["stream"] = True
    return body


RAG_SSE = [
    case("empty text", stream_body(text_input=" "), "input 'text_input' is empty"),
    case("top_k 0", stream_body({"top_k": 0}), "top_k must be between 1 and 100"),
    case("seed 2**70", stream_body({"seed": 2**70}), "seed must be an integer between 0 and"),
    case("filter nested deeply", stream_body({"filter": DEEP}), "filter nests arrays and objects"),
    case("filter matches nothing", stream_body({"filter": '{"source": "no-such-book.txt"}'}), "matches no document"),
    case("history wrong role", stream_body(history='[{"role": "robot", "content": "x"}]'), "history[0].role"),
    case("unknown template", stream_body({"template": "nope"}), "unknown template 'nope'"),
    case("temperature absurd", stream_body({"temperature": 9}), "temperature must be between 0 and 2"),
    case("json_schema not JSON", stream_body({"json_schema": "{x"}), "json_schema is not valid JSON"),
]


@pytest.mark.parametrize(("body", "words"), RAG_SSE)
def test_rag_generate_stream_rejects_bad_requests_clearly(server, serving, body, words):
    status, message = sse_error(f"http://{server.http_url}/v2/models/rag/generate_stream", body)
    # Triton answers 400 when the error is the stream's first response; never a 500 or a stream without an error
    assert status == 400 or (status == 200 and message), (status, message)
    assert_clear(message, words)
    serving()


# --- the generator over HTTP generate -----------------------------------------------------------------------------

def gen_body(sampling=None, text="Hi", raw_sampling=None, **parameters):
    sampling = raw_sampling or json.dumps({"max_tokens": 2, **(sampling or {})})
    body = {"text_input": text, "sampling_parameters": sampling}
    if parameters:
        body["parameters"] = parameters
    return body


GENERATOR_HTTP = [
    case("sampling not JSON", gen_body(raw_sampling="{not json"), "not valid JSON"),
    case("sampling a list", gen_body(raw_sampling="[1]"), "must be a JSON object"),
    case("sampling nested deeply", gen_body(raw_sampling=DEEP), "nests arrays and objects"),
    case("sampling long number", gen_body(raw_sampling='{"max_tokens": ' + LONG_INT + "}"), "digits"),
    case("top_p 0", gen_body({"top_p": 0}), "top_p must be in (0, 1]"),
    case("seed 2**70", gen_body({"seed": 2**70}), "seed must be an integer between 0 and 9223372036854775807"),
    case("seed negative", gen_body({"seed": -5}), "seed must be an integer between 0 and"),
    case("top_k absurd", gen_body({"top_k": 2**40}), "at most 2147483647"),
    case("unknown sampling parameter", gen_body({"colour": 1}), "unknown sampling parameter(s) colour"),
    case("max_tokens 0", gen_body({"max_tokens": 0}), "max_tokens must be between 1"),
    case("temperature absurd", gen_body({"temperature": 3}), "temperature must be between 0 and 2"),
    case("repetition_penalty absurd", gen_body({"repetition_penalty": 9}), "repetition_penalty must be between"),
    case("stop a number", gen_body({"stop": 5}), "stop must be a string or a list of strings"),
    case("stop lone surrogate", gen_body({"stop": ["\ud800"]}), "lone surrogate"),
    case("json_object a word", gen_body({"json_object": "yes"}), "json_object must be true or false"),
    case("json_schema not JSON", gen_body({"json_schema": "{bad"}), "json_schema is not valid JSON"),
    case("blank prompt", gen_body(text="  "), "is empty: send a prompt"),
]


@pytest.mark.parametrize(("body", "words"), GENERATOR_HTTP)
def test_generator_generate_rejects_bad_requests_clearly(server, serving, body, words):
    status, reply = post_json(f"http://{server.http_url}/v2/models/generator/generate", body)
    assert status == 400, reply
    assert_clear(reply["error"], words)
    serving()


# --- KServe v2 infer over HTTP (JSON tensors) for the non-decoupled models -------------------------------------------

def t(name, data, shape, datatype="BYTES"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def one(name, value, batched=True):
    return t(name, [value], [1, 1] if batched else [1])


VECTOR = [0.05] * DIM
EMB = t("embedding", VECTOR, [1, DIM], "FP32")

INFER_HTTP = [
    # embedder
    case("embedder: empty text", "embedder", {"inputs": [one("text", "")]}, "row 0 is empty"),
    case("embedder: blank text", "embedder", {"inputs": [one("text", " \n ")]}, "row 0 is empty or whitespace"),
    case("embedder: text too long", "embedder", {"inputs": [one("text", "x" * 8001)]}, "the limit is 8000"),
    case("embedder: wrong dtype", "embedder", {"inputs": [t("text", [1.0], [1, 1], "FP32")]},
         ("datatype", "data type", "TYPE_STRING", "BYTES")),
    case("embedder: wrong shape", "embedder", {"inputs": [t("text", ["a", "b"], [1, 2])]}, "shape"),
    case("embedder: unknown input", "embedder", {"inputs": [one("txt", "hello")]}, "txt"),
    case("embedder: missing text", "embedder", {"inputs": [one("instruction", "query: ")]}, "text"),
    # retriever
    case("retriever: wrong dimension", "retriever", {"inputs": [t("embedding", [1.0] * 7, [1, 7], "FP32")]},
         f"must be [batch, {DIM}]"),
    case("retriever: NaN", "retriever", {"inputs": [t("embedding", [float("nan"), *VECTOR[1:]], [1, DIM], "FP32")]},
         "contains NaN or infinite values"),  # Triton's JSON parser reads NaN; the retriever refuses it
    case("retriever: top_k 0", "retriever", {"inputs": [EMB, t("top_k", [0], [1, 1], "INT32")]},
         "top_k must be between 1 and 100"),
    case("retriever: filter not JSON", "retriever", {"inputs": [EMB, one("filter", "{x")]},
         "filter is not valid JSON"),
    case("retriever: filter nested deeply", "retriever", {"inputs": [EMB, one("filter", DEEP)]},
         "filter nests arrays and objects"),
    case("retriever: unknown parameter", "retriever", {"inputs": [EMB], "parameters": {"colour": "blue"}},
         "unknown parameter(s) colour"),
    case("retriever: unknown mode", "retriever", {"inputs": [EMB], "parameters": {"mode": "fuzzy"}},
         "mode must be one of dense, sparse, hybrid"),
    case("retriever: sparse without query", "retriever", {"inputs": [EMB], "parameters": {"mode": "sparse"}},
         "needs input 'query'"),
    case("retriever: nprobe 0", "retriever", {"inputs": [EMB], "parameters": {"nprobe": 0}},
         "nprobe must be between 1"),
    case("retriever: nothing to search", "retriever", {"inputs": [t("top_k", [3], [1, 1], "INT32")]},
         "send input 'embedding'"),
    case("retriever: wrong dtype", "retriever", {"inputs": [t("embedding", [1] * DIM, [1, DIM], "INT32")]},
         ("datatype", "data type", "TYPE_FP32", "FP32")),
    # prompt builder (not batched)
    case("prompt_builder: metadata not JSON", "prompt_builder",
         {"inputs": [one("query", Q, False), one("context", "a passage", False), one("metadata", "{x", False)]},
         "'metadata' row 0 is not valid JSON"),
    case("prompt_builder: metadata nested deeply", "prompt_builder",
         {"inputs": [one("query", Q, False), one("context", "a passage", False), one("metadata", DEEP, False)]},
         "'metadata' row 0 nests arrays and objects"),
    case("prompt_builder: metadata rows", "prompt_builder",
         {"inputs": [one("query", Q, False), t("context", ["a", "b"], [2]), one("metadata", "{}", False)]},
         "'metadata' has 1 rows but 'context' has 2"),
    case("prompt_builder: history wrong role", "prompt_builder",
         {"inputs": [one("query", Q, False), one("history", '[{"role": "tool", "content": "x"}]', False)]},
         "history[0].role must be user or assistant"),
    case("prompt_builder: history nested deeply", "prompt_builder",
         {"inputs": [one("query", Q, False), one("history", DEEP, False)]}, "nests arrays and objects"),
    case("prompt_builder: unknown template", "prompt_builder",
         {"inputs": [one("query", Q, False), one("template", "nope", False)]}, "unknown template 'nope'"),
    case("prompt_builder: blank query", "prompt_builder", {"inputs": [one("query", "  ", False)]}, "query is empty"),
    case("prompt_builder: unknown generator", "prompt_builder",
         {"inputs": [one("query", Q, False), one("generator", "gpt-9", False)]}, "unknown generator 'gpt-9'"),
    case("prompt_builder: system_prompt too long", "prompt_builder",
         {"inputs": [one("query", Q, False), one("system_prompt", "x" * 5000, False)]}, "system_prompt must hold"),
    # reranker (passages: [1, n])
    case("reranker: blank query", "reranker", {"inputs": [one("query", " "), t("passages", ["a"], [1, 1])]},
         "input 'query' is empty"),
    case("reranker: blank passage", "reranker", {"inputs": [one("query", Q), t("passages", ["a", " "], [1, 2])]},
         "element 1 is empty"),
    case("reranker: too many passages", "reranker", {"inputs": [one("query", Q), t("passages", ["a"] * 101, [1, 101])]},
         "the limit is 100"),
    case("reranker: query too long", "reranker", {"inputs": [one("query", "q" * 2001), t("passages", ["a"], [1, 1])]},
         "the limit is 2000"),
    case("reranker: missing passages", "reranker", {"inputs": [one("query", Q)]}, "passages"),
]


@pytest.mark.parametrize(("model", "body", "words"), INFER_HTTP)
def test_v2_infer_over_http_rejects_bad_requests_clearly(server, serving, model, body, words):
    status, reply = post_json(f"http://{server.http_url}/v2/models/{model}/infer", body)
    assert status == 400, reply
    assert_clear(reply["error"], words)
    serving()


# --- KServe v2 infer over gRPC ------------------------------------------------------------------------------------

def floats(name, array):
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array.astype(np.float32))
    return tensor


def vector_with(value):
    array = np.full((1, DIM), 0.05, np.float32)
    array[0, 3] = value
    return array


INFER_GRPC = [
    case("embedder: invalid UTF-8", "embedder", lambda: [bytes_input("text", [b"caf\xc3\x28"], [1, 1])], None,
         "not valid UTF-8"),
    case("embedder: empty", "embedder", lambda: [bytes_input("text", [""], [1, 1])], None, "row 0 is empty"),
    case("embedder: wrong dtype", "embedder", lambda: [floats("text", np.ones((1, 1)))], None,
         ("datatype", "data type", "TYPE_STRING", "BYTES")),
    case("embedder: unknown input", "embedder", lambda: [bytes_input("colour", ["blue"], [1, 1])], None, "colour"),
    case("retriever: NaN", "retriever", lambda: [floats("embedding", vector_with(np.nan))], None,
         "contains NaN or infinite values"),
    case("retriever: infinity", "retriever", lambda: [floats("embedding", vector_with(np.inf))], None,
         "contains NaN or infinite values"),
    case("retriever: filter nested deeply", "retriever",
         lambda: [floats("embedding", vector_with(0.05)), bytes_input("filter", [DEEP], [1, 1])], None,
         "filter nests arrays and objects"),
    case("retriever: filter invalid UTF-8", "retriever",
         lambda: [floats("embedding", vector_with(0.05)), bytes_input("filter", [b'{"source": "\xff"}'], [1, 1])],
         None, "not valid UTF-8"),
    case("retriever: candidates absurd", "retriever", lambda: [floats("embedding", vector_with(0.05))],
         {"candidates": 10**6}, "candidates must be between 1 and"),
    case("prompt_builder: invalid UTF-8 metadata", "prompt_builder",
         lambda: [bytes_input("query", [Q]), bytes_input("context", ["a"]), bytes_input("metadata", [b"\xfe{}"])],
         None, "not valid UTF-8"),
    case("reranker: invalid UTF-8 passage", "reranker",
         lambda: [bytes_input("query", [Q], [1, 1]), bytes_input("passages", [b"ok", b"\xc0\xaf"], [1, 2])], None,
         "not valid UTF-8"),
]


@pytest.mark.parametrize(("model", "inputs", "parameters", "words"), INFER_GRPC)
def test_v2_infer_over_grpc_rejects_bad_requests_clearly(server, serving, model, inputs, parameters, words):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, inputs(), parameters=parameters)
    finally:
        client.close()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert_clear(caught.value.message(), words)
    serving()


def test_invalid_utf8_over_http_binary_tensors(server, serving):
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match="not valid UTF-8") as caught:
        client.infer("embedder", [bytes_input("text", [b"\xff\xfe"], [1, 1], httpclient)])
    assert_clear(caught.value.message(), "row 0 is not valid UTF-8")
    serving()


# --- gRPC streams (decoupled models) ------------------------------------------------------------------------------
# A decoupled model's error reaches a gRPC stream as a message without a status code (ModelStreamInferResponse has
# only error_message), so these check the message.

def gen_inputs(sampling, text="Hi"):
    return [bytes_input("text_input", [text]), bytes_input("sampling_parameters", [sampling])]


GRPC_STREAM = [
    case("rag: invalid UTF-8", "rag", lambda: [bytes_input("text_input", [b"caf\xc3\x28 in Utah"])], None,
         "not valid UTF-8"),
    case("rag: blank text", "rag", lambda: [bytes_input("text_input", [" "])], None, "input 'text_input' is empty"),
    case("rag: seed past 64 bits", "rag", lambda: [bytes_input("text_input", [Q])],
         {"seed": str(2**70), "max_tokens": 4}, "seed must be an integer between 0 and"),
    case("rag: seed a double", "rag", lambda: [bytes_input("text_input", [Q])], {"seed": 1e30, "max_tokens": 4},
         "seed must be an integer between 0 and"),
    case("rag: filter nested deeply", "rag", lambda: [bytes_input("text_input", [Q])], {"filter": DEEP},
         "filter nests arrays and objects"),
    case("rag: history invalid", "rag",
         lambda: [bytes_input("text_input", [Q]), bytes_input("history", ['[{"role": "user"}]'])], None,
         "history[0] lacks content"),
    case("rag: top_k 0", "rag", lambda: [bytes_input("text_input", [Q])], {"top_k": 0}, "top_k must be between 1"),
    case("generator: sampling not JSON", "generator", lambda: gen_inputs("{x"), None, "not valid JSON"),
    case("generator: seed 2**70", "generator", lambda: gen_inputs(json.dumps({"seed": 2**70})), None,
         "seed must be an integer between 0 and"),
    case("generator: invalid UTF-8 prompt", "generator", lambda: gen_inputs("{}", b"\xff"), None, "not valid UTF-8"),
    case("generator: unknown parameter", "generator", lambda: gen_inputs('{"temp": 1}'), None,
         "unknown sampling parameter(s) temp"),
]


@pytest.mark.parametrize(("model", "inputs", "parameters", "words"), GRPC_STREAM)
def test_grpc_streams_reject_bad_requests_clearly(server, serving, model, inputs, parameters, words):
    responses, error = grpc_stream(server.grpc_url, model, inputs(), parameters=parameters)
    assert error is not None, f"{len(responses)} responses and no error"
    assert_clear(error.message(), words)
    serving()


# --- Triton's own parsing: HTTP 500 (Triton 2.51's C++ frontend), and the ingress's 400/422 for the same -----------

TRITON_PARSE_FAILURES = [
    # Triton's behaviour, not ours: its HTTP frontend answers 500 to JSON it cannot map onto the model's tensors
    case("text_input a number", "rag/generate", b'{"text_input": 12345}', ("text_input", "string", "parse")),
    case("stream a word", "rag/generate", b'{"text_input": "x", "stream": "yes"}', ("stream", "bool", "parse")),
    case("lone surrogate", "rag/generate", b'{"text_input": "\\ud800"}', ("surrogate", "utf", "parse", "invalid")),
    case("malformed body", "rag/generate", b'{"text_input": ', ("json", "parse", "invalid")),
    case("text_input NaN", "rag/generate", b'{"text_input": NaN}', ("text_input", "string", "parse")),
    case("stream parameter a word", "rag/generate", b'{"text_input": "x", "parameters": {"stream": "yes"}}',
         ("boolean", "stream")),
    case("generator stream parameter a word", "generator/generate",
         b'{"text_input": "x", "parameters": {"stream": "yes"}}', ("boolean", "stream")),
]


@pytest.mark.parametrize(("path", "data", "words"), TRITON_PARSE_FAILURES)
def test_triton_http_parse_failures_still_say_what_is_wrong(server, serving, path, data, words):
    status, message = post_raw(f"http://{server.http_url}/v2/models/{path}", data)
    assert status in (400, 500), (status, message)  # Triton 2.51: 500; the ingress answers these 400/422
    assert isinstance(message, str)
    assert_clear(message, words)
    serving()


CHAT = {"model": "rag", "messages": [{"role": "user", "content": Q}], "max_tokens": 4}


def chat(**fields):
    return json.dumps({**CHAT, **fields}).encode()


INGRESS_EQUIVALENTS = [
    # the TRITON_PARSE_FAILURES above, against the ingress (the public surface)
    case("content a number", chat(messages=[{"role": "user", "content": 12345}]), 422, "content"),
    case("stream a word", chat(stream="yes"), 422, "stream"),
    case("lone surrogate", b'{"model": "rag", "messages": [{"role": "user", "content": "\\ud800"}]}', 400,
         "surrogate"),
    case("malformed body", b'{"model": "rag", "messages": ', 400, "not valid JSON"),
    case("NaN temperature", b'{"model": "rag", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}',
         422, "temperature"),
    # what a model refuses, through the ingress, streamed (SSE) and not
    case("SSE: top_k 0", chat(stream=True, top_k=0), 400, "top_k must be between 1"),
    case("SSE: filter matches nothing", chat(stream=True, filter={"source": "no-such-book.txt"}), 400,
         "matches no document"),
    case("SSE: filter nested", chat(stream=True, filter={"source": [[["x"]]]}), 400, "filter nests"),
    case("SSE: seed negative", chat(stream=True, seed=-1), 422, "seed"),
    # rag builds its prompts in process ([rag] build_prompt_in_process), so the refusal keeps its INVALID_ARG (over
    # BLS, Triton 2.51 turned the prompt builder's into INTERNAL: a 500)
    case("SSE: unknown task", chat(stream=True, task="nope"), 400, "template"),
    case("SSE: min_score absurd", chat(stream=True, min_score=7.0), 400, "min_score must be between -1 and 1"),
    case("SSE: unknown role", chat(stream=True, messages=[{"role": "tool", "content": "x"}]), 422, "role"),
    case("body nested deeply", b'{"model": "rag", "x": ' + DEEP.encode() + b"}", 400, "nests"),
    case("integer of 5000 digits", b'{"model": "rag", "seed": ' + LONG_INT.encode() + b"}", 400, "digits"),
]


@pytest.mark.parametrize(("body", "status", "words"), INGRESS_EQUIVALENTS)
def test_ingress_answers_4xx_where_triton_cannot(ingress, serving, body, status, words):
    response = httpx.post(f"{ingress.url}/v1/chat/completions", content=body, timeout=300,
                          headers={"Authorization": f"Bearer {ingress.api_key}", "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert_clear(response.json()["error"]["message"], words)
    serving()


def test_the_suite_covers_at_least_60_bad_inputs():
    from .test_ingress import BAD_REQUESTS

    ours = (RAG_HTTP, RAG_SSE, GENERATOR_HTTP, INFER_HTTP, INFER_GRPC, GRPC_STREAM, TRITON_PARSE_FAILURES,
            INGRESS_EQUIVALENTS)
    assert sum(map(len, ours)) + len(BAD_REQUESTS) >= 60


# --- batches and the end state --------------------------------------------------------------------------------------

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
            assert isinstance(outcome, np.ndarray) and outcome.shape == (1, DIM)
        else:
            assert isinstance(outcome, InferenceServerException) and "empty" in str(outcome)


def test_server_still_serves_after_bad_inputs(server):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_server_live() and client.is_server_ready()
    status, body = post_json(f"http://{server.http_url}/v2/models/rag/generate",
                             {"text_input": Q, "parameters": {"max_tokens": 8}})
    assert status == 200 and body["text_output"]
