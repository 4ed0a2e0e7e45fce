"""The ingress's pure parts: OpenAI requests to rag calls, responses and chunks, API keys, per-key limits."""

import json

import pytest

from tritonrag.ingress.errors import ApiError
from tritonrag.ingress.keys import KeyFileError, KeyStore, hashed_line, new_key
from tritonrag.ingress.limits import Limits, per_worker
from tritonrag.ingress.translate import Completion, RagReply, finish_reason, parse_chat, sse, to_rag_call


def chat(**fields):
    body = {"model": "rag", "messages": [{"role": "user", "content": "Who is Fogg?"}], **fields}
    return json.dumps(body).encode()


def call(body, max_messages=64, max_history_chars=32000):
    return to_rag_call(parse_chat(body), max_messages, max_history_chars)


def error_of(body, **limits):
    with pytest.raises(ApiError) as caught:
        call(body, **limits)
    return caught.value


def test_a_plain_question_becomes_the_rag_flow_with_only_what_was_set():
    rag = call(chat(temperature=0.2, max_tokens=32))
    assert rag.question == "Who is Fogg?" and rag.history == [] and not rag.stream
    assert rag.parameters == {"flow": "rag", "temperature": 0.2, "max_tokens": 32}


def test_system_messages_history_and_rag_options_map_onto_parameters():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Who is Fogg?"},
                {"role": "assistant", "content": [{"type": "text", "text": "A gentleman."}]},
                {"role": "user", "content": "Where does he live?"}]
    rag = call(json.dumps({"model": "rag-chat", "messages": messages, "stream": True, "top_k": 3,
                           "filter": {"source": "book.txt"}, "task": "summarize", "retrieval_mode": "sparse",
                           "rerank": True, "max_completion_tokens": 50}).encode())
    assert rag.question == "Where does he live?" and rag.stream
    assert rag.history == [{"role": "user", "content": "Who is Fogg?"},
                           {"role": "assistant", "content": "A gentleman."}]
    assert rag.parameters == {"flow": "rag-chat", "system_prompt": "Be brief.", "top_k": 3,
                              "filter": '{"source": "book.txt"}', "template": "summarize", "mode": "sparse",
                              "rerank": True, "max_tokens": 50}


def test_response_format_asks_for_structured_output():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    rag = call(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert json.loads(rag.parameters["json_schema"]) == schema
    assert call(chat(response_format={"type": "json_object"})).parameters["json_object"] is True
    assert "json_object" not in call(chat(response_format={"type": "text"})).parameters


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (chat(model="gpt-4"), 404, "does not exist"),
    (chat(temperature="hot"), 422, "temperature"),
    (chat(temperature=7.0), 422, "temperature"),
    (chat(stream="yes"), 422, "stream"),
    (chat(max_tokens=0), 422, "max_tokens"),
    (chat(n=2), 422, "n must be 1"),
    (chat(stop=["\n"]), 422, "stop is not supported"),
    (chat(tools=[{"type": "function"}]), 422, "tools"),
    (chat(logprobs=True), 422, "logprobs"),
    (chat(frequency_penalty=0.5), 422, "frequency_penalty"),
    (chat(temprature=0.1), 422, "unknown field 'temprature'"),
    (chat(messages=[]), 422, "messages"),
    (chat(messages=[{"role": "tool", "content": "x"}]), 422, "messages.0.role"),
    (chat(messages=[{"role": "user", "content": 5}]), 422, "messages.0.content"),
    (chat(messages=[{"role": "assistant", "content": "Hi"}]), 400, "must be the user's"),
    (chat(messages=[{"role": "user", "content": "  "}]), 400, "empty"),
    (chat(messages=[{"role": "user", "content": "\ud800"}]), 400, "lone surrogate"),
    (chat(response_format={"type": "json_schema"}), 422, "json_schema is required"),
    (chat(filter="source=x"), 422, "filter"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 422, "model is required"),
])
def test_bad_requests_get_a_status_and_a_message_saying_what_to_change(body, status, says):
    error = error_of(body)
    assert error.status == status and says in error.message, error.message
    assert error.body()["error"]["type"] and error.body()["error"]["message"]


def test_conversations_are_bounded():
    long = [{"role": "user", "content": "a" * 100}, {"role": "assistant", "content": "b" * 100}] * 3
    body = chat(messages=[*long, {"role": "user", "content": "and?"}])
    assert error_of(body, max_messages=4).code == "context_length_exceeded"
    assert "600 characters" in error_of(body, max_history_chars=500).message
    assert call(body, max_messages=7, max_history_chars=600).question == "and?"


def test_a_completion_and_its_chunks_have_openais_shape():
    completion = Completion("rag", clock=lambda: 1700000000)
    reply = RagReply("Fogg [1].", [{"chunk_id": 1}], [{"n": 1}], "abstained", {"prompt_tokens": 9,
                                                                             "completion_tokens": 3})
    body = completion.response(reply)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["created"] == 1700000000
    assert body["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Fogg [1].", "refusal": None},
                                  "logprobs": None, "finish_reason": "stop"}
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert body["rag"]["sources"] == [{"chunk_id": 1}] and body["rag"]["finish_reason"] == "abstained"
    chunk = completion.chunk({"content": "x"}, usage=True)
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] is None and chunk["id"] == body["id"]
    assert completion.usage_chunk(reply)["choices"] == []
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert json.loads(sse({"a": "é"})[6:]) == {"a": "é"}
    assert finish_reason("length") == "length" and finish_reason(None) == "stop"


def test_keys_are_hashed_named_and_compared_against_every_entry(tmp_path):
    alice, bob = new_key(), new_key()
    keys = tmp_path / "keys"
    keys.write_text(f"# operators' keys\n{hashed_line('alice', alice)}\n\nbob: {bob}\n")
    store = KeyStore.load(keys, "ci:" + "c" * 20)
    assert store.identify(alice) == "alice" and store.identify(bob) == "bob" and store.identify("c" * 20) == "ci"
    assert store.identify(alice + "x") is None and store.identify("") is None and store.identify(None) is None
    assert alice not in repr(store) and bob not in repr(store)
    assert KeyStore.load(None, None).open


@pytest.mark.parametrize(("content", "says"), [("short", "at least 16"), ("x: sha256:abc", "64 hex digits")])
def test_a_bad_keys_file_names_its_line(tmp_path, content, says):
    keys = tmp_path / "keys"
    keys.write_text(content + "\n")
    with pytest.raises(KeyFileError, match=f"{keys}:1.*{says}"):
        KeyStore.load(keys, None)
    with pytest.raises(KeyFileError, match="cannot read"):
        KeyStore.load(tmp_path / "missing", None)


def test_limits_cap_requests_in_flight_and_per_minute():
    now = [0.0]
    limits = Limits(concurrency=2, rpm=60, burst=3, clock=lambda: now[0])
    limits.acquire("a")
    limits.acquire("a")
    with pytest.raises(ApiError, match="at most 2 at a time") as busy:
        limits.acquire("a")
    assert busy.value.status == 429 and busy.value.headers["Retry-After"] == "1"
    limits.acquire("b")  # another key is not affected
    limits.release("a")
    limits.acquire("a")  # the third of the burst
    limits.release("a")
    with pytest.raises(ApiError, match="60 requests per minute") as fast:
        limits.acquire("a")
    assert fast.value.headers["Retry-After"] == "1"
    now[0] = 1.0  # one token back after a second at 60 per minute
    limits.acquire("a")
    assert limits.in_flight("a") == 2


def test_unlimited_and_per_worker_shares():
    limits = Limits(concurrency=0, rpm=0, burst=0)
    for _ in range(1000):
        limits.acquire("a")
    assert per_worker(600, 4) == 150 and per_worker(5, 4) == 2 and per_worker(0, 4) == 0


def test_triton_bound_beyond_localhost_restricts_its_admin_apis(tmp_path, monkeypatch):
    from tritonrag.deploy.server import ADMIN_KEY_ENV, RESTRICTED_APIS, restricted_args

    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    assert restricted_args("127.0.0.1", tmp_path) == []
    http, grpc = restricted_args("0.0.0.0", tmp_path)
    key = (tmp_path / "triton-admin-key").read_text().strip()
    assert (tmp_path / "triton-admin-key").stat().st_mode & 0o777 == 0o600 and len(key) >= 32
    assert http == f"--http-restricted-api={','.join(RESTRICTED_APIS)}:triton-admin-key={key}"
    assert grpc.startswith("--grpc-restricted-protocol=model-repository,") and "inference" not in grpc
    assert restricted_args("0.0.0.0", tmp_path) == [http, grpc]  # the same key on the next start
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-the-environment")
    assert restricted_args("10.0.0.5", tmp_path)[0].endswith("=from-the-environment")


@pytest.mark.parametrize(("body", "status", "says"), [
    (b'{"model": "rag", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "nests arrays and objects more than 64"),
    (b'{"model": "rag", "seed": ' + b"1" * 5000 + b"}", 400, "thousands of digits"),
    (chat(seed=-1), 422, "seed"),
    (chat(seed=2**63), 422, "seed"),
])
def test_hostile_bodies_get_a_4xx_not_a_crash(body, status, says):
    error = error_of(body)
    assert error.status == status and says in error.message, error.message


def test_a_seed_up_to_63_bits_reaches_rag():
    assert call(chat(seed=2**63 - 1)).parameters["seed"] == 2**63 - 1
