"""The whole pipeline: the seed demo's three questions, over HTTP generate, SSE, gRPC and the client."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonrag_client import RagClient

from .helpers import bytes_input, grpc_stream, outputs_of, post_json, sse_events

SEED_QUESTIONS = {
    "Describe the body of water in Utah": ["Salt Lake"],
    "Tell me as much as you can about the robbery": ["fifty-five thousand pounds"],
    "Did Phileas Fogg really rob the bank?": ["James Strand", "real bankrobber", "innocence"],
}
FAST = {"max_tokens": 16}


def source_texts(knowledge_base, sources):
    hits = knowledge_base.fetch([s["chunk_id"] for s in sources], [s["score"] for s in sources])
    return " ".join(h.text for h in hits)


@pytest.mark.parametrize("question", list(SEED_QUESTIONS))
def test_seed_questions_retrieve_the_answering_passages(server, knowledge_base, question):
    status, body = post_json(f"http://{server.http_url}/v2/models/rag/generate",
                             {"text_input": question, "parameters": FAST})
    assert status == 200, body
    sources = json.loads(body["sources"])
    assert len(sources) == 4
    assert all(s["title"] == "Around the World in 80 Days" for s in sources)
    texts = source_texts(knowledge_base, sources)
    assert any(marker in texts for marker in SEED_QUESTIONS[question]), (question, texts[:500])
    assert body["text_output"].strip(), "an answer was generated"
    assert body["finish_reason"] in ("stop", "length")


def test_filter_restricts_sources_to_one_document(server):
    client = RagClient(server.http_url)
    answer = client.ask("Who is Passepartout?", max_tokens=4, top_k=3, filter={"source": "around_the_world.txt"})
    assert [s["source"] for s in answer.sources] == ["around_the_world.txt"] * 3
    grpc = RagClient(server.grpc_url, "grpc")
    answer = grpc.ask("Who is Passepartout?", max_tokens=4, top_k=2, filter={"title": "Around the World in 80 Days"})
    assert len(answer.sources) == 2


def test_a_question_the_documents_do_not_touch_is_abstained_without_generating(server):
    url = f"http://{server.http_url}/v2/models/rag/generate"
    status, body = post_json(url, {"text_input": "Hi", "parameters": FAST})  # best passage ~0.18 < 0.3
    assert status == 200, body
    assert body["finish_reason"] == "abstained"
    assert body["text_output"].startswith("The documents do not contain an answer")
    assert json.loads(body["sources"]), "the passages found are still reported"
    events = sse_events(f"{url}_stream", {"text_input": "Hi", "parameters": {**FAST, "stream": True}})
    assert json.loads(events[0]["sources"]) and events[-1]["finish_reason"] == "abstained"
    assert any(e.get("text_output", "").startswith("The documents do not contain") for e in events)
    status, body = post_json(url, {"text_input": "Hi", "parameters": {**FAST, "min_score": 0}})
    assert status == 200 and body["finish_reason"] in ("stop", "length"), body  # 0 disables: generated
    status, body = post_json(url, {"text_input": "Hi", "parameters": {"min_score": 5}})
    assert status == 400 and "min_score must be between -1 and 1" in body["error"], body


def test_generate_stream_sse_plain_json(server):
    body = {"text_input": "Describe the body of water in Utah", "parameters": {"max_tokens": 12, "stream": True}}
    events = sse_events(f"http://{server.http_url}/v2/models/rag/generate_stream", body)
    assert "sources" in events[0] and json.loads(events[0]["sources"])
    pieces = [e["text_output"] for e in events if e.get("text_output")]
    assert len(pieces) >= 3, "tokens arrive as separate events"
    assert events[-1]["finish_reason"] in ("stop", "length")


def test_generate_stream_with_curl(server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        [curl, "-sS", "-N", "-X", "POST", f"http://{server.http_url}/v2/models/rag/generate_stream",
         "-d", json.dumps({"text_input": "Who is Passepartout?", "stream": True, "parameters": {"max_tokens": 8}})],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    events = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("data:")]
    assert len(events) >= 3 and "sources" in events[0]


def test_generate_stream_without_stream_flag_returns_one_event(server):
    events = sse_events(f"http://{server.http_url}/v2/models/rag/generate_stream",
                        {"text_input": "Who is Passepartout?", "parameters": FAST})
    assert len(events) == 1 and events[0]["text_output"] and "sources" in events[0]


def test_grpc_streaming_rag(server):
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    results, error = grpc_stream(server.grpc_url, "rag", [bytes_input("text_input", ["Who is Phileas Fogg?"]), stream],
                                 parameters={"max_tokens": 12, "top_k": 2})
    assert error is None
    assert len(json.loads(outputs_of(results[0], "sources"))) == 2
    assert sum(1 for r in results if outputs_of(r, "text_output")) >= 3
    assert outputs_of(results[-1], "finish_reason") in ("stop", "length")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_python_client_stream_and_ask(server, protocol):
    client = RagClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
    events = list(client.stream("Where is the Reform Club?", max_tokens=10, template="qa"))
    assert events[0].sources and len(events) >= 3
    streamed = "".join(e.text for e in events)
    answer = client.ask("Where is the Reform Club?", max_tokens=10, template="qa")
    assert answer.text == streamed, "greedy decoding gives the same answer streamed or not"
    assert answer.sources == events[0].sources


def test_concurrent_rag_requests_all_complete(server):
    from concurrent.futures import ThreadPoolExecutor

    client = RagClient(server.grpc_url, "grpc")
    questions = ["Who is Fix?", "Who is Aouda?", "What is the Reform Club?", "Who is Passepartout?"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: client.ask(q, max_tokens=8), questions))
    assert all(a.sources and a.finish_reason for a in answers)


def test_ask_cli(server):
    from typer.testing import CliRunner

    from tritonrag.cli import app

    result = CliRunner().invoke(app, ["ask", "--url", server.http_url, "--max-tokens", "8", "Who is Fix?"])
    assert result.exit_code == 0, result.output
    assert "Sources" in result.output and "Around the World in 80 Days" in result.output
    result = CliRunner().invoke(app, ["ask", "--grpc", "--url", server.grpc_url, "--json", "--max-tokens", "8",
                                      "Who is Fix?"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sources"]


# --- citations, tasks, structured output, the checked flow -------------------------------------------------------

def test_the_final_response_lists_only_valid_citations(server):
    url = f"http://{server.http_url}/v2/models/rag/generate"
    status, body = post_json(url, {"text_input": "Describe the body of water in Utah",
                                   "parameters": {"max_tokens": 48}})
    assert status == 200, body
    sources, cited = json.loads(body["sources"]), json.loads(body["citations"])
    for citation in cited:  # whatever the model cites, only passages it was shown are listed
        assert 1 <= citation["n"] <= len(sources)
        assert citation["chunk_id"] == sources[citation["n"] - 1]["chunk_id"]
        assert f"[{citation['n']}" in body["text_output"] or f", {citation['n']}" in body["text_output"]
    events = sse_events(f"{url}_stream", {"text_input": "Describe the body of water in Utah",
                                          "parameters": {"max_tokens": 48, "stream": True}})
    assert json.loads(events[-1]["citations"]) == cited, "streamed or not, the same greedy answer cites the same"


def test_tasks_and_a_system_prompt_are_chosen_per_request(server):
    client = RagClient(server.grpc_url, "grpc")
    answer = client.ask("the wager at the Reform Club", template="summarize", max_tokens=24,
                        system_prompt="You summarise documents in one sentence.")
    assert answer.text.strip() and answer.finish_reason in ("stop", "length")
    url = f"http://{server.http_url}/v2/models/rag/generate"
    for parameters, message in [
        ({"template": "no_such"}, "unknown template 'no_such'; available templates:"),
        ({"system_prompt": "x" * 5000}, "system_prompt must hold 1 to 4000 characters"),
        ({"template": "completion_qa", "system_prompt": "Be brief."}, "completion template"),
        ({"flow": "nope"}, "unknown flow 'nope'; available flows: llm, qa-checked, rag, rag-chat"),
    ]:
        status, body = post_json(url, {"text_input": "Who is Fix?", "parameters": parameters})
        assert status == 400 and message in body["error"], (parameters, body)


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "servant_of"],
          "properties": {"name": {"type": "string", "maxLength": 40},
                         "servant_of": {"type": "string", "maxLength": 40}}}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_structured_output_follows_the_schema(server, protocol):
    import jsonschema

    client = RagClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
    answer = client.ask("Who is Passepartout?", template="extract", json_schema=PERSON, max_tokens=60)
    jsonschema.validate(json.loads(answer.text), PERSON)  # decoding was constrained: it parses and validates
    assert answer.citations == []
    answer = client.ask("Who is Passepartout?", json_object=True, max_tokens=60)
    assert answer.text.lstrip().startswith("{")  # any object: nothing bounds its strings, so max_tokens may cut it
    if answer.finish_reason == "stop":
        assert isinstance(json.loads(answer.text), dict)


def test_a_bad_schema_is_refused_with_the_reason(server):
    url = f"http://{server.http_url}/v2/models/rag/generate"
    for schema, message in [("{not json", "json_schema is not valid JSON"),
                            (json.dumps({"type": "nonsense"}), "json_schema")]:
        status, body = post_json(url, {"text_input": "Who is Fix?", "parameters": {"json_schema": schema}})
        assert status == 400 and message in body["error"], body


@pytest.mark.parametrize("stream", [False, True])
def test_the_qa_checked_flow_answers_or_abstains(server, stream):
    client = RagClient(server.http_url)
    question, parameters = "Where does Phileas Fogg live?", {"flow": "qa-checked", "max_tokens": 32}
    if stream:
        events = list(client.stream(question, **parameters))
        assert events[0].sources and events[-1].finish_reason in ("stop", "length", "abstained")
        text = "".join(e.text for e in events)
    else:
        answer = client.ask(question, **parameters)
        assert answer.sources and answer.finish_reason in ("stop", "length", "abstained")
        text = answer.text
    assert text.strip()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_hybrid_retrieval_and_reranking_through_the_pipeline_report_where_and_how_long(server, protocol):
    client = RagClient(server.http_url if protocol == "http" else server.grpc_url, protocol)
    answer = client.ask("fifty-five thousand pounds", max_tokens=4, top_k=3, rerank=True, rerank_candidates=8)
    assert len(answer.sources) == 3
    for source in answer.sources:
        found = source["retrieval"]
        assert found["rerank"]["rank"] >= 1 and 1 <= found["retrieval_rank"] <= 8
        assert {"dense", "sparse"} & set(found) and -1 <= found["similarity"] <= 1
    assert [s["retrieval"]["rerank"]["rank"] for s in answer.sources] == [1, 2, 3]  # rerank_fusion "none"
    for step in ("embed_ms", "retrieve_ms", "dense_ms", "sparse_ms", "fusion_ms", "rerank_ms", "prompt_ms",
                 "generate_ms", "total_ms"):
        assert answer.timing[step] >= 0, step
    sparse = client.ask("Passepartout", max_tokens=4, top_k=2, mode="sparse", rerank=False)
    assert all(set(s["retrieval"]) <= {"sparse", "similarity"} for s in sparse.sources)
    with pytest.raises(Exception, match="rerank_candidates \\(2\\) must be at least top_k \\(3\\)"):
        client.ask("Utah", max_tokens=4, top_k=3, rerank=True, rerank_candidates=2)
