"""The remote embedder checks the served model's batching (read from Triton) before it sends anything."""

import pytest

from tritonrag.serving import remote_embedder
from tritonrag.serving.remote_embedder import TritonEmbedder
from tritonrag.settings import load_settings


class FakeClient:
    def __init__(self, config, ready=True):
        self.config, self.ready = config, ready

    def is_model_ready(self, model):
        return self.ready

    def get_model_config(self, model, as_json=False):
        assert as_json
        return {"config": {"name": model, **self.config}}


@pytest.fixture
def served(monkeypatch):
    def serve(config, ready=True):
        monkeypatch.setattr(TritonEmbedder, "_client", lambda self: FakeClient(config, ready))
    return serve


def test_rows_per_request_default_fits_the_served_batch(served):
    served({"max_batch_size": 64})
    embedder = TritonEmbedder("host:8001", load_settings().embedder)
    assert embedder.rows_per_request == remote_embedder.ROWS_PER_REQUEST
    embedder.close()
    served({"max_batch_size": 16})
    embedder = TritonEmbedder("host:8001", load_settings().embedder)
    assert embedder.rows_per_request == 16
    embedder.close()


def test_rows_per_request_over_the_served_batch_is_refused(served):
    served({"max_batch_size": 16})
    with pytest.raises(ValueError, match=r"between 1 and 16, the max_batch_size of model 'embedder' on host:8001"):
        TritonEmbedder("host:8001", load_settings().embedder, rows_per_request=32)


def test_a_model_that_does_not_batch_or_is_not_ready_is_a_clear_error(served):
    served({})  # proto3 JSON leaves out max_batch_size 0
    with pytest.raises(RuntimeError, match=r"does not batch \(max_batch_size 0\)"):
        TritonEmbedder("host:8001", load_settings().embedder)
    served({"max_batch_size": 64}, ready=False)
    with pytest.raises(RuntimeError, match="not ready"):
        TritonEmbedder("host:8001", load_settings().embedder)


def test_an_unreachable_server_names_the_endpoint(monkeypatch):
    def unreachable(self):
        raise ConnectionError("refused")
    monkeypatch.setattr(TritonEmbedder, "_client", unreachable)
    with pytest.raises(RuntimeError, match="cannot reach Triton's gRPC endpoint at host:8001"):
        TritonEmbedder("host:8001", load_settings().embedder)
