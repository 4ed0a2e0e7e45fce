"""The ingress against the session's real Triton, through clients nobody here wrote: the official `openai` SDK,
LangChain's ChatOpenAI, and plain HTTP for the bad requests a client SDK would never send."""

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from tritonrag.deploy.ingress_process import IngressProcess
from tritonrag.deploy.server import Ports
from tritonrag.settings import CONFIG_ENV

from .conftest import CONFIG
from .helpers import bytes_input

QUESTION = "Describe the body of water in Utah"
SMALL = {"max_tokens": 16}


@pytest.fixture(scope="module")
def client(ingress):
    return openai.OpenAI(base_url=f"{ingress.url}/v1", api_key=ingress.api_key, max_retries=0, timeout=300)


def raw(ingress, path, body=None, key="default", method=None, headers=None, timeout=300):
    """A plain HTTP request to the ingress: (status, parsed JSON or text, headers)."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {ingress.api_key if key == 'default' else key}"
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    response = httpx.request(method or ("POST" if content is not None else "GET"), f"{ingress.url}{path}",
                             content=content, headers=sent, timeout=timeout)
    try:
        return response.status_code, response.json(), response.headers
    except ValueError:
        return response.status_code, response.text, response.headers


def test_models_list_every_flow_and_the_embedder(client):
    ids = [model.id for model in client.models.list()]
    assert ids == ["rag", "rag-chat", "qa-checked", "llm", "embedder"]
    assert client.models.retrieve("rag-chat").owned_by == "tritonrag"


def test_a_chat_completion_answers_with_usage_sources_and_citations(client):
    completion = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}],
                                                **SMALL)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content.strip() and choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 50 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    rag = completion.model_extra["rag"]
    assert len(rag["sources"]) == 4 and all(s["snippet"] for s in rag["sources"])
    assert isinstance(rag["citations"], list) and rag["query"] == QUESTION and rag["timing"]["total_ms"] > 0


def test_a_streamed_completion_has_openais_chunks_and_the_extras_last(client):
    stream = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}],
                                            stream=True, stream_options={"include_usage": True}, **SMALL)
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    first, last, final = chunks[0], chunks[-1], chunks[-2]
    assert first.choices[0].delta.role == "assistant" and len(first.model_extra["rag"]["sources"]) == 4
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert final.choices[0].finish_reason in ("stop", "length") and "citations" in final.model_extra["rag"]
    assert last.choices == [] and last.usage.completion_tokens > 0


def test_streamed_and_not_give_the_same_greedy_answer(client):
    messages = [{"role": "user", "content": "Who is Passepartout?"}]
    whole = client.chat.completions.create(model="rag", messages=messages, temperature=0.0, **SMALL)
    pieces = client.chat.completions.create(model="rag", messages=messages, temperature=0.0, stream=True, **SMALL)
    streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    # the citation filter may hold back a trailing partial marker in either mode; compare what both show
    assert whole.choices[0].message.content.strip()[:20] == streamed.strip()[:20]


def test_a_json_schema_response_format_constrains_the_answer(client):
    schema = {"type": "object", "properties": {"lake": {"type": "string", "maxLength": 40}},
              "required": ["lake"], "additionalProperties": False}
    completion = client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": "Which lake is in Utah?"}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "lake", "schema": schema}})
    answer = json.loads(completion.choices[0].message.content)
    assert set(answer) == {"lake"} and isinstance(answer["lake"], str)


def test_rag_options_travel_as_extra_body_fields(client):
    completion = client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": "Phileas Fogg"}], max_tokens=4,
        extra_body={"top_k": 2, "retrieval_mode": "sparse", "filter": {"source": "around_the_world.txt"}})
    sources = completion.model_extra["rag"]["sources"]
    assert len(sources) == 2 and all("sparse" in s["retrieval"] for s in sources)


def test_a_conversation_is_condensed_into_a_standalone_question(client):
    messages = [{"role": "user", "content": "Who is Phileas Fogg?"},
                {"role": "assistant", "content": "Phileas Fogg is an English gentleman of the Reform Club."},
                {"role": "user", "content": "Where does he live?"}]
    completion = client.chat.completions.create(model="rag-chat", messages=messages, max_tokens=12)
    rag = completion.model_extra["rag"]
    assert rag["query"] != "Where does he live?" and rag["query"].strip()
    assert rag["sources"] and completion.choices[0].message.content.strip()
    assert rag["timing"]["condense_ms"] > 0


def test_the_llm_flow_answers_without_retrieval(client):
    completion = client.chat.completions.create(
        model="llm", messages=[{"role": "system", "content": "Answer in one word."},
                               {"role": "user", "content": "What colour is the sky?"}], max_tokens=8)
    assert completion.choices[0].message.content.strip() and completion.model_extra["rag"]["sources"] == []


def test_embeddings_are_the_served_embedders(client, server):
    texts = ["Phileas Fogg", "the Reform Club"]
    result = client.embeddings.create(model="embedder", input=texts)
    vectors = np.array([item.embedding for item in result.data], np.float32)
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert result.usage.prompt_tokens >= 4
    direct = grpcclient.InferenceServerClient(server.grpc_url).infer(
        "embedder", [bytes_input("text", texts, [2, 1])]).as_numpy("embedding")
    assert np.allclose(vectors, direct, atol=1e-5)
    as_base64 = client.embeddings.create(model="embedder", input="Phileas Fogg", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(as_base64.data[0].embedding), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-6)


def test_openai_errors_map_onto_the_sdks_exceptions(client, ingress):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.chat.completions.create(model="rag", messages=[{"role": "user", "content": "hi"}], temperature=5.0)
    with pytest.raises(openai.BadRequestError, match="matches no document"):
        client.chat.completions.create(model="rag", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"filter": {"source": "no-such-file.txt"}})
    wrong = openai.OpenAI(base_url=f"{ingress.url}/v1", api_key="not-a-valid-key-at-all", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        wrong.models.list()


def test_langchain_chat_openai_talks_to_it(ingress):
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    llm = chat_openai(model="rag", base_url=f"{ingress.url}/v1", api_key=ingress.api_key, max_tokens=12,
                      max_retries=0, temperature=0)
    assert llm.invoke(QUESTION).content.strip()
    assert "".join(chunk.content for chunk in llm.stream("Who is Passepartout?")).strip()


BAD_REQUESTS = [
    # (what, path, body, key, expected status, words the message holds)
    ("malformed JSON", "/v1/chat/completions", b'{"model": "rag", "messages": [', "default", 400, "not valid JSON"),
    ("not an object", "/v1/chat/completions", b'["rag"]', "default", 400, "JSON object"),
    ("invalid UTF-8", "/v1/chat/completions", b'{"model": "rag", "messages": "\xff"}', "default", 400, "JSON"),
    ("lone surrogate", "/v1/chat/completions",
     b'{"model":"rag","messages":[{"role":"user","content":"\\ud800"}]}', "default", 400, "surrogate"),
    ("empty body", "/v1/chat/completions", b"", "default", 400, "not valid JSON"),
    ("no model", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "default", 422,
     "model is required"),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
     "default", 404, "does not exist"),
    ("messages not a list", "/v1/chat/completions", {"model": "rag", "messages": "hi"}, "default", 422, "messages"),
    ("no messages", "/v1/chat/completions", {"model": "rag", "messages": []}, "default", 422, "messages"),
    ("content a number", "/v1/chat/completions", {"model": "rag", "messages": [{"role": "user", "content": 12345}]},
     "default", 422, "content"),
    ("unknown role", "/v1/chat/completions", {"model": "rag", "messages": [{"role": "robot", "content": "x"}]},
     "default", 422, "role"),
    ("stream not a bool", "/v1/chat/completions",
     {"model": "rag", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}, "default", 422, "stream"),
    ("temperature a string", "/v1/chat/completions",
     {"model": "rag", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}, "default", 422,
     "temperature"),
    ("absurd max_tokens", "/v1/chat/completions",
     {"model": "rag", "max_tokens": 10**9, "messages": [{"role": "user", "content": "Phileas Fogg"}]}, "default",
     400, "max_tokens"),
    ("absurd seed", "/v1/chat/completions",
     {"model": "rag", "seed": 2**70, "messages": [{"role": "user", "content": "x"}]}, "default", 422, "seed"),
    ("absurd top_k", "/v1/chat/completions",
     {"model": "rag", "top_k": 10**6, "messages": [{"role": "user", "content": "x"}]}, "default", 400, "top_k"),
    ("unknown field", "/v1/chat/completions",
     {"model": "rag", "temprature": 0, "messages": [{"role": "user", "content": "x"}]}, "default", 422,
     "unknown field"),
    ("tools", "/v1/chat/completions",
     {"model": "rag", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "x"}]}, "default",
     422, "tools"),
    ("n = 3", "/v1/chat/completions", {"model": "rag", "n": 3, "messages": [{"role": "user", "content": "x"}]},
     "default", 422, "n must be 1"),
    ("last turn not the user's", "/v1/chat/completions",
     {"model": "rag", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "default", 400, "user's question"),
    ("empty question", "/v1/chat/completions", {"model": "rag", "messages": [{"role": "user", "content": " "}]},
     "default", 400, "empty"),
    ("deeply nested filter", "/v1/chat/completions",
     {"model": "rag", "filter": json.loads("[" * 200 + "]" * 200), "messages": [{"role": "user", "content": "x"}]},
     "default", 400, "levels deep"),
    ("unknown template", "/v1/chat/completions",
     {"model": "rag", "task": "../../etc/passwd", "messages": [{"role": "user", "content": "x"}]}, "default", 400,
     "template"),
    ("too many messages", "/v1/chat/completions",
     {"model": "rag-chat", "messages": [{"role": "user", "content": "x"}] * 65}, "default", 400, "at most 64"),
    ("history too long", "/v1/chat/completions",
     {"model": "rag-chat", "messages": [{"role": "user", "content": "x" * 20000},
                                        {"role": "assistant", "content": "y" * 20000},
                                        {"role": "user", "content": "and?"}]}, "default", 400, "characters"),
    ("oversize body", "/v1/chat/completions", b'{"model": "rag", "x": "' + b"a" * 1_100_000 + b'"}', "default",
     413, "limit"),
    ("missing key", "/v1/models", None, None, 401, "missing API key"),
    ("wrong key", "/v1/chat/completions", {"model": "rag", "messages": [{"role": "user", "content": "x"}]},
     "wrong-key-0123456789", 401, "invalid API key"),
    ("not bearer", "/v1/models", None, "", 401, "Bearer"),
    ("unknown route", "/v1/completions", {"model": "rag", "prompt": "x"}, "default", 404, "no route"),
    ("wrong method", "/v1/chat/completions", None, "default", 405, "not allowed"),
    ("embeddings: unknown model", "/v1/embeddings", {"model": "ada", "input": "x"}, "default", 404, "does not exist"),
    ("embeddings: empty list", "/v1/embeddings", {"model": "embedder", "input": []}, "default", 400, "1 to"),
    ("embeddings: input a number", "/v1/embeddings", {"model": "embedder", "input": 5}, "default", 422, "input"),
    ("embeddings: empty text", "/v1/embeddings", {"model": "embedder", "input": ["a", " "]}, "default", 400,
     "input[1] is empty"),
]


def test_bad_requests_get_openai_errors_while_a_stream_is_served(ingress, client):
    streamed = {}

    def stream_meanwhile():
        pieces = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}],
                                                stream=True, max_tokens=24)
        streamed["text"] = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)

    worker = threading.Thread(target=stream_meanwhile)
    worker.start()
    failures = []
    for what, path, body, key, status, words in BAD_REQUESTS:
        if key == "":
            got, answer, _ = raw(ingress, path, body, key=None, headers={"Authorization": "Basic abc"})
        else:
            got, answer, _ = raw(ingress, path, body, key=key, method="GET" if what == "wrong method" else None)
        error = answer.get("error") if isinstance(answer, dict) else None
        if got != status or not error or words.lower() not in error["message"].lower() or not error["type"]:
            failures.append(f"{what}: {got} {answer}")
    worker.join(300)
    assert not failures, "\n".join(failures)
    assert len(BAD_REQUESTS) >= 25
    assert streamed.get("text", "").strip(), "the concurrent stream was not served"
    ok = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}], max_tokens=4)
    assert ok.choices[0].message.content


def test_a_client_that_goes_away_mid_stream_leaves_the_service_serving(ingress, client):
    with httpx.stream("POST", f"{ingress.url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {ingress.api_key}"},
                      json={"model": "rag", "stream": True, "max_tokens": 200,
                            "messages": [{"role": "user", "content": QUESTION}]}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    ok = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}], max_tokens=4)
    assert ok.choices[0].message.content


def metrics_of(ingress):
    with urllib.request.urlopen(f"{ingress.url}/metrics", timeout=10) as response:
        return response.read().decode()


def test_health_and_metrics(ingress):
    status, body, _ = raw(ingress, "/health", key=None)
    assert status == 200 and body["status"] == "ok"
    page = metrics_of(ingress)
    assert "tritonrag_ingress_requests_total" in page and "tritonrag_ingress_first_token_seconds" in page


def test_per_key_limits_answer_429_with_retry_after(server, settings, tmp_path):
    config = tmp_path / "limits.toml"
    config.write_text(open(CONFIG).read() + "\n[ingress]\nrate_limit_rpm = 2\nrate_limit_burst = 2\n"
                      "max_concurrency_per_key = 1\n")
    key = "limit-key-0123456789abcdef"
    with IngressProcess(server.grpc_url, Ports.choose(0, 0, 0).http, settings.home,
                        env={CONFIG_ENV: str(config), "TRITONRAG_API_KEYS": key}) as limited:
        limited.api_key = key
        sdk = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=key, max_retries=0, timeout=300)
        busy = {}

        def long_request():
            busy["answer"] = sdk.chat.completions.create(
                model="rag", messages=[{"role": "user", "content": QUESTION}], max_tokens=48)

        worker = threading.Thread(target=long_request)
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "tritonrag_ingress_requests_in_flight 1.0" not in metrics_of(limited):
            time.sleep(0.05)  # until the long request is being answered
        status, body, _ = raw(limited, "/v1/chat/completions",
                              {"model": "rag", "messages": [{"role": "user", "content": "x"}]}, key="default")
        worker.join(300)
        assert status == 429 and "in flight" in body["error"]["message"], body
        assert busy["answer"].choices[0].message.content  # the admitted request was served
        with pytest.raises(openai.RateLimitError, match="per minute") as caught:
            for _ in range(3):
                sdk.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=2)
        assert int(caught.value.response.headers["Retry-After"]) >= 1


def test_it_refuses_to_serve_other_hosts_without_api_keys(settings):
    result = subprocess.run([sys.executable, "-m", "tritonrag.cli", "ingress", "--host", "0.0.0.0", "--port", "1"],
                            capture_output=True, text=True, timeout=60,
                            env={CONFIG_ENV: CONFIG, "PATH": "/usr/bin:/bin", "TRITONRAG_API_KEYS": ""})
    assert result.returncode == 1 and "without API keys" in result.stdout + result.stderr
