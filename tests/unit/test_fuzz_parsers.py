"""Property-based fuzzing (hypothesis) of every parser of request data in the core: whatever a client sends, each
parser returns a value or refuses with the project's own error (InvalidInput, the ingress's ApiError with a 4xx
status, pydantic's ValidationError) whose message is non-empty, says something (not a bare exception name) and is
bounded (a huge value is never echoed whole). Never another exception: that would reach a client as INTERNAL / 500.
"""

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tritonrag.errors import InvalidInput
from tritonrag.generation.sampling import SamplingParams
from tritonrag.generation.structured import parse_structured
from tritonrag.ingress.errors import ApiError
from tritonrag.ingress.schema import ChatCompletionRequest, EmbeddingRequest
from tritonrag.ingress.translate import FLOWS, parse_chat, to_rag_call, validation_error
from tritonrag.kb.batched_search import check_top_k, parse_search
from tritonrag.kb.filters import parse_filter
from tritonrag.pipeline.request import RagParams
from tritonrag.pipeline.types import RagRequest
from tritonrag.prompts.builder import ContextDocument
from tritonrag.prompts.history import parse_history
from tritonrag.reranking.validation import validate_request
from tritonrag.serving.contract import RAG
from tritonrag.serving.tensors import _decode
from tritonrag.settings import load_settings
from tritonrag.validation import as_choice, as_float, as_int, parse_json_object

SETTINGS = load_settings()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_MESSAGE_CHARS = 1500  # a message quotes at most a bounded part of what was sent
BARE_NAME = re.compile(r"^\s*[A-Za-z_.]*(Error|Exception|Warning)?\s*:?\s*$")

# --- strategies --------------------------------------------------------------------------------------------------

# text including what JSON allows but UTF-8 does not (lone surrogates) and control characters
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
big_ints = st.integers(min_value=-(2**80), max_value=2**80) | st.sampled_from(
    [2**63, 2**63 - 1, -(2**63) - 1, 2**64, 10**400, -(10**400)])
scalars = (st.none() | st.booleans() | st.integers() | big_ints | st.floats(allow_nan=True, allow_infinity=True)
           | any_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text | st.sampled_from(["role", "content", "source", "type"]),
                                             inner, max_size=4), max_leaves=12)
deep = st.integers(min_value=1, max_value=6000)
# JSON texts a parser may choke on: nesting past Python's recursion limit, numbers past int's digit limit
nasty_json = (deep.map(lambda n: "[" * n + "]" * n) | deep.map(lambda n: '{"a":' * n + "1" + "}" * n)
              | deep.map(lambda n: '{"source": ' + "[" * n + "]" * n + "}")
              | st.integers(min_value=4000, max_value=20000).map(lambda n: '{"a": ' + "1" * n + "}")
              | st.integers(min_value=4000, max_value=20000).map(lambda n: "1" * n)
              | st.sampled_from(['{"a": NaN}', '{"a": Infinity}', "-Infinity", '{"a": 1e999}', '"\\ud800"',
                                 '{"\\udfff": 1}', "", " ", "null", "{", '{"a": 1,}', "\x00"]))


def _dumps(value):
    try:
        return json.dumps(value)
    except (ValueError, RecursionError):
        return "{}"


json_texts = json_values.map(_dumps) | any_text | nasty_json


def json_or_text(values=json_values):
    return values | json_texts


# --- the property ------------------------------------------------------------------------------------------------

def clear(message):
    assert message and message.strip(), "an empty message"
    assert not BARE_NAME.match(message), f"a bare exception name: {message!r}"
    assert len(message) <= MAX_MESSAGE_CHARS, f"a message of {len(message)} characters: {message[:200]!r}..."


def accepted_or_refused_clearly(call):
    """Run ``call``: a value, or the project's own error with a clear message. Returns the value or None."""
    try:
        return call()
    except ApiError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.message)
        clear(exc.message)
    except ValidationError as exc:
        clear(validation_error(exc).message)
    except InvalidInput as exc:
        clear(str(exc))
    return None


# --- validation.py -----------------------------------------------------------------------------------------------

@FUZZ
@given(json_values)
def test_number_conversions(value):
    for convert in (as_int, as_float):
        result = accepted_or_refused_clearly(lambda: convert(value, "x"))  # noqa: B023
        assert result is None or isinstance(result, (int, float))
    accepted_or_refused_clearly(lambda: as_choice(value, "x", ("a", "b")))


@FUZZ
@given(json_texts | st.none())
def test_parse_json_object(raw):
    result = accepted_or_refused_clearly(lambda: parse_json_object(raw, "request parameters"))
    assert result is None or isinstance(result, dict)


def test_integers_keep_their_exact_value():
    assert as_int(2**63 - 1, "seed") == 2**63 - 1 and as_int(str(2**62 + 1), "seed") == 2**62 + 1


# --- generation/sampling.py, generation/structured.py ------------------------------------------------------------

SAMPLING_KEYS = ["max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repetition_penalty", "json_schema",
                 "json_object"]


@FUZZ
@given(st.dictionaries(st.sampled_from(SAMPLING_KEYS) | any_text, json_or_text(), max_size=5))
def test_sampling_parameters(raw):
    params = accepted_or_refused_clearly(lambda: SamplingParams.from_request(raw, SETTINGS.generator))
    if params is not None and params.seed is not None:
        assert 0 <= params.seed < 2**63


@FUZZ
@given(json_values, st.none() | st.booleans())
def test_structured_output(schema, json_object):
    """parse_structured as SamplingParams.from_request calls it: a schema sent as text is read first (load_json)."""
    accepted_or_refused_clearly(lambda: parse_structured(schema, json_object))


def test_structured_output_reads_a_long_integer_in_a_schema_string():
    accepted_or_refused_clearly(lambda: parse_structured('{"a": ' + "1" * 4301 + "}", None))


# --- kb/filters.py, kb/batched_search.py --------------------------------------------------------------------------

@FUZZ
@given(json_or_text(st.dictionaries(st.sampled_from(["source", "title", "year"]) | any_text, json_values,
                                    max_size=4)) | st.binary(max_size=20))
def test_filters(raw):
    flt = accepted_or_refused_clearly(lambda: parse_filter(raw))
    if flt is not None:
        assert json.loads(flt.to_json())


ARRAYS = (st.lists(st.integers(min_value=0, max_value=3), max_size=3).map(tuple)
          .flatmap(lambda shape: st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                          min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
                   .map(lambda values: np.array(values, np.float32).reshape(shape))))


@FUZZ
@given(ARRAYS | st.none(), json_values, json_texts | st.none(),
       st.dictionaries(st.sampled_from(["mode", "candidates", "fusion", "nprobe", "ef_search"]) | any_text,
                       json_values, max_size=3),
       st.lists(any_text, max_size=3) | st.none(), st.booleans())
def test_search_requests(queries, top_k, raw_filter, parameters, texts, sparse_index):
    accepted_or_refused_clearly(lambda: parse_search(queries, 3, top_k, raw_filter, parameters, SETTINGS.retriever,
                                                     texts, sparse_index))
    accepted_or_refused_clearly(lambda: check_top_k(top_k, SETTINGS.retriever))


# --- prompts/history.py, the prompt builder's metadata, the reranker's request ---------------------------------

turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]) | json_values,
                                        "content": any_text | json_values})
                 | json_values, max_size=4)


@FUZZ
@given(json_or_text(turns) | st.none(), st.none() | st.integers(min_value=0, max_value=5))
def test_history(value, max_messages):
    accepted_or_refused_clearly(lambda: parse_history(value, max_messages))


@FUZZ
@given(any_text, st.dictionaries(st.sampled_from(["title", "source", "section"]) | any_text, json_values,
                                 max_size=4))
def test_context_metadata(text, metadata):
    document = accepted_or_refused_clearly(lambda: ContextDocument.from_metadata(text, metadata))
    assert document is None or isinstance(document.title, str)


@FUZZ
@given(any_text, st.lists(any_text, max_size=4))
def test_rerank_requests(query, passages):
    accepted_or_refused_clearly(lambda: validate_request(query, passages, SETTINGS.reranker))


@FUZZ
@given(st.binary(max_size=40) | any_text | st.integers() | st.none())
def test_tensor_strings(value):
    accepted_or_refused_clearly(lambda: _decode(value, "text_input", 0))


# --- pipeline/request.py, pipeline/types.py ----------------------------------------------------------------------

rag_parameters = st.dictionaries(st.sampled_from(sorted(RAG.parameters)) | any_text, json_or_text(), max_size=5)


@FUZZ
@given(rag_parameters)
def test_rag_parameters(raw):
    params = accepted_or_refused_clearly(lambda: RagParams.from_parameters(raw, SETTINGS.rag, SETTINGS.retriever))
    if params is not None:  # what the rag model hands the generator, the generator takes or refuses clearly
        accepted_or_refused_clearly(lambda: SamplingParams.from_request(params.sampling(), SETTINGS.generator))


@FUZZ
@given(any_text, rag_parameters, st.none() | st.booleans(), json_or_text(turns) | st.none())
def test_rag_requests(query, parameters, stream, history):
    accepted_or_refused_clearly(lambda: RagRequest.parse(query, parameters, stream, SETTINGS.rag, SETTINGS.retriever,
                                                         history))


# --- ingress/schema.py, ingress/translate.py ---------------------------------------------------------------------

CHAT_FIELDS = [*sorted(set(ChatCompletionRequest.model_fields) - {"model", "messages"}), "tools", "logit_bias",
               "temprature"]
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "robot"])},
    optional={"content": any_text | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": any_text}),
                                             max_size=2) | json_values,
              "name": any_text}) | json_values, max_size=4)
chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from([*FLOWS, "gpt-4"]) | json_values, "messages": messages},
    optional={name: json_values | st.sampled_from([{"source": "a.txt"}, "json_object", {"type": "json_schema"},
                                                   {"type": "json_schema", "json_schema": {"schema": {}}}])
              for name in CHAT_FIELDS})


def _body(value):
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{}"


raw_bodies = (chat_bodies.map(_body) | st.binary(max_size=40) | json_texts.map(lambda t: t.encode("utf-8",
                                                                                                 "surrogatepass")))


@FUZZ
@given(raw_bodies)
def test_chat_requests(body):
    request = accepted_or_refused_clearly(lambda: parse_chat(body))
    if request is None:
        return
    call = accepted_or_refused_clearly(lambda: to_rag_call(request, 8, 2000))
    if call is None:
        return
    # what the ingress sends the rag model, the rag model takes or refuses clearly
    accepted_or_refused_clearly(lambda: RagRequest.parse(call.question, call.parameters, call.stream, SETTINGS.rag,
                                                         SETTINGS.retriever, call.history))


@FUZZ
@given(st.fixed_dictionaries({"model": st.just("embedder") | json_values,
                              "input": any_text | st.lists(any_text, max_size=3) | json_values},
                             optional={"encoding_format": st.sampled_from(["float", "base64"]) | json_values,
                                       "dimensions": json_values, "user": json_values}).map(_body)
       | raw_bodies)
def test_embedding_requests(body):
    request = accepted_or_refused_clearly(lambda: EmbeddingRequest.model_validate_json(body))
    if request is not None:
        for text in request.texts:
            text.encode("utf-8")  # the gateway sends it to Triton as UTF-8


@pytest.mark.parametrize("depth", [50, 900, 3000, 100_000])
def test_deep_nesting_is_refused_by_every_json_parser(depth):
    nested = "[" * depth + "]" * depth
    for call in (lambda: parse_json_object(nested, "request parameters"), lambda: parse_filter(nested),
                 lambda: parse_history(nested), lambda: parse_chat(nested.encode()),
                 lambda: parse_filter('{"source": ' + nested + "}"),
                 lambda: SamplingParams.from_request({"json_schema": nested}, SETTINGS.generator),
                 lambda: parse_chat(b'{"model": "rag", "messages": [], "filter": {"a": ' + nested.encode() + b"}}")):
        with pytest.raises((InvalidInput, ApiError)) as caught:
            call()
        clear(str(caught.value))
