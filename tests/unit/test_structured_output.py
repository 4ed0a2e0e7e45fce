"""Structured output: json_schema / json_object in the sampling parameters, the answer check, vLLM's mapping, and
the refusal of the engines that cannot constrain decoding."""

import json
import re

import pytest
from fakes import RecordingSink as Sink

from tritonrag.errors import InvalidInput, Unsupported
from tritonrag.generation.sampling import SamplingParams
from tritonrag.generation.stand_in import StandInEngine
from tritonrag.generation.structured import (
    MAX_SCHEMA_CHARS,
    StructuredOutput,
    check_answer,
    parse_structured,
    structured_unsupported,
)
from tritonrag.generation.transformers_engine import TransformersEngine
from tritonrag.generation.worker_thread import WorkerThreadEngine
from tritonrag.settings import load_settings

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 80}, "supported": {"type": "boolean"}},
    "required": ["answer", "supported"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def settings():
    return load_settings().generator


# parsing and validation


def test_no_structured_output_by_default(settings):
    assert SamplingParams.from_request({}, settings).structured is None
    for schema, obj in ((None, None), (None, False), ("", None), ("  ", False)):
        assert parse_structured(schema, obj) is None


def test_json_schema_as_object_or_as_string(settings):
    as_object = SamplingParams.from_request({"json_schema": SCHEMA}, settings).structured
    as_string = SamplingParams.from_request({"json_schema": json.dumps(SCHEMA, indent=2)}, settings).structured
    assert as_object == as_string == StructuredOutput(SCHEMA)
    assert as_object.kind == "json_schema"
    hash(SamplingParams.from_request({"json_schema": SCHEMA}, settings))  # still hashable with a dict inside


def test_json_object(settings):
    structured = SamplingParams.from_request({"json_object": True}, settings).structured
    assert structured == StructuredOutput(None) and structured.kind == "json_object"
    assert SamplingParams.from_request({"json_object": False}, settings).structured is None
    assert parse_structured(SCHEMA, False) == StructuredOutput(SCHEMA)  # false alongside a schema is no conflict


def test_new_keys_are_known(settings):
    with pytest.raises(InvalidInput, match=r"known: .*json_object, json_schema"):
        SamplingParams.from_request({"json_schem": SCHEMA}, settings)


@pytest.mark.parametrize(
    ("schema", "obj", "message"),
    [
        (SCHEMA, True, r"send either json_schema .* or json_object .*, not both"),
        (None, "yes", r"json_object must be true or false, got 'yes'"),
        (None, 1, r"json_object must be true or false, got 1"),
        ("{not json", None, r"json_schema is not valid JSON \(.*\); send a JSON Schema object"),
        ([{"type": "object"}], None, r"json_schema must be a JSON object \(a JSON Schema .*\), got an array"),
        ('"object"', None, r"json_schema must be a JSON object .*, got a string"),
        (True, None, r"json_schema must be a JSON object .*, got a boolean"),
        ({"type": "strin"}, None, r"json_schema is not a valid JSON Schema: 'strin' is not valid .* \(at \$\.type\)"),
        ({"properties": {"a": {"maxLength": -1}}}, None,
         r"not a valid JSON Schema: -1 is less than the minimum of 0 \(at \$\.properties\.a\.maxLength\)"),
        ({"$schema": 7}, None, r"\$schema must be a string naming a JSON Schema draft, got 7"),
    ],
)
def test_bad_requests_say_what_to_change(schema, obj, message):
    with pytest.raises(InvalidInput, match=message):
        parse_structured(schema, obj)


def test_schema_length_limit():
    assert MAX_SCHEMA_CHARS == 8000
    fits = {"description": "x" * (MAX_SCHEMA_CHARS - len('{"description":""}'))}
    assert parse_structured(fits, None) == StructuredOutput(fits)
    # indentation in a schema sent as text does not count
    assert parse_structured(json.dumps(fits, indent=8), None) == StructuredOutput(fits)
    with pytest.raises(InvalidInput, match=r"json_schema is 8001 characters as compact JSON; the limit is 8000"):
        parse_structured({"description": fits["description"] + "x"}, None)
    with pytest.raises(InvalidInput, match=r"the limit is 10: shorten it"):
        parse_structured({"type": "object"}, None, max_chars=10)


def test_schema_depth_limit():
    deep = {}
    for _ in range(40):
        deep = {"items": deep}
    with pytest.raises(InvalidInput, match=r"more than 32 levels deep; flatten it"):
        parse_structured(deep, None)
    with pytest.raises(InvalidInput, match=r"nests"):
        parse_structured('{"not":' * 5000 + "{}" + "}" * 5000, None)


def test_an_unknown_schema_draft_falls_back_to_the_latest():
    schema = {"$schema": "https://example.com/my-draft", "type": "object"}
    assert parse_structured(schema, None) == StructuredOutput(schema)


def test_params_keep_the_other_values(settings):
    params = SamplingParams.from_request({"max_tokens": 9, "json_object": True, "stop": ["END"]}, settings)
    assert (params.max_tokens, params.stop, params.structured) == (9, ("END",), StructuredOutput(None))


# checking answers


def test_check_answer_accepts_what_the_schema_describes():
    structured = StructuredOutput(SCHEMA)
    assert check_answer('{"answer": "Paris", "supported": true}', structured) is None
    assert check_answer('\n {"supported":false,"answer":""}  \n', structured) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"answer": "Paris", "supported": tr', r"^not valid JSON: "),  # cut off by max_tokens
        ("", r"^not valid JSON: "),
        ('```json\n{"answer": "x", "supported": true}\n```', r"^not valid JSON: "),
        ('{"answer": "Paris"}', r"^does not match the schema: 'supported' is a required property \(at \$\)$"),
        ('{"answer": 3, "supported": true}', r"^does not match the schema: 3 is not of type 'string' \(at \$.answer"),
        ('{"answer": "' + "a" * 81 + '", "supported": true}', r"is too long \(at \$\.answer\)$"),
        ('{"answer": "x", "supported": true, "extra": 1}', r"Additional properties are not allowed"),
        ("[1, 2]", r"is not of type 'object' \(at \$\)"),
    ],
)
def test_check_answer_reasons(text, reason):
    found = check_answer(text, StructuredOutput(SCHEMA))
    assert found is not None and len(found) < 300
    assert re.search(reason, found), found


def test_check_answer_json_object():
    any_object = StructuredOutput(None)
    assert check_answer('{"anything": [1, 2, {"x": null}]}', any_object) is None
    assert check_answer("{}", any_object) is None
    assert check_answer("[1]", any_object) == "not a JSON object: got an array"
    assert check_answer('"text"', any_object) == "not a JSON object: got a string"
    assert check_answer("Paris.", any_object).startswith("not valid JSON: ")


def test_check_answer_uses_the_schemas_draft():
    # draft 4 has no "const"; 2020-12 (the default) does
    draft4 = StructuredOutput({"$schema": "http://json-schema.org/draft-04/schema#", "const": 1})
    assert check_answer("2", draft4) is None
    assert check_answer("2", StructuredOutput({"const": 1})) == "does not match the schema: 1 was expected (at $)"


# the engines


@pytest.fixture(scope="module")
def vllm_engine():
    pytest.importorskip("vllm.sampling_params")  # the import takes ~15 s on CPU
    from tritonrag.generation.vllm_engine import VllmEngine

    return object.__new__(VllmEngine)  # _sampling needs no running engine


def test_vllm_sampling_maps_a_schema(vllm_engine, settings):
    params = SamplingParams.from_request({"json_schema": json.dumps(SCHEMA), "max_tokens": 80}, settings)
    vllm_params = vllm_engine._sampling(params)
    assert vllm_params.max_tokens == 80
    so = vllm_params.structured_outputs
    assert so.json == SCHEMA and so.json_object is None and so.regex is None


def test_vllm_sampling_maps_json_object(vllm_engine, settings):
    so = vllm_engine._sampling(SamplingParams.from_request({"json_object": True}, settings)).structured_outputs
    assert so.json_object is True and so.json is None


def test_vllm_sampling_without_structured_output(vllm_engine, settings):
    assert vllm_engine._sampling(SamplingParams.from_request({}, settings)).structured_outputs is None


def test_vllm_validation_errors_are_bad_input(vllm_engine):
    """vLLM's VLLMValidationError (a schema its grammar backend cannot compile) is no ValueError: the engine maps
    it to InvalidInput all the same, not to an internal error."""
    import asyncio

    from vllm.exceptions import VLLMValidationError

    class Engine:
        async def generate(self, prompt, params, request_id):
            raise VLLMValidationError("The provided JSON schema contains features not supported by xgrammar.")
            yield

    vllm_engine.engine = Engine()
    sink = Sink()
    params = SamplingParams(8, 0.0, 1.0, structured=StructuredOutput(SCHEMA))
    asyncio.run(vllm_engine._run("gen-0", "a prompt", params, sink))
    assert type(sink.error) is InvalidInput and "not supported by xgrammar" in str(sink.error)


def test_refusal_message_names_the_switch():
    error = structured_unsupported("transformers")
    assert isinstance(error, Unsupported) and isinstance(error, InvalidInput)
    assert str(error).startswith("structured output (json_schema / json_object) needs the vllm engine; this "
                                 "generator runs the transformers engine ([generator] engine)")
    assert 'engine = "vllm"' in str(error)


@pytest.mark.parametrize("request_keys", [{"json_schema": SCHEMA}, {"json_object": True}])
def test_stand_in_refuses_structured_output_at_submit(settings, request_keys):
    engine = StandInEngine(settings)
    try:
        sink = Sink()
        request_id = engine.submit("a prompt", SamplingParams.from_request(request_keys, settings), sink)
        assert request_id.startswith("stand-in-")
        assert sink.done.is_set()  # answered inside submit, never queued
        assert isinstance(sink.error, Unsupported) and "runs the stand-in engine" in str(sink.error)
        assert sink.completion is None and sink.texts == [] and engine.in_flight == 0
        # the engine still serves plain requests afterwards
        plain = Sink()
        engine.submit("a prompt", SamplingParams.from_request({"max_tokens": 3}, settings), plain)
        assert plain.done.wait(10) and plain.error is None and len(plain.texts) == 3
    finally:
        engine.shutdown()


def test_transformers_refuses_structured_output_at_submit(settings):
    """No model is loaded: the engine is built without its __init__ (which loads one), with only the worker thread
    of its base class; a refused request never reaches the generator."""
    engine = object.__new__(TransformersEngine)
    WorkerThreadEngine.__init__(engine)
    try:
        sink = Sink()
        request_id = engine.submit("a prompt", SamplingParams.from_request({"json_object": True}, settings), sink)
        assert request_id.startswith("transformers-")
        assert sink.done.is_set()  # answered inside submit, never queued
        assert isinstance(sink.error, Unsupported) and "runs the transformers engine" in str(sink.error)
        assert engine.in_flight == 0 and engine._queue.empty()
    finally:
        engine.shutdown()
