"""Conversations through the served pipeline: rag-chat condenses a follow-up question from the history, llm answers
without retrieval, every final response reports its tokens, bad history is refused precisely, and the retriever's
stats list the documents."""

import json
import re

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonrag_client import RagClient, RagError

from .helpers import bytes_input, grpc_stream, outputs_of, post_json, sse_events

FOGG = [{"role": "user", "content": "Who is Phileas Fogg?"},
        {"role": "assistant", "content": "Phileas Fogg is an English gentleman who bets that he can travel around "
                                         "the world in eighty days."}]
FOLLOW_UP = "Where was he born?"
FAST = {"max_tokens": 8}


def generate_url(server, model="rag"):
    return f"http://{server.http_url}/v2/models/{model}/generate"


def client(server, protocol):
    return RagClient(server.http_url if protocol == "http" else server.grpc_url, protocol)


def assert_usage(usage, max_tokens=None):
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}, usage
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if max_tokens is not None:
        assert usage["completion_tokens"] <= max_tokens


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_rag_chat_searches_with_a_standalone_question_about_the_earlier_subject(server, protocol):
    answer = client(server, protocol).ask(FOLLOW_UP, history=FOGG, flow="rag-chat", min_score=0, **FAST)
    assert answer.query and answer.query != FOLLOW_UP, answer.query
    assert "fogg" in answer.query.lower() or "phileas" in answer.query.lower(), answer.query
    assert answer.sources and answer.finish_reason in ("stop", "length")
    assert answer.timing["condense_ms"] > 0 and answer.timing["total_ms"] >= answer.timing["condense_ms"]
    # the condense generation's tokens and the answer's: rag on the condensed question costs the answer's alone
    plain = client(server, protocol).ask(answer.query, min_score=0, **FAST)
    assert_usage(answer.usage)
    assert answer.usage["prompt_tokens"] > plain.usage["prompt_tokens"]
    assert answer.usage["completion_tokens"] > plain.usage["completion_tokens"]


def test_rag_chat_streams_and_without_history_is_rag(server):
    events = sse_events(f"{generate_url(server)}_stream",
                        {"text_input": FOLLOW_UP, "history": json.dumps(FOGG),
                         "parameters": {**FAST, "flow": "rag-chat", "stream": True, "min_score": 0}})
    assert json.loads(events[0]["sources"]) and events[-1]["finish_reason"] in ("stop", "length")
    assert "fogg" in events[-1]["query"].lower() or "phileas" in events[-1]["query"].lower()
    assert_usage(json.loads(events[-1]["usage"]))
    rag = client(server, "http")
    chat = rag.ask("Who is Passepartout?", flow="rag-chat", **FAST)
    plain = rag.ask("Who is Passepartout?", **FAST)
    assert chat.query == plain.query == "Who is Passepartout?" and "condense_ms" not in chat.timing
    assert (chat.text, chat.usage) == (plain.text, plain.usage)  # greedy: the same answer, the same tokens


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_llm_flow_answers_from_the_conversation_without_sources(server, protocol):
    rag = client(server, protocol)
    answer = rag.ask("What did I just ask you about?", history=FOGG, flow="llm", max_tokens=12)
    assert answer.text.strip() and answer.finish_reason in ("stop", "length")
    assert answer.sources == [] and answer.citations == []
    assert answer.query == "What did I just ask you about?"
    assert "embed_ms" not in answer.timing and "retrieve_ms" not in answer.timing
    assert_usage(answer.usage, 12)
    events = list(rag.stream("Say hello.", flow="llm", max_tokens=6))
    assert events[0].sources == [] and events[-1].usage and events[-1].finish_reason in ("stop", "length")


def test_usage_counts_the_generators_tokens_streamed_or_not(server):
    rag = client(server, "grpc")
    answer = rag.ask("Who is Fix?", max_tokens=6)
    assert_usage(answer.usage, 6)
    streamed = list(rag.stream("Who is Fix?", max_tokens=6))
    assert streamed[-1].usage == answer.usage  # greedy: the same prompt, the same answer
    # the qa-checked flow adds the critic's passes (and maybe a second answer)
    checked = rag.ask("Who is Fix?", max_tokens=6, flow="qa-checked")
    assert_usage(checked.usage)
    assert checked.usage["prompt_tokens"] > answer.usage["prompt_tokens"]
    # an abstention generates nothing
    abstained = rag.ask("Hi", max_tokens=6)
    assert abstained.finish_reason == "abstained"
    assert abstained.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_the_generator_reports_its_tokens_on_the_final_response(server):
    status, body = post_json(generate_url(server, "generator"),
                             {"text_input": "Count: one, two, three,", "parameters": {"max_tokens": 5}})
    assert status == 200, body
    assert body["finish_reason"] == "length" and body["num_output_tokens"] == 5 and body["num_input_tokens"] > 3


def test_the_prompt_builder_sends_history_as_chat_turns(server):
    http = httpclient.InferenceServerClient(server.http_url)
    inputs = [bytes_input("query", ["Where was he born?"], [1], httpclient),
              bytes_input("template", ["chat"], [1], httpclient),
              bytes_input("history", [json.dumps(FOGG)], [1], httpclient)]
    prompt = http.infer("prompt_builder", inputs).as_numpy("prompt").reshape(-1)[0].decode()
    assert prompt.index("Who is Phileas Fogg?") < prompt.index("eighty days") < prompt.index("Where was he born?")
    assert prompt.count("<|im_start|>") == 5  # system, the two earlier turns, the question, the answer's start


TOO_MANY = json.dumps([{"role": "user", "content": "hi"}] * 65)


@pytest.mark.parametrize(("history", "message"), [
    ("{not json", "input 'history' is not valid JSON"),
    ('{"role": "user", "content": "hi"}', "input 'history' must be a JSON list of"),
    (json.dumps([FOGG[0], {"role": "tool", "content": "x"}]), "history[1].role must be user or assistant, got 'tool'"),
    (json.dumps([{"role": "user", "content": 3}]), "history[0].content must be a string, got a number"),
    (json.dumps([{"role": "user"}]), "history[0] lacks content"),
    (TOO_MANY, "input 'history' has 65 messages; the limit is 64"),
])
def test_bad_history_is_refused_with_what_to_change(server, history, message):
    for flow in ("rag-chat", "llm", "rag"):  # validated for every flow, before anything runs
        status, body = post_json(generate_url(server), {"text_input": FOLLOW_UP, "history": history,
                                                        "parameters": {**FAST, "flow": flow}})
        assert status == 400 and message in body["error"], (flow, body)
    _, error = grpc_stream(server.grpc_url, "rag", [bytes_input("text_input", [FOLLOW_UP]),
                                                    bytes_input("history", [history])], {"flow": "rag-chat"})
    assert error is not None and message in str(error)
    if history.startswith("["):  # the client sends a list as the history input's JSON
        with pytest.raises(RagError, match=re.escape(message)):
            client(server, "grpc").ask(FOLLOW_UP, history=json.loads(history), flow="llm", **FAST)


def test_history_that_is_not_utf8_is_refused_and_the_server_keeps_serving(server):
    _, error = grpc_stream(server.grpc_url, "rag", [bytes_input("text_input", [FOLLOW_UP]),
                                                    bytes_input("history", [b'[{"role": "user", "content": "\xff"}]'])])
    assert error is not None and "input 'history' row 0 is not valid UTF-8" in str(error)
    results, error = grpc_stream(server.grpc_url, "rag", [bytes_input("text_input", [FOLLOW_UP]),
                                                          bytes_input("history", [json.dumps(FOGG)])],
                                 {"flow": "llm", "max_tokens": 4})
    assert error is None and outputs_of(results[-1], "finish_reason") in ("stop", "length")
    assert json.loads(outputs_of(results[-1], "usage"))["completion_tokens"] >= 1


def test_retriever_stats_list_the_documents(server, knowledge_base):
    status, body = post_json(generate_url(server, "retriever"), {"stats": True})
    assert status == 200, body
    stats = json.loads(body["stats"] if isinstance(body["stats"], str) else body["stats"][0])
    listed = stats["documents_list"]
    assert [d["source"] for d in listed] == sorted(d["source"] for d in listed)
    assert len(listed) == min(stats["docstore"]["documents"], 1000)
    assert stats["documents_list_truncated"] is (stats["docstore"]["documents"] > 1000)
    book = next(d for d in listed if d["source"] == "around_the_world.txt")
    assert book["title"] == "Around the World in 80 Days" and book["chunks"] > 100
    assert np.sum([d["chunks"] for d in listed]) <= stats["docstore"]["chunks"]
