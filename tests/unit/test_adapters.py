"""The Triton adapters without Triton: each imports against a minimal stand-in for triton_python_backend_utils,
and the rag adapter turns each pipeline event into the right response (the integration tests run them for real)."""

import collections
import importlib
import sys
import threading
import types

import numpy as np
import pytest
from fakes import InferenceResponse, Tensor

from tritonrag.pipeline.events import CancelledEvent, ErrorCode, FailedEvent, FinalEvent, SourcesEvent, TextEvent

ADAPTERS = ("embedder", "retriever", "prompt_builder", "reranker", "generator", "rag")


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message, code=INTERNAL):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


@pytest.fixture
def adapters(monkeypatch):
    """The serving modules imported afresh against the stand-in, and forgotten again afterwards."""
    stub = types.ModuleType("triton_python_backend_utils")
    stub.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    for name in [m for m in sys.modules if m.startswith("tritonrag.serving")]:
        monkeypatch.delitem(sys.modules, name)
    # Triton imports model.py for auto-complete before the stub's classes (TritonError, Tensor, ...) exist on the
    # module: an adapter may not touch them at import time.
    modules = {name: importlib.import_module(f"tritonrag.serving.models.{name}") for name in ADAPTERS}
    modules["bls_stages"] = importlib.import_module("tritonrag.serving.bls_stages")
    stub.TritonError, stub.Tensor, stub.InferenceResponse = TritonError, Tensor, InferenceResponse
    yield modules
    for name in [m for m in sys.modules if m.startswith("tritonrag.serving")]:
        monkeypatch.delitem(sys.modules, name)


def test_every_adapter_imports_and_defines_the_model(adapters):
    for name in ADAPTERS:
        assert hasattr(adapters[name], "TritonPythonModel"), name


def _strings(response, name):
    return [v.decode() for v in np.asarray(response.outputs[name]).reshape(-1)]


def test_rag_sends_each_event_as_its_response(adapters):
    to_response = adapters["rag"]._response
    response, last = to_response(SourcesEvent('[{"chunk_id": 1}]'))
    assert not last and _strings(response, "text_output") == [""] and _strings(response, "sources") == [
        '[{"chunk_id": 1}]']
    response, last = to_response(TextEvent("Fogg"))
    assert not last and set(response.outputs) == {"text_output"} and _strings(response, "text_output") == ["Fogg"]
    response, last = to_response(FinalEvent("", "stop"))
    assert last and set(response.outputs) == {"text_output", "finish_reason"}
    response, last = to_response(FinalEvent("all of it", "length", "[]"))
    assert last and _strings(response, "finish_reason") == ["length"] and _strings(response, "sources") == ["[]"]
    response, last = to_response(FailedEvent(ErrorCode.INVALID_ARG, "top_k must be between 1 and 100, got 0"))
    assert last and response.outputs == {}
    assert (response.error.code(), response.error.message()) == (TritonError.INVALID_ARG,
                                                                  "top_k must be between 1 and 100, got 0")
    assert to_response(CancelledEvent()) == (None, True)


def test_a_models_error_code_survives_the_bls_hop(adapters):
    stage_error = adapters["bls_stages"].stage_error
    error = stage_error("retriever", TritonError("filter is not valid JSON", TritonError.INVALID_ARG))
    assert (error.code, str(error)) == (ErrorCode.INVALID_ARG, "retriever: filter is not valid JSON")
    assert stage_error("generator", TritonError("boom", TritonError.CANCELLED)).code is ErrorCode.INTERNAL
    assert str(stage_error("generator", TritonError(""))) == "generator: failed without a message"


def test_a_stage_whose_stub_died_or_is_unloaded_is_unavailable_not_a_bug(adapters):
    """Triton 2.51's words for a dead stub or an unloaded model: a 503 a client may retry (the supervisor is
    restoring the model), not a 400 or 500."""
    stage_error = adapters["bls_stages"].stage_error
    dead = stage_error("embedder", TritonError("Stub process 'embedder_0_0' is not healthy."))
    unloaded = stage_error("embedder", TritonError("Failed for execute the inference request. Model 'embedder' is "
                                                   "not ready."))
    assert dead.code is ErrorCode.UNAVAILABLE and unloaded.code is ErrorCode.UNAVAILABLE
    assert stage_error("retriever", TritonError("index is not ready", TritonError.INVALID_ARG)).code \
        is ErrorCode.INVALID_ARG


def test_rags_final_response_carries_usage_and_the_question_searched(adapters):
    usage = '{"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}'
    final = FinalEvent("", "stop", citations="[]", timing="{}", usage=usage, query="Where was Phileas Fogg born?")
    response, last = adapters["rag"]._response(final)
    assert last and _strings(response, "usage") == [usage]
    assert _strings(response, "query") == ["Where was Phileas Fogg born?"]
    response, _ = adapters["rag"]._response(TextEvent("x"))
    assert "usage" not in response.outputs and "query" not in response.outputs


def test_the_generators_final_response_reports_its_tokens(adapters):
    from tritonrag.generation.sampling import Completion

    to_response = adapters["generator"]._text_response
    piece = to_response("Fogg")
    assert set(piece.outputs) == {"text_output"}
    final = to_response("", Completion("length", 120, 16))
    assert _strings(final, "finish_reason") == ["length"]
    assert final.outputs["num_input_tokens"].dtype == np.int32 and final.outputs["num_input_tokens"].tolist() == [120]
    assert final.outputs["num_output_tokens"].tolist() == [16]


def test_bls_reads_the_generators_tokens_from_its_final_response(adapters, monkeypatch):
    bls = adapters["bls_stages"]
    stub = sys.modules["triton_python_backend_utils"]
    monkeypatch.setattr(stub, "get_output_tensor_by_name",
                        lambda response, name: response.tensors.get(name), raising=False)
    final = types.SimpleNamespace(tensors={"num_input_tokens": Tensor("num_input_tokens", np.array([42], np.int32)),
                                           "num_output_tokens": Tensor("num_output_tokens", np.array([7], np.int32))})
    usage = bls._usage(final)
    assert (usage.prompt_tokens, usage.completion_tokens) == (42, 7)
    assert bls._usage(types.SimpleNamespace(tensors={})) is None


class _Gauge:
    def __init__(self):
        self.value = None

    def set(self, value):
        self.value = value

    def increment(self, value):
        pass


class _Sender:
    """A client that goes away after ``cancel_after`` responses (None: stays)."""

    def __init__(self, cancel_after=None):
        self.cancel_after, self.sent, self.final = cancel_after, 0, threading.Event()

    def is_cancelled(self):
        return self.cancel_after is not None and self.sent >= self.cancel_after

    def send(self, response=None, flags=0):
        self.sent += 1
        if flags:
            self.final.set()


def test_the_in_flight_gauge_returns_to_zero_after_cancelled_and_finished_streams(adapters):
    """The gauge the HPA scales on: counted on one lock by the adapter, never set from a stale engine count (it
    stayed at 3 after 96 client-cancelled streams when it was)."""
    import dataclasses

    from tritonrag.generation.sampling import SamplingParams
    from tritonrag.generation.stand_in import StandInEngine
    from tritonrag.settings import load_settings

    module = adapters["generator"]
    model = module.TritonPythonModel()
    model.settings = load_settings().generator
    model.engine = StandInEngine(model.settings)
    gauge = _Gauge()
    model.metrics = types.SimpleNamespace(in_flight=gauge, ttft=_Gauge(), tpot=types.SimpleNamespace(observe=id),
                                          tokens=_Gauge(), finished=collections.defaultdict(_Gauge))
    model.metrics.ttft.observe = id
    model.by_cancel_key, model._count_lock, model._in_flight = {}, threading.Lock(), 0
    model.sending = module.SenderThread(module._send_queued, "test-sender")
    params = dataclasses.replace(SamplingParams.from_request({}, model.settings), max_tokens=200)
    senders = [_Sender(cancel_after=3 if i % 2 else None) for i in range(96)]

    def submit(sender):
        stream = module._RequestStream(model, sender, stream=True)
        model._count(+1)
        model.engine.submit("the robbery at the Bank of England", params, stream)

    threads = [threading.Thread(target=submit, args=(s,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(sender.final.wait(10) for sender in senders)
    model.engine.shutdown()
    model.sending.stop()
    assert gauge.value == 0 and model._in_flight == 0


class _Recorder:
    """A response sender that keeps what it was sent (and whether it was the last)."""

    def __init__(self):
        self.responses, self.final = [], threading.Event()

    def is_cancelled(self):
        return False

    def send(self, response=None, flags=0):
        self.responses.append((response, flags))
        if flags:
            self.final.set()


def _generator_model(module):
    from tritonrag.settings import load_settings

    model = module.TritonPythonModel()
    model.settings = load_settings().generator
    observe = types.SimpleNamespace(observe=id)
    model.metrics = types.SimpleNamespace(in_flight=_Gauge(), ttft=observe, tpot=observe, tokens=_Gauge(),
                                          finished=collections.defaultdict(_Gauge))
    model.by_cancel_key, model._count_lock, model._in_flight = {}, threading.Lock(), 0
    return model


def test_the_generator_sends_text_queued_during_a_send_as_one_response_and_the_last_text_with_the_end(adapters):
    from tritonrag.generation.sampling import Completion

    module = adapters["generator"]
    model = _generator_model(module)
    gate = threading.Event()

    def send_after_gate(stream):  # the first send blocks until every piece is queued: they must pile up
        gate.wait(5)
        module._send_queued(stream)

    model.sending = module.SenderThread(send_after_gate, "test-sender")
    sender = _Recorder()
    stream = module._RequestStream(model, sender, stream=True)
    for i in range(20):
        assert stream.on_text(f" w{i}", 1)
    stream.on_finish(Completion("length", 5, 20))
    gate.set()
    assert sender.final.wait(5)
    model.sending.stop()
    assert len(sender.responses) == 1  # 20 pieces and the end, all queued before the first send: one response
    response, flags = sender.responses[0]
    assert flags == 1 and _strings(response, "text_output") == ["".join(f" w{i}" for i in range(20))]
    assert _strings(response, "finish_reason") == ["length"]


def test_the_generator_sends_text_before_an_error_and_nothing_after_the_end(adapters):
    module = adapters["generator"]
    model = _generator_model(module)
    model.sending = module.SenderThread(module._send_queued, "test-sender")
    sender = _Recorder()
    stream = module._RequestStream(model, sender, stream=True)
    stream.on_text("partial", 1)
    stream.on_error(RuntimeError("engine died"))
    stream.on_text("late", 1)
    assert sender.final.wait(5)
    model.sending.stop()
    texts = [_strings(r, "text_output") for r, _ in sender.responses if "text_output" in r.outputs]
    assert texts == [["partial"]]
    last, flags = sender.responses[-1]
    assert flags == 1 and last.error is not None and "engine died" in last.error.message()


def _bls_response(text, finish=None, error=None):
    tensors = {"text_output": Tensor("text_output", np.array([text.encode()], dtype=object))}
    if finish:
        tensors["finish_reason"] = Tensor("finish_reason", np.array([finish.encode()], dtype=object))
        tensors["num_input_tokens"] = Tensor("num_input_tokens", np.array([9], np.int32))
        tensors["num_output_tokens"] = Tensor("num_output_tokens", np.array([3], np.int32))
    return types.SimpleNamespace(tensors=tensors, has_error=lambda: error is not None, error=lambda: error)


def _read_generation(bls, responses, wait_s=0.05):
    """The chunks rag's pipeline would read from a BLS stream of ``responses``, once all of them have arrived."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    read = []

    def iterator():
        yield from responses
        read.append("end")

    async def main():
        stages = bls.BlsStages(1, ThreadPoolExecutor(2))
        generation = bls.BlsGeneration(stages, iterator(), "key")
        await asyncio.sleep(wait_s)
        chunks = []
        try:
            async for chunk in generation:
                chunks.append(chunk)
        except Exception as exc:
            chunks.append(exc)
        await generation.close()
        return chunks

    return asyncio.run(main()), read


def test_bls_generation_yields_what_arrived_meanwhile_as_one_chunk(adapters, monkeypatch):
    bls = adapters["bls_stages"]
    monkeypatch.setattr(sys.modules["triton_python_backend_utils"], "get_output_tensor_by_name",
                        lambda response, name: response.tensors.get(name), raising=False)
    chunks, read = _read_generation(bls, [_bls_response(" a"), _bls_response(" b"), _bls_response(" c", "length")])
    assert read == ["end"]
    assert [c.text for c in chunks] == [" a b c"] and chunks[0].finish_reason == "length"
    assert (chunks[0].usage.prompt_tokens, chunks[0].usage.completion_tokens) == (9, 3)


def test_bls_generation_yields_the_text_before_an_error_then_raises_it_with_its_code(adapters, monkeypatch):
    bls = adapters["bls_stages"]
    stub = sys.modules["triton_python_backend_utils"]
    monkeypatch.setattr(stub, "get_output_tensor_by_name", lambda response, name: response.tensors.get(name),
                        raising=False)
    error = TritonError("bad sampling", TritonError.INVALID_ARG)
    chunks, read = _read_generation(bls, [_bls_response(" a"), _bls_response("", error=error)])
    assert read == ["end"] and chunks[0].text == " a"
    assert isinstance(chunks[1], bls.StageError) and chunks[1].code is ErrorCode.INVALID_ARG


def test_rag_builds_the_prompt_in_process_as_the_prompt_builder_model_would(adapters, tmp_path):
    import asyncio

    from tritonrag.pipeline.errors import StageError
    from tritonrag.pipeline.stages import PromptOptions
    from tritonrag.pipeline.types import Passage
    from tritonrag.prompts.builder import prompt_builder
    from tritonrag.settings import load_settings

    bls = adapters["bls_stages"]
    settings = load_settings()
    stages = bls.BlsStages(1, None, (prompt_builder(settings), settings.prompt_builder.template))
    passages = [Passage(1, 0.9, "Fogg left London.", {"title": "Chapter I", "source": "book.txt"})]
    prompt = asyncio.run(stages.build("Who left?", passages, PromptOptions()))
    expected = prompt_builder(settings).build(settings.prompt_builder.template, "Who left?", [
        bls.ContextDocument.from_metadata(p.text, p.metadata) for p in passages])
    assert (prompt.text, prompt.stop, prompt.passages) == (expected.text, expected.stop, expected.passages)
    with pytest.raises(StageError) as raised:
        asyncio.run(stages.build("Who left?", passages, PromptOptions(template="no-such-template")))
    assert raised.value.code is ErrorCode.INVALID_ARG and raised.value.stage == "prompt_builder"


def test_rag_keeps_the_served_prompt_builder_when_the_spec_overrides_its_settings(adapters, tmp_path):
    bls = adapters["bls_stages"]
    (tmp_path / "rag").mkdir()
    (tmp_path / "prompt_builder").mkdir()
    config = tmp_path / "prompt_builder" / "config.pbtxt"
    config.write_text('name: "prompt_builder"\n')
    assert bls.prompt_builder_overrides(tmp_path / "rag") == set()
    config.write_text('parameters [\n  {\n    key: "generator_models"\n    value: { string_value: "{}" }\n  },\n'
                      '  {\n    key: "max_context_chars"\n    value: { string_value: "900" }\n  }\n]\n')
    assert bls.prompt_builder_overrides(tmp_path / "rag") == {"max_context_chars"}
    assert bls.prompt_builder_overrides(tmp_path / "nowhere" / "rag") is None
