"""The RAG pipeline driven with in-process fake stages: streaming order, sources first, cancellation, stage errors
before and during the stream, flows, and what reaches each stage."""

import asyncio
import json
from dataclasses import dataclass, replace

import numpy as np
import pytest

from tritonrag.errors import InvalidInput
from tritonrag.kb.filters import parse_filter
from tritonrag.pipeline.errors import StageError
from tritonrag.pipeline.events import (
    ABSTAINED,
    CancelledEvent,
    ErrorCode,
    FailedEvent,
    FinalEvent,
    SourcesEvent,
    TextEvent,
)
from tritonrag.pipeline.flow import CancelWatch, Flow, RagPipeline, standard_flows
from tritonrag.pipeline.request import RagParams
from tritonrag.pipeline.stages import RetrievalOptions
from tritonrag.pipeline.steps import BuildPrompt, EmbedQuery, Retrieve, standalone_question
from tritonrag.pipeline.types import GenerationChunk, Passage, Prompt, RagRequest, Retrieval, Usage
from tritonrag.prompts.history import Turn
from tritonrag.settings import load_settings

PASSAGES = [Passage(7, 0.9, "Fogg left London.", {"source": "book.txt", "title": "Ch 1"}),
            Passage(3, 0.5, "He won the wager.", {"source": "book.txt", "title": "Ch 37"})]


class FakeStream:
    def __init__(self, chunks, fail_at=None):
        self.chunks, self.fail_at = chunks, fail_at
        self.sent = 0
        self.cancelled = self.closed = False

    async def __aiter__(self):
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise StageError("generator", "engine died", ErrorCode.INTERNAL)
            self.sent += 1
            yield chunk

    async def cancel(self):
        self.cancelled = True

    async def close(self):
        self.closed = True


@dataclass
class FakeStages:
    """One object as all four stages; records what each was asked."""

    passages: list
    chunks: list
    fail: dict
    fail_at: int | None = None

    verdicts: list = None  # the critic's answers, in order (then: supported)
    answers: list = None  # chunk lists of successive answers (then: chunks)
    rerank_scores: list = None  # the reranker's score of each retrieved passage (then: reversed order)
    rewrites: list = None  # the condense generations' texts, in order (then: "Where was Phileas Fogg born?")

    def __post_init__(self):
        self.embedder = self.retriever = self.reranker = self.prompt_builder = self.generator = self
        self.calls, self.stream, self.options, self.generators = [], None, [], []
        self.verdicts, self.answers = list(self.verdicts or []), list(self.answers or [])
        self.rewrites = list(self.rewrites or [])

    def _maybe_fail(self, stage):
        if stage in self.fail:
            raise self.fail[stage]

    async def embed(self, text):
        self.calls.append(("embed", text))
        self._maybe_fail("embed")
        return np.ones((1, 4), np.float32)

    async def retrieve(self, embedding, query, top_k, flt, options=None):
        self.calls.append(("retrieve", top_k, flt))
        self.retrieval_options = options
        self._maybe_fail("retrieve")
        return Retrieval(self.passages, {"dense_ms": 1.5, "sparse_ms": 2.5})

    async def rerank(self, query, texts):
        self.calls.append(("rerank", query, list(texts)))
        self._maybe_fail("rerank")
        return list(self.rerank_scores) if self.rerank_scores else [float(i) for i in range(len(texts))]

    async def build(self, query, passages, options):
        self.calls.append(("build", query, [p.chunk_id for p in passages], options.template))
        self.options.append(options)
        self._maybe_fail("build")
        return Prompt(f"Q: {query} [{options.template}]", ("\n\n",), len(passages),
                      options.template in ("extract", "critic"))

    async def start(self, prompt, sampling, stream, generator=None):
        self.calls.append(("generate", prompt, dict(sampling), stream))
        self.generators.append(generator)
        self._maybe_fail("generate")
        if "critic" in prompt.text:
            verdict = self.verdicts.pop(0) if self.verdicts else True
            chunks = [GenerationChunk(json.dumps({"supported": verdict}), "stop")]
        elif "[condense]" in prompt.text:
            chunks = [GenerationChunk(self.rewrites.pop(0) if self.rewrites else "Where was Phileas Fogg born?",
                                      "stop")]
        else:
            chunks = self.answers.pop(0) if self.answers else self.chunks
        # every generation reports its tokens on its last chunk: 10 of prompt, one a chunk
        chunks = [*chunks[:-1], replace(chunks[-1], usage=Usage(10, len(chunks)))] if chunks else chunks
        self.stream = FakeStream(chunks, None if "critic" in prompt.text or "[condense]" in prompt.text
                                 else self.fail_at)
        return self.stream


CHUNKS = [GenerationChunk("Phileas "), GenerationChunk("Fogg"), GenerationChunk("", "stop")]


def stages(passages=PASSAGES, chunks=CHUNKS, fail=None, fail_at=None, verdicts=None, answers=None,
           rerank_scores=None, rewrites=None):
    return FakeStages(list(passages), list(chunks), fail or {}, fail_at, verdicts, answers, rerank_scores, rewrites)


def request(stream=True, query="Who is Fogg?", history=(), **params):
    return RagRequest(query, RagParams(stream=stream, **params), tuple(history))


def run(pipeline, req, is_cancelled=lambda: False, **kwargs):
    async def collect():
        return [event async for event in pipeline.run(req, is_cancelled, **kwargs)]

    return asyncio.run(collect())


def test_stream_sends_sources_first_then_text_then_final():
    events = run(RagPipeline(stages()), request())
    assert isinstance(events[0], SourcesEvent)
    assert "".join(e.text for e in events[1:-1]) == "Phileas Fogg"
    assert all(isinstance(e, TextEvent) for e in events[1:-1])
    assert events[-1] == FinalEvent("", "stop", None, "[]")
    sources = json.loads(events[0].sources)
    assert [s["chunk_id"] for s in sources] == [7, 3] and sources[0]["title"] == "Ch 1"
    assert sources[0]["snippet"] == "Fogg left London."


def test_without_stream_one_final_event_carries_text_and_sources():
    events = run(RagPipeline(stages()), request(stream=False))
    assert len(events) == 1
    final = events[0]
    assert (final.text, final.finish_reason) == ("Phileas Fogg", "stop")
    assert [s["chunk_id"] for s in json.loads(final.sources)] == [7, 3]


def test_finish_reason_comes_from_the_last_chunk():
    chunks = [GenerationChunk("a"), GenerationChunk("b", "length")]
    assert run(RagPipeline(stages(chunks=chunks)), request())[-1].finish_reason == "length"


def test_stages_get_the_question_and_only_what_the_request_set():
    fake = stages()
    run(RagPipeline(fake), request(stream=False))
    assert fake.calls[0] == ("embed", "Who is Fogg?")
    assert fake.calls[1] == ("retrieve", None, None)  # the retriever's default top_k
    assert fake.calls[2] == ("build", "Who is Fogg?", [7, 3], None)  # the prompt builder's default template
    assert fake.calls[3][2:] == ({}, False)  # the generator's default sampling
    flt = parse_filter({"source": "book.txt"})
    fake = stages()
    run(RagPipeline(fake), request(top_k=2, template="summarize", max_tokens=5, temperature=0.5, filter=flt))
    assert fake.calls[1] == ("retrieve", 2, flt)
    assert fake.calls[2][3] == "summarize"
    assert fake.calls[3][2:] == ({"max_tokens": 5, "temperature": 0.5}, True)


def test_cancellation_mid_stream_stops_the_generator():
    fake = stages(chunks=[GenerationChunk(str(i)) for i in range(10)] + [GenerationChunk("", "stop")])
    answers = iter([False, False, True])  # the client goes away after two pieces
    pipeline = RagPipeline(fake, cancel_check_s=0.0)
    events = run(pipeline, request(), lambda: next(answers, True))
    assert isinstance(events[0], SourcesEvent)
    assert [e.text for e in events if isinstance(e, TextEvent)] == ["0", "1"]
    assert events[-1] == CancelledEvent()
    assert fake.stream.cancelled and fake.stream.closed  # told to stop, then read to its end
    assert fake.stream.sent == 3


def test_a_stage_error_before_the_stream_keeps_its_code():
    fake = stages(fail={"retrieve": StageError("retriever", "top_k must be between 1 and 100",
                                               ErrorCode.INVALID_ARG)})
    events = run(RagPipeline(fake), request())
    assert events == [FailedEvent(ErrorCode.INVALID_ARG, "retriever: top_k must be between 1 and 100")]
    assert [c[0] for c in fake.calls] == ["embed", "retrieve"]  # nothing generated


def test_an_unexpected_error_is_internal_and_named():
    events = run(RagPipeline(stages(fail={"embed": RuntimeError("CUDA out of memory")})), request())
    assert events == [FailedEvent(ErrorCode.INTERNAL, "RuntimeError: CUDA out of memory")]


def test_a_generator_error_mid_stream_stops_the_stream_and_fails_the_request():
    fake = stages(fail_at=1)
    events = run(RagPipeline(fake), request())
    assert isinstance(events[0], SourcesEvent) and events[1] == TextEvent("Phileas")
    assert events[-1] == FailedEvent(ErrorCode.INTERNAL, "generator: engine died")
    assert fake.stream.cancelled and fake.stream.closed


def test_an_error_when_starting_generation_fails_the_request():
    events = run(RagPipeline(stages(fail={"generate": InvalidInput("prompt has 5000 tokens")})), request())
    assert isinstance(events[0], SourcesEvent)
    assert events[-1] == FailedEvent(ErrorCode.INVALID_ARG, "prompt has 5000 tokens")


def test_an_error_after_the_client_left_is_a_cancellation():
    events = run(RagPipeline(stages(fail={"retrieve": RuntimeError("x")})), request(), lambda: True)
    assert events == [CancelledEvent()]


def test_nothing_retrieved_is_a_clear_invalid_argument():
    events = run(RagPipeline(stages(passages=[])), request())
    assert events == [FailedEvent(ErrorCode.INVALID_ARG, "the knowledge base is empty: ingest documents first")]
    flt = parse_filter({"source": "none.txt"})
    (failed,) = run(RagPipeline(stages(passages=[])), request(filter=flt))
    assert failed.code is ErrorCode.INVALID_ARG and "matches no document" in failed.message


def test_a_flow_composes_steps_without_touching_the_adapter():
    @dataclass(frozen=True)
    class Shout:
        name: str = "shout"

        async def run(self, state):
            state.query = state.query.upper()

    fake = stages()
    flows = standard_flows(fake)
    flows["loud"] = Flow("loud", (Shout(), EmbedQuery(fake), Retrieve(fake), BuildPrompt(fake)))
    pipeline = RagPipeline(fake, flows)
    run(pipeline, request(stream=False), flow="loud")
    assert fake.calls[0] == ("embed", "WHO IS FOGG?")
    (failed,) = run(pipeline, request(), flow="nope")
    assert failed.code is ErrorCode.INVALID_ARG and "loud, qa-checked, rag" in failed.message


def test_request_parsing():
    settings = load_settings()
    parse = RagRequest.parse
    with pytest.raises(InvalidInput, match="empty"):
        parse("  ", {}, None, settings.rag, settings.retriever)
    assert parse("q", {"stream": True}, None, settings.rag, settings.retriever).stream is True
    assert parse("q", {"stream": True}, False, settings.rag, settings.retriever).stream is False  # the input wins
    with pytest.raises(InvalidInput, match="unknown parameter"):
        parse("q", {"topk": 3}, None, settings.rag, settings.retriever)


def test_cancel_watch_asks_at_most_every_interval():
    asked, now = [], [0.0]
    watch = CancelWatch(lambda: asked.append(now[0]) or len(asked) > 2, 0.05, clock=lambda: now[0])
    for t in (0.0, 0.01, 0.02, 0.06, 0.07, 0.2):
        now[0] = t
        watch.check()
    assert asked == [0.0, 0.06, 0.2] and watch.cancelled
    now[0] = 9.0
    assert watch.check() and len(asked) == 3  # a yes is remembered, not asked again


def test_weak_evidence_abstains_without_generating():
    weak = [Passage(9, 0.21, "Breakfast at the Reform Club.", {"source": "book.txt", "title": "Ch 1"})]
    fake = stages(passages=weak)
    events = run(RagPipeline(fake), request(min_score=0.3))
    assert [c[0] for c in fake.calls] == ["embed", "retrieve"]  # no prompt built, nothing generated
    assert isinstance(events[0], SourcesEvent) and json.loads(events[0].sources)[0]["chunk_id"] == 9
    assert events[1].text.startswith("The documents do not contain an answer") and "0.21" in events[1].text
    assert events[-1] == FinalEvent("", ABSTAINED, citations="[]")
    (final,) = run(RagPipeline(stages(passages=weak)), request(stream=False, min_score=0.3))
    assert final.finish_reason == ABSTAINED and "under the threshold 0.30" in final.text and final.sources


def test_evidence_at_or_over_the_threshold_is_answered_and_zero_disables():
    best_is_0_9 = run(RagPipeline(stages()), request(min_score=0.9))[-1]
    assert best_is_0_9 == FinalEvent("", "stop", citations="[]")
    weak = [Passage(9, -0.2, "x", {})]
    assert run(RagPipeline(stages(passages=weak)), request(min_score=0.0))[-1].finish_reason == "stop"


def test_min_score_defaults_to_the_settings_and_is_validated():
    settings = load_settings()
    parse = RagRequest.parse
    assert parse("q", {}, None, settings.rag, settings.retriever).params.min_score == settings.rag.abstain_below_score
    assert parse("q", {"min_score": "0.5"}, None, settings.rag, settings.retriever).params.min_score == 0.5
    for bad in (2, "high", True):
        with pytest.raises(InvalidInput, match="min_score"):
            parse("q", {"min_score": bad}, None, settings.rag, settings.retriever)


# --- citations ---------------------------------------------------------------------------------------------------

def test_valid_citations_are_listed_and_invalid_ones_dropped_while_streaming():
    chunks = [GenerationChunk("Fogg left [1]"), GenerationChunk(" and won [", None), GenerationChunk("2, 5]"),
              GenerationChunk(" not [9]."), GenerationChunk("", "stop")]
    events = run(RagPipeline(stages(chunks=chunks)), request())
    text = "".join(e.text for e in events if isinstance(e, TextEvent))
    assert text == "Fogg left [1] and won [2] not."
    cited = json.loads(events[-1].citations)
    assert [(c["n"], c["chunk_id"], c["title"]) for c in cited] == [(1, 7, "Ch 1"), (2, 3, "Ch 37")]


def test_without_stream_the_final_answer_has_invalid_citations_removed():
    chunks = [GenerationChunk("He won [2][3]."), GenerationChunk("", "stop")]
    (final,) = run(RagPipeline(stages(chunks=chunks)), request(stream=False))
    assert final.text == "He won [2]."
    assert [c["n"] for c in json.loads(final.citations)] == [2]


def test_a_json_answer_is_not_filtered_for_citations_and_asks_the_generator_for_json():
    chunks = [GenerationChunk('{"ids": [1, 7]}'), GenerationChunk("", "stop")]
    schema = {"type": "object", "properties": {"ids": {"type": "array"}}}
    fake = stages(chunks=chunks)
    (final,) = run(RagPipeline(fake), request(stream=False, json_schema=schema))
    assert final.text == '{"ids": [1, 7]}' and final.citations is None
    assert fake.calls[-1][2]["json_schema"] == schema
    assert fake.options[0].schema == schema  # the prompt builder shows the schema to the model


def test_a_json_template_without_a_schema_asks_for_any_json_object():
    fake = stages(chunks=[GenerationChunk('{"a": 1}', "stop")])
    run(RagPipeline(fake), request(stream=False, template="extract"))
    assert fake.calls[-1][2] == {"json_object": True}


# --- the qa-checked flow -------------------------------------------------------------------------------------------

def test_qa_checked_sends_a_supported_answer_once_checked():
    fake = stages(verdicts=[True])
    events = run(RagPipeline(fake), request(flow="qa-checked"))
    assert isinstance(events[0], SourcesEvent)
    assert [e.text for e in events if isinstance(e, TextEvent)] == ["Phileas Fogg"]  # the checked answer at once
    assert events[-1].finish_reason == "stop"
    templates = [o.template for o in fake.options]
    assert templates == [None, "critic"]
    critic = fake.options[1]
    assert critic.answer == "Phileas Fogg" and critic.generator is None
    generate = [c for c in fake.calls if c[0] == "generate"]
    assert generate[1][2]["json_schema"]["properties"] == {"supported": {"type": "boolean"}}


def test_qa_checked_answers_again_strictly_when_the_critic_rejects():
    answers = [[GenerationChunk("He flew to the Moon [1].", "stop")], [GenerationChunk("He left London [1].", "stop")]]
    fake = stages(verdicts=[False, True], answers=answers)
    (final,) = run(RagPipeline(fake), request(stream=False, flow="qa-checked"))
    assert final.text == "He left London [1]." and final.finish_reason == "stop"
    assert [o.template for o in fake.options] == [None, "critic", "qa_strict", "critic"]


def test_qa_checked_abstains_when_both_answers_are_unsupported():
    fake = stages(verdicts=[False, False])
    (final,) = run(RagPipeline(fake), request(stream=False, flow="qa-checked"))
    assert final.finish_reason == ABSTAINED and "unsupported" in final.text and final.citations == "[]"


def test_the_critic_runs_on_the_generator_the_flow_names():
    fake = stages(verdicts=[True])
    pipeline = RagPipeline(fake, standard_flows(fake, critic_generator="generator_small"))
    run(pipeline, request(stream=False, flow="qa-checked"))
    assert fake.generators == [None, "generator_small"]
    assert fake.options[1].generator == "generator_small"


def test_the_request_parameter_flow_picks_the_flow():
    (failed,) = run(RagPipeline(stages()), request(flow="no-such-flow"))
    assert failed.code is ErrorCode.INVALID_ARG and "qa-checked" in failed.message


# --- retrieval options, reranking, timing ------------------------------------------------------------------------

THREE = [Passage(1, 0.03, "a", {}, 0.40, {"dense": {"rank": 1, "score": 0.4}}),
         Passage(2, 0.02, "b", {}, 0.35, {"sparse": {"rank": 1, "score": 9.0}}),
         Passage(3, 0.01, "c", {}, 0.30, {"dense": {"rank": 2, "score": 0.3}})]


def test_retrieval_options_reach_the_retriever_and_sources_say_where_each_passage_was_found():
    fake = stages(passages=THREE)
    (final,) = run(RagPipeline(fake), request(stream=False, mode="sparse", candidates=30, fusion="weighted"))
    assert fake.retrieval_options == RetrievalOptions("sparse", 30, "weighted")
    sources = json.loads(final.sources)
    assert sources[1]["retrieval"] == {"sparse": {"rank": 1, "score": 9.0}, "similarity": 0.35}


def test_rerank_scores_the_candidates_and_keeps_the_best_top_k():
    fake = stages(passages=THREE, rerank_scores=[0.1, 0.9, 0.5])
    pipeline = RagPipeline(fake, standard_flows(fake, rerank_fusion="none"))
    (final,) = run(pipeline, request(stream=False, rerank=True, rerank_candidates=3, keep=2))
    assert fake.calls[1] == ("retrieve", 3, None)  # the reranker's candidates, not top_k
    assert fake.calls[2] == ("rerank", "Who is Fogg?", ["a", "b", "c"])
    sources = json.loads(final.sources)
    assert [s["chunk_id"] for s in sources] == [2, 3]
    assert sources[0]["score"] == 0.9 and sources[0]["retrieval"]["rerank"] == {"rank": 1, "score": 0.9}
    assert sources[0]["retrieval"]["retrieval_rank"] == 2


def test_rerank_with_rrf_fuses_the_retrieval_rank_and_the_reranker_rank():
    fake = stages(passages=THREE, rerank_scores=[0.5, 0.9, 0.1])  # reranker: b, a, c; retrieval: a, b, c
    (final,) = run(RagPipeline(fake, standard_flows(fake, rerank_fusion="rrf")),
                   request(stream=False, rerank=True, rerank_candidates=3, keep=3))
    ids = [s["chunk_id"] for s in json.loads(final.sources)]
    assert ids[2] == 3 and sorted(ids[:2]) == [1, 2]  # a and b tie on fused rank sums; c last on both


def test_no_rerank_asks_the_reranker_nothing():
    fake = stages()
    run(RagPipeline(fake), request(stream=False))
    assert "rerank" not in [c[0] for c in fake.calls]


def test_weak_evidence_compares_the_similarity_not_a_fused_score():
    fake = stages(passages=THREE)  # fused scores ~0.03, similarities 0.30-0.40
    assert run(RagPipeline(fake), request(stream=False, min_score=0.3))[-1].finish_reason == "stop"
    (final,) = run(RagPipeline(stages(passages=THREE)), request(stream=False, min_score=0.45))
    assert final.finish_reason == ABSTAINED and "similarity with it is 0.40" in final.text


def test_the_final_event_carries_each_steps_time():
    (final,) = run(RagPipeline(stages(passages=THREE)), request(stream=False, rerank=True, rerank_candidates=3,
                                                                 keep=2))
    timing = json.loads(final.timing)
    for step in ("embed_ms", "retrieve_ms", "dense_ms", "sparse_ms", "rerank_ms", "prompt_ms", "first_token_ms",
                 "generate_ms", "total_ms"):
        assert timing[step] >= 0, step
    assert timing["total_ms"] >= timing["generate_ms"]


def test_rerank_sends_at_most_the_rerankers_limit_of_each_passage():
    long = [Passage(1, 0.5, "x" * 50, {}, 0.5), Passage(2, 0.4, "short", {}, 0.4)]
    fake = stages(passages=long)
    run(RagPipeline(fake, standard_flows(fake, rerank_max_chars=10)),
        request(stream=False, rerank=True, rerank_candidates=2, keep=2))
    assert fake.calls[2] == ("rerank", "Who is Fogg?", ["x" * 10, "short"])


# --- conversations: rag-chat, llm; token usage ----------------------------------------------------------------------

HISTORY = (Turn("user", "Who is Phileas Fogg?"), Turn("assistant", "An English gentleman of the Reform Club [1]."))


def test_rag_chat_condenses_the_question_then_searches_and_answers_the_standalone_one():
    fake = stages()
    (final,) = run(RagPipeline(fake), request(stream=False, query="Where was he born?", history=HISTORY,
                                              flow="rag-chat"))
    condense, answer = fake.options
    assert condense.template == "condense" and condense.history == HISTORY
    assert fake.calls[0] == ("build", "Where was he born?", [], "condense")
    assert fake.calls[1][2:] == ({"max_tokens": 64, "temperature": 0.0}, False)  # greedy, short, not streamed
    assert fake.calls[2] == ("embed", "Where was Phileas Fogg born?")
    assert fake.calls[4] == ("build", "Where was Phileas Fogg born?", [7, 3], None)
    assert answer.history == ()  # the answer's prompt is single-turn: the question stands alone now
    assert final.query == "Where was Phileas Fogg born?" and final.text == "Phileas Fogg"
    timing = json.loads(final.timing)
    assert timing["condense_ms"] >= 0 and timing["total_ms"] >= timing["condense_ms"]


def test_rag_chat_without_history_is_rag():
    chat, plain = stages(), stages()
    (final,) = run(RagPipeline(chat), request(stream=False, flow="rag-chat"))
    run(RagPipeline(plain), request(stream=False))
    assert chat.calls == plain.calls and final.query == "Who is Fogg?"
    assert "condense_ms" not in json.loads(final.timing)


def test_rag_chat_condense_max_tokens_comes_from_the_flows():
    fake = stages()
    run(RagPipeline(fake, standard_flows(fake, condense_max_tokens=9)),
        request(stream=False, history=HISTORY, flow="rag-chat"))
    assert fake.calls[1][2] == {"max_tokens": 9, "temperature": 0.0}


@pytest.mark.parametrize(("rewrite", "expected"), [
    ("  Where was Phileas Fogg born?\n\nFollow-up question: ...", "Where was Phileas Fogg born?"),
    ('Standalone question: "Where was Phileas Fogg born?"', "Where was Phileas Fogg born?"),
    ("", "Where was he born?"),
    ("\n  \n", "Where was he born?"),
    ("Where " + "very " * 60 + "born?", "Where was he born?"),  # absurdly long
    ("Phileas Fogg is an English gentleman.", "Where was he born?"),  # an answer, not a question
])
def test_a_condensed_question_falls_back_to_the_original_when_the_rewrite_is_unusable(rewrite, expected):
    assert standalone_question(rewrite, "Where was he born?") == expected


def test_rag_chat_searches_with_the_original_question_when_the_rewrite_is_empty():
    fake = stages(rewrites=[""])
    (final,) = run(RagPipeline(fake), request(stream=False, query="Where was he born?", history=HISTORY,
                                              flow="rag-chat"))
    assert fake.calls[2] == ("embed", "Where was he born?") and final.query == "Where was he born?"


def test_rag_and_qa_checked_ignore_history():
    for flow in ("rag", "qa-checked"):
        fake = stages()
        run(RagPipeline(fake), request(stream=False, history=HISTORY, flow=flow))
        assert all(o.history == () and o.template != "condense" for o in fake.options), flow
        assert fake.calls[0] == ("embed", "Who is Fogg?")


def test_llm_answers_from_the_conversation_without_retrieval_or_citation_filtering():
    chunks = [GenerationChunk("Lists look like [1, 2] "), GenerationChunk("and [9]."), GenerationChunk("", "stop")]
    fake = stages(chunks=chunks)
    events = run(RagPipeline(fake), request(history=HISTORY, flow="llm"))
    assert [c[0] for c in fake.calls] == ["build", "generate"]  # nothing embedded, retrieved or reranked
    assert fake.calls[0] == ("build", "Who is Fogg?", [], "chat")
    assert fake.options[0].history == HISTORY
    assert events[0] == SourcesEvent("[]")
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == "Lists look like [1, 2] and [9]."
    assert events[-1].citations == "[]" and events[-1].query == "Who is Fogg?"
    (final,) = run(RagPipeline(stages(chunks=chunks)), request(stream=False, flow="llm"))
    assert final.text == "Lists look like [1, 2] and [9]." and final.sources == "[]"


def test_llm_keeps_the_requests_template_and_system_prompt():
    fake = stages()
    run(RagPipeline(fake), request(stream=False, flow="llm", template="summarize", system_prompt="Be brief."))
    assert (fake.options[0].template, fake.options[0].system_prompt) == ("summarize", "Be brief.")


def test_unknown_flows_list_every_flow():
    (failed,) = run(RagPipeline(stages()), request(flow="chat"))
    assert failed == FailedEvent(ErrorCode.INVALID_ARG,
                                 "unknown flow 'chat'; available flows: llm, qa-checked, rag, rag-chat")


def usage(final):
    return json.loads(final.usage)


def test_usage_is_the_answers_tokens_streamed_or_not():
    for stream in (True, False):
        final = run(RagPipeline(stages()), request(stream=stream))[-1]
        assert usage(final) == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


def test_usage_sums_every_generation_of_a_request():
    (final,) = run(RagPipeline(stages()), request(stream=False, history=HISTORY, flow="rag-chat"))
    assert usage(final) == {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}  # condense + answer
    answers = [[GenerationChunk("He flew [1].", "stop")], [GenerationChunk("He left [1].", "stop")]]
    (final,) = run(RagPipeline(stages(verdicts=[False, False], answers=answers)),
                   request(stream=False, flow="qa-checked"))
    assert final.finish_reason == ABSTAINED
    assert usage(final) == {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}  # 2 answers, 2 critics


def test_an_abstention_costs_no_tokens():
    weak = [Passage(9, 0.21, "Breakfast at the Reform Club.", {})]
    for stream in (True, False):
        final = run(RagPipeline(stages(passages=weak)), request(stream=stream, min_score=0.3))[-1]
        assert final.finish_reason == ABSTAINED
        assert usage(final) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_a_generator_that_reports_no_tokens_counts_zero():
    fake = stages()
    pipeline = RagPipeline(fake)

    async def start(prompt, sampling, stream, generator=None):
        return FakeStream(list(CHUNKS))

    fake.start = start
    (final,) = run(pipeline, request(stream=False))
    assert usage(final)["total_tokens"] == 0


def test_request_parsing_reads_and_bounds_history():
    settings = load_settings()
    parse = RagRequest.parse
    turns = json.dumps([{"role": "user", "content": "Who is Fogg?"}, {"role": "assistant", "content": "A man."}])
    request_ = parse("Where?", {}, None, settings.rag, settings.retriever, turns)
    assert request_.history == (Turn("user", "Who is Fogg?"), Turn("assistant", "A man."))
    assert parse("q", {}, None, settings.rag, settings.retriever).history == ()
    assert parse("q", {}, None, settings.rag, settings.retriever, "").history == ()
    too_many = json.dumps([{"role": "user", "content": "x"}] * (settings.rag.max_history_messages + 1))
    with pytest.raises(InvalidInput, match=f"has 65 messages; the limit is {settings.rag.max_history_messages}"):
        parse("q", {}, None, settings.rag, settings.retriever, too_many)
    with pytest.raises(InvalidInput, match=r"history\[1\].role must be user or assistant, got 'tool'"):
        parse("q", {}, None, settings.rag, settings.retriever,
              json.dumps([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]))


def test_an_opening_citation_of_a_held_passage_is_shown_at_once():
    from tritonrag.pipeline.citations import CitationFilter

    def stream(pieces, passages=4):
        f = CitationFilter(passages)
        shown = [f.feed(p) for p in pieces]
        return shown, "".join(shown) + f.flush(), f.cited

    # the first token "[1" of an answer is shown before its "]" (a loaded engine may take seconds for it)
    shown, text, cited = stream(["[", "1", "]", " Fogg left."])
    assert shown[:2] == ["", "[1"] and text == "[1] Fogg left." and cited == [1]
    assert stream(["Fogg left [2", ", 9", "]."])[1:] == ("Fogg left [2].", [2])  # the rest is still filtered
    assert stream(["He won [3", ", 1]"])[1:] == ("He won [3, 1]", [3, 1])
    assert stream(["He won [", "9", "]."])[1:] == ("He won.", [])  # never shown: 9 is no passage
    assert stream(["He won [1", "2]."])[1:] == ("He won [12].", [])  # grew invalid: shown as written, not listed
    assert stream(["He won [1", "2]."], passages=12)[1:] == ("He won [12].", [12])
    assert stream(["He won [1"])[1:] == ("He won [1", [])  # the answer ended inside it
    assert stream(["[1", "a]"])[1:] == ("[1a]", [])


def test_a_renumbered_opening_citation_waits_for_its_end():
    from tritonrag.pipeline.citations import CitationFilter

    f = CitationFilter(3, order=(2, 0, 1))  # prompt passage 1 is the third source: renumbered, so held to its end
    shown = [f.feed(p) for p in ["[1", ", 2", "] and [3]."]]
    assert shown[:2] == ["", ""] and "".join(shown) + f.flush() == "[3, 1] and [2]." and f.cited == [3, 1, 2]
    f = CitationFilter(3, order=(2, 0, 1))
    assert "".join(f.feed(p) for p in ["[1", "2]."]) + f.flush() == "."
    assert CitationFilter(3, order=(0, 1, 2)).feed("[1") == "[1"  # the sources' own order: shown at once
