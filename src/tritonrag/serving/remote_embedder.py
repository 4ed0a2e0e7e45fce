"""Embed through the served Triton `embedder` with concurrent gRPC requests (a cluster builds its own index).

Chunking still needs the embedder's tokenizer, which is loaded locally (no model weights).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tritonrag.embedding.encoder import tokenizer_spans
from tritonrag.settings import EmbedderSettings, resolve_model_ref


class TritonEmbedder:
    """Sends ``rows_per_request`` texts per request, ``concurrency`` requests at a time, to ``url`` (gRPC)."""

    def __init__(self, url: str, settings: EmbedderSettings, concurrency: int = 8, rows_per_request: int = 32,
                 model: str = "embedder") -> None:
        from transformers import AutoTokenizer

        if concurrency < 1 or not 1 <= rows_per_request <= settings.max_batch_size:
            raise ValueError(f"need concurrency >= 1 and 1 <= rows_per_request <= {settings.max_batch_size}")
        self.url, self.model, self.model_name = url, model, settings.model
        self.concurrency, self.rows_per_request = concurrency, rows_per_request
        self.max_chars = settings.max_text_chars
        self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_ref(settings.model))
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="embed-grpc")
        try:
            ready = self._client().is_model_ready(model)
        except Exception as exc:  # tritonclient raises its own exception type for connection errors
            raise RuntimeError(f"cannot reach Triton's gRPC endpoint at {url} ({exc}); is `tritonrag serve` "
                               "running, and is this its gRPC port (default 8001)?") from None
        if not ready:
            raise RuntimeError(f"model {model!r} is not ready on {url}; check the server log")

    def _client(self):
        import tritonclient.grpc as grpcclient

        if not hasattr(self._local, "client"):
            self._local.client = grpcclient.InferenceServerClient(self.url)
        return self._local.client

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self._tokenizer, text)

    def _request(self, texts: Sequence[str], instruction: str) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        def tensor(name: str, values: list[str]):
            array = np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(-1, 1)
            t = grpcclient.InferInput(name, list(array.shape), "BYTES")
            t.set_data_from_numpy(array)
            return t

        # The embedder reads only its first max_seq_length tokens; the server rejects texts over max_text_chars.
        inputs = [tensor("text", [t[: self.max_chars] for t in texts])]
        if instruction:
            inputs.append(tensor("instruction", [instruction] * len(texts)))
        result = self._client().infer(self.model, inputs, outputs=[grpcclient.InferRequestedOutput("embedding")])
        return result.as_numpy("embedding")

    def encode(self, texts: Sequence[str], instruction: str = "") -> np.ndarray:
        """Vectors of ``texts`` in order; requests run concurrently so Triton batches them dynamically."""
        parts = [texts[i : i + self.rows_per_request] for i in range(0, len(texts), self.rows_per_request)]
        results = list(self._pool.map(lambda part: self._request(part, instruction), parts))
        return np.concatenate(results).astype(np.float32) if results else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
