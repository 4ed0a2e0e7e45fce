"""The answer cache: its tiers and scopes through the pipeline (fake stages), the memory store's bounds, and the Redis
store against a real redis-server shared by two "replicas"."""

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
from test_pipeline import PASSAGES, FakeStages

from tritonrag.errors import InvalidInput
from tritonrag.kb.filters import parse_filter
from tritonrag.pipeline.answer_cache import (
    AnswerCache,
    CachedAnswer,
    normalised_question,
    settings_fingerprint,
)
from tritonrag.pipeline.cache_store import MemoryStore, RedisStore
from tritonrag.pipeline.events import ABSTAINED, FailedEvent, FinalEvent, SourcesEvent, TextEvent
from tritonrag.pipeline.flow import RagPipeline
from tritonrag.pipeline.request import RagParams
from tritonrag.pipeline.types import GenerationChunk, Passage, RagRequest, Retrieval
from tritonrag.prompts.history import Turn
from tritonrag.settings import load_settings

SETTINGS = load_settings()
CHUNKS = [GenerationChunk("Fogg "), GenerationChunk("left [1]."), GenerationChunk("", "stop")]


def vector(*values):
    v = np.array([values], np.float32)
    return v / np.linalg.norm(v)


class Stages(FakeStages):
    """Fake stages whose embedder maps known questions to chosen vectors (others: a vector of their own)."""

    vectors: dict = None
    version: str = "v000001"

    async def embed(self, text):
        self.calls.append(("embed", text))
        known = (self.vectors or {}).get(text)
        if known is not None:
            return known
        seed = sum(text.encode())
        return vector(*np.random.default_rng(seed).normal(size=4))

    async def retrieve(self, embedding, query, top_k, flt, options=None):
        found = await super().retrieve(embedding, query, top_k, flt, options)
        return dataclasses.replace(found, version=self.version)


def make(store=None, version="v000001", **settings):
    stages = Stages(list(PASSAGES), list(CHUNKS), {})
    stages.version = version
    current = {"version": version}
    cache_settings = dataclasses.replace(SETTINGS.cache, **settings)
    store = MemoryStore(100, 2**20) if store is None else store
    cache = AnswerCache(store, cache_settings, lambda: current["version"], "fp")
    return RagPipeline(stages, cache=cache), stages, cache, current


def ask(pipeline, query, stream=False, history=(), **params):
    async def collect():
        request = RagRequest(query, RagParams(stream=stream, **params), tuple(history))
        return [event async for event in pipeline.run(request)]
    return asyncio.run(collect())


def final(events):
    assert isinstance(events[-1], FinalEvent), events[-1]
    return events[-1]


def generations(stages):
    return sum(1 for call in stages.calls if call[0] == "generate")


def test_normalised_question_ignores_case_spacing_and_end_punctuation():
    assert normalised_question("  Who robbed  the BANK?! ") == normalised_question("who robbed the bank")
    assert normalised_question("Ｗho") == normalised_question("who")  # NFKC
    assert normalised_question("Who robbed the bank?") != normalised_question("Who robbed the train?")


def test_exact_hit_answers_without_any_stage_and_replays_the_stream_sources_first():
    pipeline, stages, cache, _ = make()
    first = ask(pipeline, "Who left London?", stream=True)
    assert final(first).cache == "miss"
    calls = len(stages.calls)
    again = ask(pipeline, "who left london", stream=True)
    assert len(stages.calls) == calls  # no embed, retrieve, prompt or generation
    assert isinstance(again[0], SourcesEvent) and again[0].sources == first[0].sources
    assert "".join(e.text for e in again if isinstance(e, TextEvent)) == "Fogg left [1]."
    assert final(again).cache == "exact" and final(again).citations == final(first).citations
    assert final(again).finish_reason == "stop"
    # a whole (non-streamed) answer from the same entry: text, sources and citations in the final event
    whole = final(ask(pipeline, "Who left London?"))
    assert whole.text == "Fogg left [1]." and whole.sources == first[0].sources and whole.cache == "exact"
    assert cache.stats.exact_hits == 2 and cache.stats.misses == 1 and cache.stats.stores == 1


def test_semantic_hit_needs_the_threshold():
    pipeline, stages, cache, _ = make(semantic_threshold=0.95)
    stages.vectors = {"Who left London?": vector(1, 0, 0, 0), "Who departed from London?": vector(1, 0.2, 0, 0),
                      "Who arrived in London?": vector(1, 0.6, 0, 0)}
    ask(pipeline, "Who left London?")
    # cos = 1 / sqrt(1.04) = 0.981: answered from the cache, after embedding only
    hit = final(ask(pipeline, "Who departed from London?"))
    assert hit.cache == "semantic" and hit.text == "Fogg left [1]." and generations(stages) == 1
    assert [c[0] for c in stages.calls[-1:]] == ["embed"]
    # cos = 0.857: a different question, answered anew
    assert final(ask(pipeline, "Who arrived in London?")).cache == "miss" and generations(stages) == 2
    assert cache.stats.semantic_hits == 1


def test_semantic_tier_off():
    pipeline, stages, _, _ = make(semantic=False)
    stages.vectors = {"a?": vector(1, 0, 0, 0), "b?": vector(1, 0, 0, 0)}
    ask(pipeline, "a?")
    assert final(ask(pipeline, "b?")).cache == "miss"


@pytest.mark.parametrize("change", [
    {"filter": parse_filter('{"source": "book.txt"}')}, {"top_k": 2}, {"template": "summarize"},
    {"system_prompt": "Answer in French."}, {"max_tokens": 12}, {"flow": "qa-checked"}, {"tenant": "alice"},
    {"mode": "dense"}, {"min_score": 0.1},
])
def test_every_option_that_shapes_an_answer_is_part_of_the_key(change):
    pipeline, _, _, _ = make()
    ask(pipeline, "Who left London?")
    assert final(ask(pipeline, "Who left London?", **change)).cache == "miss"
    assert final(ask(pipeline, "Who left London?", **change)).cache == "exact"


def test_tenants_share_only_when_configured():
    pipeline, _, _, _ = make()
    ask(pipeline, "Who left London?", tenant="alice")
    assert final(ask(pipeline, "Who left London?", tenant="bob")).cache == "miss"
    shared, _, _, _ = make(share_across_keys=True)
    ask(shared, "Who left London?", tenant="alice")
    assert final(ask(shared, "Who left London?", tenant="bob")).cache == "exact"


def test_cache_false_random_sampling_and_a_disabled_cache_bypass_it():
    pipeline, _, cache, _ = make()
    ask(pipeline, "Who left London?")
    assert final(ask(pipeline, "Who left London?", cache=False)).cache == "off"
    assert final(ask(pipeline, "Who left London?", temperature=0.7)).cache == "off"
    assert final(ask(pipeline, "Who left London?", temperature=0.7, seed=3)).cache == "miss"  # seeded: repeatable
    off, _, _, _ = make(enabled=False)
    ask(off, "Who left London?")
    assert final(ask(off, "Who left London?")).cache == "off"
    assert cache.stats.bypassed == 2


def test_a_new_version_invalidates_and_a_retrieval_from_another_version_is_not_cached():
    pipeline, stages, cache, current = make()
    ask(pipeline, "Who left London?")
    current["version"] = "v000002"  # published; the retriever still serves v000001 for a moment
    assert final(ask(pipeline, "Who left London?")).cache == "miss"
    assert cache.stats.invalidations == 1 and len(cache.store) == 0
    assert final(ask(pipeline, "Who left London?")).cache == "miss"  # v000001's answer was not cached as v000002's
    stages.version = "v000002"
    ask(pipeline, "Who left London?")
    assert final(ask(pipeline, "Who left London?")).cache == "exact"


def test_history_is_part_of_the_key_for_flows_that_read_it():
    pipeline, _, _, _ = make()
    one = (Turn("user", "Tell me about Fogg."), Turn("assistant", "He is English."))
    two = (Turn("user", "Tell me about Aouda."), Turn("assistant", "She is from India."))
    ask(pipeline, "Where does he live?", history=one, flow="llm")
    assert final(ask(pipeline, "Where does he live?", history=one, flow="llm")).cache == "exact"
    assert final(ask(pipeline, "Where does he live?", history=two, flow="llm")).cache == "miss"
    # rag ignores history: so does its key
    ask(pipeline, "Who left London?", history=one)
    assert final(ask(pipeline, "Who left London?", history=two)).cache == "exact"


def test_abstentions_failures_and_cancellations_are_not_cached():
    pipeline, stages, _, _ = make()
    assert final(ask(pipeline, "Hi", min_score=0.95)).finish_reason == ABSTAINED
    assert final(ask(pipeline, "Hi", min_score=0.95)).cache == "miss"
    stages.fail_at = 1
    assert isinstance(ask(pipeline, "Who left London?", stream=True)[-1], FailedEvent)
    stages.fail_at = None
    assert final(ask(pipeline, "Who left London?")).cache == "miss"


def test_a_failing_store_never_fails_a_request():
    class Broken(MemoryStore):
        async def get(self, key):
            raise ConnectionError("redis is down")

        async def put(self, *args):
            raise ConnectionError("redis is down")

    pipeline, _, cache, _ = make(store=Broken(10, 2**20))
    for _ in range(2):
        assert final(ask(pipeline, "Who left London?")).text == "Fogg left [1]."
    assert cache.stats.errors == 4 and cache.stats.stores == 0


def test_memory_store_is_a_bounded_lru():
    async def run():
        store = MemoryStore(max_entries=2, max_bytes=100, semantic_max_entries=8)
        assert await store.put("a", b"x" * 10, "s", "v1", vector(1, 0, 0, 0)) == 0
        await store.put("b", b"x" * 10, "s", "v1", vector(0, 1, 0, 0))
        await store.get("a")  # a is now the most recent
        assert await store.put("c", b"x" * 10, "s", "v1", None) == 1
        assert await store.get("b") is None and await store.get("a") is not None
        assert (await store.nearest("s", vector(0, 1, 0, 0))).key == "a"  # b's vector left with it
        assert await store.put("d", b"x" * 95, "s", "v1", None) == 2  # the byte bound
        assert len(store) == 1 and store.nbytes == 95
        assert await store.put("e", b"x" * 101, "s", "v1", None) == 0 and await store.get("e") is None
        await store.put("f", b"y", "", "", None)  # an answer that read no knowledge base
        assert await store.keep_version("v2") == 1 and await store.get("f") == b"y"
    asyncio.run(run())


def test_cached_answers_of_another_format_are_misses():
    answer = CachedAnswer("t", "stop", "[]", "[]", "q", 1.0)
    assert CachedAnswer.from_bytes(answer.to_bytes()) == answer
    assert CachedAnswer.from_bytes(b'{"format": 0, "text": "t"}') is None
    assert CachedAnswer.from_bytes(b"\xff") is None


def test_the_fingerprint_follows_the_settings():
    changed = dataclasses.replace(SETTINGS.generator, max_tokens_default=12)
    assert settings_fingerprint({"generator": SETTINGS.generator}) != settings_fingerprint({"generator": changed})


def test_request_parameters_of_the_cache_are_validated():
    raw = {"cache": "no"}
    with pytest.raises(InvalidInput, match="cache must be true or false"):
        RagParams.from_parameters(raw, SETTINGS.rag, SETTINGS.retriever)
    with pytest.raises(InvalidInput, match="tritonrag_cache_tenant must be a string"):
        RagParams.from_parameters({"tritonrag_cache_tenant": 3}, SETTINGS.rag, SETTINGS.retriever)
    params = RagParams.from_parameters({"cache": False, "tritonrag_cache_tenant": "alice"}, SETTINGS.rag,
                                       SETTINGS.retriever)
    assert params.cache is False and params.tenant == "alice"


@pytest.fixture(scope="module")
def redis_url():
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it from Debian)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


def test_redis_store_is_shared_by_replicas(redis_url):
    async def run():
        prefix = f"test:{time.time_ns()}"
        one, two = (RedisStore(redis_url, prefix, ttl_s=60, semantic_max_entries=3) for _ in range(2))
        await one.put("k1", b"answer one", "scope", "v1", vector(1, 0, 0, 0))
        assert await two.get("k1") == b"answer one"
        assert (await two.nearest("scope", vector(1, 0.1, 0, 0))).key == "k1"
        for i in range(2, 6):  # the semantic list keeps the newest 3
            await two.put(f"k{i}", b"x", "scope", "v1", vector(0, 1, i, 0))
        nearest = await one.nearest("scope", vector(1, 0, 0, 0))
        assert nearest.key != "k1" and len(one) == 3
        assert await one.nearest("other", vector(1, 0, 0, 0)) is None
        assert await one.clear() >= 5 and await two.get("k1") is None
        await one.close()
        await two.close()
    asyncio.run(run())


def test_pipeline_on_redis_shares_answers_between_two_pipelines(redis_url):
    prefix = f"test:{time.time_ns()}"
    first, _, _, _ = make(store=RedisStore(redis_url, prefix, 60))
    second, stages, _, _ = make(store=RedisStore(redis_url, prefix, 60))
    stages.vectors = {"Who left London?": vector(1, 0, 0, 0), "Who departed from London?": vector(1, 0.1, 0, 0)}
    first.stages.vectors = stages.vectors
    ask(first, "Who left London?")
    assert final(ask(second, "Who left London?")).cache == "exact"
    assert final(ask(second, "Who departed from London?")).cache == "semantic"
    assert generations(stages) == 0


def test_unreachable_redis_serves_uncached():
    pipeline, _, cache, _ = make(store=RedisStore("redis://127.0.0.1:1/0", "x", 60, timeout_s=0.2))
    assert final(ask(pipeline, "Who left London?")).text == "Fogg left [1]."
    assert cache.stats.errors >= 1


def test_retrieval_carries_its_version():
    assert Retrieval([Passage(1, 1.0, "t", {})], {}, "v000003").version == "v000003"


def test_threshold_tables_count_paraphrase_and_wrong_hits():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from cache_threshold import similarity_tables

    groups = [["a", "a2"], ["b", "b2"]]
    vectors = np.concatenate([vector(1, 0, 0, 0), vector(1, 0.1, 0, 0), vector(0.9, 0.45, 0, 0), vector(0, 1, 0, 0)])
    rows = {r["threshold"]: r for r in similarity_tables(groups, vectors, (0.5, 0.99))}
    assert rows[0.99] == {"threshold": 0.99, "paraphrase_hits": 0.5, "wrong_hits": 0.0}
    assert rows[0.5]["wrong_hits"] == 1.0  # a (and b) have a text of the other group above 0.5


class SlowStream:
    """A generation that takes a while (so concurrent requests overlap), or fails (after ``fail_after`` chunks), or
    waits for ``gate`` after its first chunk."""

    def __init__(self, chunks, fail=False, fail_after=0, gate=None):
        self.chunks, self.fail, self.fail_after, self.gate = chunks, fail, fail_after, gate

    async def __aiter__(self):
        for i, chunk in enumerate(self.chunks):
            await asyncio.sleep(0.02)
            if self.fail and i >= self.fail_after:
                raise ConnectionError("engine died")
            if self.gate is not None and i == 1:
                await asyncio.wait_for(self.gate.wait(), 5)
            yield chunk

    async def cancel(self):
        pass

    async def close(self):
        pass


def slow_generation(stages, fail_first=False, **options):
    """Make ``stages`` generate slowly (SlowStream with ``options``; ``fail_first``: the first generation fails);
    returns the prompts it is asked to generate for."""
    starts = []

    async def start(prompt, sampling, stream, generator=None):
        starts.append(prompt)
        return SlowStream(CHUNKS, **({"fail": True} if fail_first and len(starts) == 1 else {}), **options)
    stages.start = start
    return starts


def ask_together(pipeline, questions):
    async def one(query):
        return [event async for event in pipeline.run(RagRequest(query, RagParams()))]

    async def run():
        return await asyncio.gather(*(one(q) for q in questions))
    return asyncio.run(run())


def test_concurrent_requests_for_one_answer_generate_it_once():
    pipeline, stages, cache, _ = make()
    starts = slow_generation(stages)
    answers = ask_together(pipeline, ["Who left London?", "who left london", "Who left London?"])
    assert len(starts) == 1
    assert sorted(final(a).cache for a in answers) == ["exact", "exact", "miss"]
    assert {final(a).text for a in answers} == {"Fogg left [1]."}
    assert cache.stats.coalesced == 2 and cache.stats.misses == 1 and not cache._generating


def test_when_the_first_request_fails_the_waiting_ones_answer_themselves():
    pipeline, stages, cache, _ = make()
    starts = slow_generation(stages, fail_first=True)
    answers = ask_together(pipeline, ["Who left London?", "Who left London?"])
    assert isinstance(answers[0][-1], FailedEvent)
    assert final(answers[1]).text == "Fogg left [1]." and final(answers[1]).cache == "miss"
    assert len(starts) == 2 and not cache._generating


def test_coalescing_off():
    pipeline, stages, _, _ = make(coalesce=False)
    starts = slow_generation(stages)
    ask_together(pipeline, ["Who left London?"] * 3)
    assert len(starts) == 3


def test_a_streamed_follower_gets_each_piece_as_the_first_request_generates_it():
    """A request for a question being answered follows that answer live: the text sent so far at once, then each
    piece, long before the answer ends (it does not wait for the whole answer)."""
    pipeline, stages, cache, _ = make()
    gate = asyncio.Event()
    starts = slow_generation(stages, gate=gate)

    async def run():
        async def stream(query):
            return pipeline.run(RagRequest(query, RagParams(stream=True))).__aiter__()
        first = await stream("Who left London?")
        first_events = [await first.__anext__(), await first.__anext__()]  # sources, "Fogg " (then it waits)
        second = await stream("who left london")
        second_events = [await second.__anext__(), await second.__anext__()]  # before the first request ends
        gate.set()
        first_events += [event async for event in first]
        second_events += [event async for event in second]
        return first_events, second_events

    first, second = asyncio.run(run())
    assert len(starts) == 1
    assert isinstance(second[0], SourcesEvent) and second[0].sources == first[0].sources
    assert isinstance(second[1], TextEvent) and second[1] == first[1]  # the first piece, before the answer ended
    assert "".join(e.text for e in second if isinstance(e, TextEvent)) == "Fogg left [1]."
    assert [type(e) for e in second].count(SourcesEvent) == 1
    assert final(second).cache == "exact" and final(first).cache == "miss"
    assert final(second).citations == final(first).citations
    assert cache.stats.coalesced == 1 and not cache._generating


def test_a_follower_already_sent_text_fails_as_unavailable_when_the_first_request_fails():
    pipeline, stages, cache, _ = make()
    gate = asyncio.Event()
    slow_generation(stages, fail=True, fail_after=1, gate=gate)

    async def run():
        first = pipeline.run(RagRequest("Who left London?", RagParams(stream=True))).__aiter__()
        head = [await first.__anext__(), await first.__anext__()]  # sources and the first piece were sent
        second = pipeline.run(RagRequest("Who left London?", RagParams(stream=True))).__aiter__()
        followed = [await second.__anext__(), await second.__anext__()]
        gate.set()
        return head + [e async for e in first], followed + [e async for e in second]

    first, second = asyncio.run(run())
    assert isinstance(first[-1], FailedEvent)
    assert isinstance(second[1], TextEvent) and second[1] == first[1]
    assert isinstance(second[-1], FailedEvent) and second[-1].code.name == "UNAVAILABLE"
    assert "retry" in second[-1].message and not cache._generating


def test_a_streamed_follower_answers_itself_when_the_first_fails_before_any_text():
    pipeline, stages, cache, _ = make()
    starts = slow_generation(stages, fail_first=True)

    async def run():
        first = pipeline.run(RagRequest("Who left London?", RagParams(stream=True))).__aiter__()
        head = [await first.__anext__()]  # its sources: it is answering now
        second = pipeline.run(RagRequest("Who left London?", RagParams(stream=True))).__aiter__()
        followed = [await second.__anext__()]  # the sources it follows
        return head + [e async for e in first], followed + [e async for e in second]

    first, second = asyncio.run(run())
    assert isinstance(first[-1], FailedEvent)
    assert isinstance(second[0], SourcesEvent) and second[0] == first[0]
    assert final(second).cache == "miss" and len(starts) == 2 and cache.stats.coalesced == 0
    assert [type(e) for e in second].count(SourcesEvent) == 1  # the sources it was sent while following, once
    assert "".join(e.text for e in second if isinstance(e, TextEvent)) == "Fogg left [1]."
