"""The Triton adapters without Triton: each imports against a minimal stand-in for triton_python_backend_utils,
and the rag adapter turns each pipeline event into the right response (the integration tests run them for real)."""

import importlib
import sys
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
