import json

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.kb.batched_search import check_top_k
from tritonrag.pipeline.request import RagParams
from tritonrag.pipeline.sources import sources_json
from tritonrag.prompts.registry import PACKAGE_TEMPLATES as TEMPLATES
from tritonrag.settings import load_settings
from tritonrag.validation import parse_json_object


@pytest.fixture(scope="module")
def settings():
    return load_settings()


def params(raw, settings):
    return RagParams.from_parameters(raw, settings.rag, settings.retriever)


def test_unset_values_are_left_to_the_owning_stage(settings):
    p = params({}, settings)
    assert (p.top_k, p.template, p.max_tokens, p.temperature, p.top_p, p.seed, p.filter) == (None,) * 7
    assert p.stream is settings.rag.stream_default
    assert p.sampling() == {}  # the generator applies its own defaults


def test_values_are_converted(settings):
    template = sorted(TEMPLATES)[0]
    p = params({"top_k": "3", "template": template, "max_tokens": 7.0, "temperature": "0.5", "top_p": "0.9",
                "seed": "11", "stream": True}, settings)
    assert (p.top_k, p.template, p.max_tokens, p.temperature, p.top_p, p.seed, p.stream) == (
        3, template, 7, 0.5, 0.9, 11, True
    )
    assert p.sampling() == {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 11}


@pytest.mark.parametrize("stream", [True, False])
def test_stream_bool_accepted(settings, stream):
    assert params({"stream": stream}, settings).stream is stream


@pytest.mark.parametrize("stream", ["true", 1, 0, None, "yes"])
def test_stream_must_be_bool(settings, stream):
    with pytest.raises(InvalidInput, match="stream"):
        params({"stream": stream}, settings)


@pytest.mark.parametrize("top_k", [0, -1, 10**6, "many", 2.5, True])
def test_bad_top_k_rejected(settings, top_k):
    with pytest.raises(InvalidInput, match="top_k"):
        params({"top_k": top_k}, settings)


def test_top_k_bounds_inclusive(settings):
    assert params({"top_k": 1}, settings).top_k == 1
    assert params({"top_k": settings.retriever.top_k_max}, settings).top_k == settings.retriever.top_k_max
    assert check_top_k(settings.retriever.top_k_max, settings.retriever) == settings.retriever.top_k_max
    with pytest.raises(InvalidInput, match=str(settings.retriever.top_k_max)):
        check_top_k(settings.retriever.top_k_max + 1, settings.retriever)


@pytest.mark.parametrize("template", ["Not A Name", "", 3, None, ["qa"], "x" * 49])
def test_a_template_that_is_no_name_is_rejected(settings, template):
    # a well-formed name is the prompt builder's to check: a configured folder may add templates
    with pytest.raises(InvalidInput, match=r"template must name a template \(`tritonrag templates`"):
        params({"template": template}, settings)


def test_system_prompt_json_schema_json_object_and_flow(settings):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    p = params({"system_prompt": "Be brief.", "json_schema": json.dumps(schema), "flow": "qa-checked"}, settings)
    assert (p.system_prompt, p.json_schema, p.flow, p.structured) == ("Be brief.", schema, "qa-checked", True)
    assert p.sampling() == {"json_schema": schema}
    p = params({"json_object": True}, settings)
    assert p.structured and p.sampling() == {"json_object": True}
    assert not params({}, settings).structured


@pytest.mark.parametrize(("raw", "message"), [
    ({"json_schema": "{not json"}, "json_schema is not valid JSON"),
    ({"json_schema": "[1, 2]"}, "json_schema must be a JSON object"),
    ({"json_schema": 3}, "json_schema must be a JSON object"),
    ({"json_object": "yes"}, "json_object must be true or false"),
    ({"system_prompt": 5}, "system_prompt must be a string"),
    ({"flow": 1}, "flow must name a flow"),
])
def test_bad_structured_output_and_prompt_parameters_are_refused(settings, raw, message):
    with pytest.raises(InvalidInput, match=message):
        params(raw, settings)


def test_filter_parameter_is_validated(settings):
    assert params({}, settings).filter is None
    p = params({"filter": '{"source": ["b.txt", "a.txt"]}'}, settings)
    assert p.filter.to_json() == '{"source": ["a.txt", "b.txt"]}'
    assert "filter" not in p.sampling()
    with pytest.raises(InvalidInput, match="filter"):
        params({"filter": '{"source": {"$ne": 1}}'}, settings)


def test_unknown_parameter_rejected(settings):
    with pytest.raises(InvalidInput, match="topk"):
        params({"topk": 3}, settings)


@pytest.mark.parametrize(
    ("raw", "name"),
    [({"max_tokens": "x"}, "max_tokens"), ({"temperature": "warm"}, "temperature"), ({"top_p": "nan"}, "top_p"),
     ({"seed": 0.5}, "seed")],
)
def test_bad_sampling_values_rejected(settings, raw, name):
    with pytest.raises(InvalidInput, match=name):
        params(raw, settings)


# --- parse_parameters --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, ""])
def test_parse_parameters_missing_is_empty(raw):
    assert parse_json_object(raw, "request parameters") == {}


def test_parse_parameters_object():
    assert parse_json_object('{"top_k": 3, "stream": true}', "request parameters") == {"top_k": 3, "stream": True}


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"text"', "3", "null"])
def test_parse_parameters_rejects_non_objects(raw):
    with pytest.raises(InvalidInput, match="parameters"):
        parse_json_object(raw, "request parameters")


# --- sources_json ------------------------------------------------------------------------------------------


def test_sources_json_one_object_per_chunk_in_order():
    import numpy as np

    out = json.loads(
        sources_json(
            np.array([7, 2], dtype=np.int64),
            np.array([0.912345678, 0.5], dtype=np.float32),
            [{"source": "a.txt", "title": "A", "section": "", "position": 3}, {"source": "b.txt"}],
        )
    )
    assert out == [
        {"chunk_id": 7, "score": 0.9123, "source": "a.txt", "title": "A", "section": "", "position": 3},
        {"chunk_id": 2, "score": 0.5, "source": "b.txt"},
    ]


def test_sources_json_empty():
    assert json.loads(sources_json([], [], [])) == []


def test_sources_json_snippets_are_short_and_cut_at_a_word():
    long_text = "word " * 100
    sources = json.loads(sources_json([1, 2], [0.5, 0.4], [{}, {}], ["short passage", long_text]))
    assert sources[0]["snippet"] == "short passage"
    assert sources[1]["snippet"].endswith(" ...") and len(sources[1]["snippet"]) <= 165
    assert "wor ..." not in sources[1]["snippet"]


# --- retrieval and reranking options ------------------------------------------------------------------------------

def test_retrieval_options_are_validated_and_left_unset_by_default(settings):
    p = params({}, settings)
    assert (p.mode, p.candidates, p.fusion, p.rerank) == (None, None, None, settings.rag.rerank)
    p = params({"mode": "sparse", "candidates": 30, "fusion": "rrf"}, settings)
    assert (p.mode, p.candidates, p.fusion) == ("sparse", 30, "rrf")
    for raw, message in [({"mode": "bm25"}, "mode must be one of dense, sparse, hybrid"),
                         ({"fusion": "max"}, "fusion must be one of rrf, weighted"),
                         ({"candidates": 0}, "candidates must be between"),
                         ({"rerank": "yes"}, "rerank must be true or false"),
                         ({"rerank_candidates": 1000}, "rerank_candidates must be between")]:
        with pytest.raises(InvalidInput, match=message):
            params(raw, settings)


def test_reranking_retrieves_its_candidates_and_keeps_top_k(settings):
    p = params({"rerank": True, "top_k": 6}, settings)
    assert (p.retrieved, p.keep) == (max(settings.rag.rerank_candidates, 6), 6)
    p = params({"rerank": True, "top_k": 50}, settings)  # the default candidates grow to top_k
    assert p.retrieved == 50
    assert params({"rerank": False, "top_k": 3}, settings).retrieved == 3
    with pytest.raises(InvalidInput, match=r"rerank_candidates \(2\) must be at least top_k \(3\)"):
        params({"rerank": True, "top_k": 3, "rerank_candidates": 2}, settings)


@pytest.mark.parametrize(("raw", "message"), [
    ({"seed": 2**70}, "seed must be an integer between 0 and 9223372036854775807"),
    ({"seed": 1.2e21}, "seed must be an integer between 0 and"),
    ({"seed": -3}, "seed must be an integer between 0 and"),
    ({"filter": "[" * 5000 + "]" * 5000}, "filter nests arrays and objects more than 2 levels deep"),
    ({"json_schema": "[" * 5000 + "]" * 5000}, "json_schema nests arrays and objects"),
    ({"json_schema": '{"a": ' + "1" * 5000 + "}"}, "more than 4300 digits"),
    ({"top_k": 10**400}, "top_k is far out of range"),
    ({"system_prompt": ["x" * 10000]}, "system_prompt must be a string"),
    ({"template": "x" * 10000}, "template must name a template"),
])
def test_absurd_values_are_refused_with_short_clear_messages(settings, raw, message):
    with pytest.raises(InvalidInput) as caught:
        params(raw, settings)
    assert message in str(caught.value) and len(str(caught.value)) < 600


def test_request_parameters_json_is_bounded():
    for raw, message in (("[" * 100000, "nests arrays and objects"), ('{"a": ' + "1" * 5000 + "}", "digits"),
                         ('{"a": "\\udfff"}', "lone surrogate"), ("[1]", "must be a JSON object, got an array")):
        with pytest.raises(InvalidInput, match=message):
            parse_json_object(raw, "request parameters")
