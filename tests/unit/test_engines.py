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


# [generator] speculative decoding: vLLM's n-gram prompt lookup, validated where the settings are read
def test_speculative_decoding_is_off_by_default_and_maps_to_vllms_config(settings):
    from tritonrag.generation.vllm_engine import speculative_config

    vllm = replace(settings, engine="vllm")
    assert vllm.speculative_method == "" and speculative_config(vllm) is None
    ngram = replace(vllm, speculative_method="ngram", speculative_tokens=4, prompt_lookup_max=5, prompt_lookup_min=3)
    assert speculative_config(ngram) == {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 5,
                                         "prompt_lookup_min": 3}


@pytest.mark.parametrize(("changes", "message"), [
    ({"speculative_method": "eagle"}, r"speculative_method must be one of '', 'ngram', got 'eagle'"),
    ({"speculative_method": "ngram", "speculative_tokens": 0}, r"speculative_tokens must be at least 1, got 0"),
    ({"speculative_method": "ngram", "prompt_lookup_min": 5, "prompt_lookup_max": 4}, r"1 <= min <= max, got 5 and 4"),
    ({"speculative_method": "ngram", "prompt_lookup_min": 0}, r"1 <= min <= max, got 0 and"),
])
def test_speculative_settings_are_validated(settings, changes, message):
    with pytest.raises(ValueError, match=message):
        replace(settings, engine="vllm", **changes)


@pytest.mark.parametrize("engine", ["transformers", "stand-in"])
def test_speculative_decoding_is_refused_by_engines_without_it(settings, engine):
    with pytest.raises(ValueError, match=rf"speculative_method = 'ngram' needs engine = \"vllm\"; the {engine} engine"):
        replace(settings, engine=engine, speculative_method="ngram")


def test_speculative_decoding_from_a_config_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[generator]\nengine = "transformers"\nspeculative_method = "ngram"\n')
    with pytest.raises(ValueError, match="needs engine"):
        load_settings(path)
    path.write_text('[generator]\nspeculative_method = "ngram"\nspeculative_tokens = 3\n')
    assert load_settings(path).generator.speculative_tokens == 3
