"""The answer cache on a real tritonserver (stand-in embedder and generator, the real retriever and prompt builder,
cache on, over a knowledge base of its own): a repeated question is answered from the cache as a stream with its
sources first, over gRPC and HTTP; `cache: false` bypasses it; publishing a new knowledge-base version invalidates
it; the ingress keeps API keys' entries apart; hits, misses and invalidations show on Triton's metrics."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tritonrag.deploy.ingress_process import IngressProcess
from tritonrag.deploy.server import Ports
from tritonrag.serving.contract import RAG
from tritonrag.settings import CONFIG_ENV

from .helpers import bytes_input, grpc_stream, outputs_of, post_json
from .servers import redis_server, triton_with

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "tritonrag.cli"]
KEYS = {"alice": "alice-key-" + "1" * 24, "bob": "bob-key-" + "2" * 24}
QUESTION = "How many lamps did Phileas Fogg count on the bridge?"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("answer_cache")
    chapters = base / "chapters"
    chapters.mkdir()
    for i in range(6):
        (chapters / f"chapter{i}.md").write_text(f"# Chapter {i}\n\n" + " ".join(
            f"Phileas Fogg crossed bridge {j} of chapter {i} and counted {i + j} lamps." for j in range(30)))
    config = write_config(base / "config.toml", base / "kb")
    environ = {**os.environ, CONFIG_ENV: str(config)}
    subprocess.run([*CLI, "ingest", str(chapters)], env=environ, check=True, capture_output=True, timeout=300,
                   cwd=ROOT)
    return {"base": base, "config": config, "environ": environ}


def write_config(path, index_dir, **cache):
    path.write_text(f"""
[embedder]
model = "stand-in"
[reranker]
model = "stand-in"
[generator]
engine = "stand-in"
[rag]
abstain_below_score = 0
[retriever]
index_dir = "{index_dir}"
reload_interval_s = 0.2
[cache]
enabled = true
""" + "".join(f"{name} = {json.dumps(value)}\n" for name, value in cache.items()))
    return path


@pytest.fixture(scope="module")
def triton(env):
    with triton_with(env["config"], env["base"] / "triton.log") as server:
        yield server


@pytest.fixture(scope="module")
def ingress(env, triton):
    keys = ",".join(f"{name}:{key}" for name, key in KEYS.items())
    process = IngressProcess(triton.grpc_url, Ports.choose(0, 0, 0).http, env["base"],
                             env={CONFIG_ENV: str(env["config"]), "TRITONRAG_API_KEYS": keys},
                             log_file=env["base"] / "ingress.log")
    process.start()
    yield process
    process.stop()


def ask_stream(triton, question, **parameters):
    """One streamed rag request over gRPC: (its responses' (text, sources) pairs, the final outputs)."""
    inputs = [bytes_input(RAG.text_input, [question], (1,), grpcclient)]
    results, error = grpc_stream(triton.grpc_url, RAG.model, inputs, {RAG.stream: True, "max_tokens": 8, **parameters})
    assert error is None, error
    parts = [(outputs_of(r, RAG.text_output) or "", outputs_of(r, RAG.sources)) for r in results]
    final = results[-1]
    return parts, {name: outputs_of(final, name) for name in (RAG.cache_status, RAG.timing, RAG.usage,
                                                             RAG.citations)}


def ask_http(triton, question, **parameters):
    status, body = post_json(f"http://{triton.http_url}/v2/models/{RAG.model}/generate",
                             {RAG.text_input: question, "parameters": {"max_tokens": 8, **parameters}})
    assert status == 200, body
    return body


def metric(triton, name, **labels):
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_repeated_question_streams_from_the_cache_sources_first(triton):
    first, first_final = ask_stream(triton, QUESTION)
    assert first_final[RAG.cache_status] == "miss"
    again, final = ask_stream(triton, "  how many lamps did phileas fogg count on the bridge ")
    assert final[RAG.cache_status] == "exact"
    assert again[0][1] is not None and json.loads(again[0][1]) == json.loads(first[0][1])  # sources first
    assert "".join(text for text, _ in again) == "".join(text for text, _ in first)
    assert final[RAG.citations] == first_final[RAG.citations]
    timing = json.loads(final[RAG.timing])
    assert "cache_ms" in timing and "embed_ms" not in timing and "retrieve_ms" not in timing
    assert json.loads(final[RAG.usage])["completion_tokens"] == 0  # nothing generated


def test_http_answers_from_the_same_entries_and_cache_false_bypasses_them(triton):
    stream_text = "".join(text for text, _ in ask_stream(triton, QUESTION)[0])
    whole = ask_http(triton, QUESTION)
    assert whole[RAG.cache_status] == "exact" and whole[RAG.text_output] == stream_text
    assert json.loads(whole[RAG.sources])
    fresh = ask_http(triton, QUESTION, cache=False)
    assert fresh[RAG.cache_status] == "off" and fresh[RAG.text_output] == stream_text
    random = ask_http(triton, QUESTION, temperature=0.8)
    assert random[RAG.cache_status] == "off"
    status, body = post_json(f"http://{triton.http_url}/v2/models/{RAG.model}/generate",
                             {RAG.text_input: QUESTION, "parameters": {"cache": "no"}})
    assert status == 400 and "cache must be true or false" in body["error"]


def test_options_are_part_of_the_key(triton):
    ask_http(triton, QUESTION)
    assert ask_http(triton, QUESTION, top_k=2)[RAG.cache_status] == "miss"
    assert ask_http(triton, QUESTION, top_k=2)[RAG.cache_status] == "exact"
    assert ask_http(triton, QUESTION, filter='{"source": "chapter1.md"}')[RAG.cache_status] == "miss"


def test_publishing_a_version_invalidates_the_cache(env, triton):
    ask_http(triton, "Which bridge did Fogg cross in chapter 3?")
    assert ask_http(triton, "Which bridge did Fogg cross in chapter 3?")[RAG.cache_status] == "exact"
    before = metric(triton, "tritonrag_answer_cache_invalidations_total")
    extra = env["base"] / "extra"
    extra.mkdir(exist_ok=True)
    (extra / "appendix.md").write_text("# Appendix\n\nPassepartout counted the bridges of chapter 3 again.")
    subprocess.run([*CLI, "kb", "add", str(extra / "appendix.md")], env=env["environ"], check=True,
                   capture_output=True, timeout=300, cwd=ROOT)
    deadline = time.monotonic() + 30
    while True:  # the retriever swaps the new version in within reload_interval_s
        status = ask_http(triton, "Which bridge did Fogg cross in chapter 3?")[RAG.cache_status]
        if status == "miss" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == "miss"
    deadline = time.monotonic() + 30
    while (status := ask_http(triton, "Which bridge did Fogg cross in chapter 3?")[RAG.cache_status]) != "exact":
        assert time.monotonic() < deadline, status  # cached again once the retriever serves the new version
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while metric(triton, "tritonrag_answer_cache_invalidations_total") <= before:
        assert time.monotonic() < deadline, "the invalidation never showed on the metrics"
        time.sleep(0.3)


def test_metrics_count_hits_and_misses(triton):
    ask_http(triton, "What did Fogg count?")
    ask_http(triton, "What did Fogg count?")
    time.sleep(0.6)  # metrics are published at most every 0.25 s
    ask_http(triton, "What did Fogg count?", cache=False)
    time.sleep(0.6)
    ask_http(triton, "What did Fogg count?", cache=False)
    assert metric(triton, "tritonrag_answer_cache_lookups_total", result="exact") >= 1
    assert metric(triton, "tritonrag_answer_cache_lookups_total", result="miss") >= 1
    assert metric(triton, "tritonrag_answer_cache_lookups_total", result="off") >= 1
    assert metric(triton, "tritonrag_answer_cache_entries") >= 1
    assert metric(triton, "tritonrag_answer_cache_stores_total") >= 1


def test_the_ingress_keeps_api_keys_apart(ingress):
    from openai import OpenAI

    def ask(key, **extra):
        client = OpenAI(base_url=f"{ingress.url}/v1", api_key=KEYS[key], max_retries=0)
        reply = client.chat.completions.create(model="rag", messages=[{"role": "user", "content": QUESTION}],
                                               max_tokens=8, extra_body=extra)
        return reply.model_extra["rag"]["cache"], reply.choices[0].message.content

    assert ask("alice")[0] == "miss"
    status, text = ask("alice")
    assert status == "exact"
    assert ask("bob") == ("miss", text)  # the same answer, not read from alice's entry
    assert ask("bob")[0] == "exact"
    assert ask("bob", cache=False)[0] == "off"


def test_retriever_reports_its_version(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    vector = np.zeros((1, 384), np.float32)
    vector[0, 0] = 1
    inputs = [grpcclient.InferInput("embedding", [1, 384], "FP32")]
    inputs[0].set_data_from_numpy(vector)
    result = client.infer("retriever", inputs)
    assert result.as_numpy("kb_version").reshape(-1)[0].decode().startswith("v")


@pytest.fixture()
def redis_url(tmp_path):
    with redis_server(tmp_path) as url:
        yield url


def test_two_replicas_share_one_redis_cache(env, redis_url, tmp_path):
    """Two tritonservers (replicas) with backend redis: what one answered, the other replays."""
    config = write_config(tmp_path / "redis.toml", env["base"] / "kb", backend="redis", redis_url=redis_url,
                          redis_prefix="replicas")
    with (triton_with(config, tmp_path / "triton-0.log") as first,
          triton_with(config, tmp_path / "triton-1.log") as second):
        question = "What did Phileas Fogg cross in chapter 4?"
        answered = ask_http(first, question)
        assert answered[RAG.cache_status] == "miss"
        replayed = ask_http(second, question.upper())
        assert replayed[RAG.cache_status] == "exact" and replayed[RAG.text_output] == answered[RAG.text_output]
        _, streamed = ask_stream(second, question)
        assert streamed[RAG.cache_status] == "exact"
