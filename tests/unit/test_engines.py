"""The engine layer: configuration errors, and the transformers fallback's queue, streaming and cancellation."""

from dataclasses import replace

import pytest
from fakes import RecordingSink as Sink

from tritonrag.generation.engine import create_engine
from tritonrag.generation.sampling import SamplingParams
from tritonrag.generation.transformers_engine import TransformersEngine
from tritonrag.settings import load_settings


@pytest.fixture(scope="module")
def settings():
    return replace(load_settings().generator, engine="transformers")


def test_unknown_engine_is_a_clear_error(settings):
    with pytest.raises(ValueError, match=r"engine = 'tensorrt' is unknown; choose one of vllm, transformers"):
        create_engine(replace(settings, engine="tensorrt"), "cpu")


def test_engine_that_cannot_start_names_the_switch(settings):
    with pytest.raises(RuntimeError, match=r'could not start .*engine = "vllm"'):
        create_engine(replace(settings, model="/nonexistent/model"), "cpu")


@pytest.fixture(scope="module")
def engine(settings):
    engine = TransformersEngine(settings, "cpu")
    assert engine.generator.device == "cpu"
    yield engine
    engine.shutdown()


def test_transformers_engine_streams_queued_requests(engine, settings):
    params = SamplingParams.from_request({"max_tokens": 6}, settings)
    sinks = [Sink(), Sink()]
    for sink in sinks:
        engine.submit("The capital of France is", params, sink)
    for sink in sinks:
        assert sink.done.wait(120)
        assert sink.error is None and sink.completion.finish_reason in ("length", "stop")
        assert len(sink.texts) >= 2
    assert "".join(sinks[0].texts) == "".join(sinks[1].texts)
    assert engine.in_flight == 0


def test_transformers_engine_cancels_when_the_sink_says_so(engine, settings):
    sink = Sink(cancel_after=2)
    engine.submit("Once upon a time", SamplingParams.from_request({"max_tokens": 50}, settings), sink)
    assert sink.done.wait(120)
    assert sink.completion.finish_reason == "cancelled"
    assert sink.completion.completion_tokens < 10
