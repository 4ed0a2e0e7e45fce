"""Embed through the served Triton `embedder` with concurrent gRPC requests (a cluster builds its own index).

Chunking still needs the embedder's tokenizer, which is loaded locally (no model weights).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tritonrag.embedding.encoder import tokenizer_spans
from tritonrag.serving.contract import EMBEDDER
from tritonrag.settings import EmbedderSettings, resolve_model_ref

ROWS_PER_REQUEST = 32  # the default, when the served model's max_batch_size allows it


class TritonEmbedder:
    """Sends ``rows_per_request`` texts per request (default: 32, or the served model's max_batch_size if lower),
    ``concurrency`` requests at a time, to ``url`` (gRPC)."""

    def __init__(self, url: str, settings: EmbedderSettings, concurrency: int = 8, rows_per_request: int | None = None,
                 model: str = EMBEDDER.model) -> None:
        from transformers import AutoTokenizer

        if concurrency < 1:
            raise ValueError(f"need concurrency >= 1, got {concurrency}")
        self.url, self.model, self.model_name = url, model, settings.model
        self._local = threading.local()
        max_batch = self._served_max_batch_size()
        if rows_per_request is not None and not 1 <= rows_per_request <= max_batch:
            raise ValueError(f"rows_per_request must be between 1 and {max_batch}, the max_batch_size of model "
                             f"{model!r} on {url} (the deployment spec's components.embedder.batching), got "
                             f"{rows_per_request}")
        self.concurrency = concurrency
        self.rows_per_request = rows_per_request or min(ROWS_PER_REQUEST, max_batch)
        self.max_chars = settings.max_text_chars
        self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_ref(settings.model))
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="embed-grpc")

    def _served_max_batch_size(self) -> int:
        """The served model's max_batch_size, read from Triton (it must be ready and batch requests)."""
        try:
            client = self._client()
            ready = client.is_model_ready(self.model)
            config = client.get_model_config(self.model, as_json=True)["config"] if ready else {}
        except Exception as exc:  # tritonclient raises its own exception type for connection errors
            raise RuntimeError(f"cannot reach Triton's gRPC endpoint at {self.url} ({exc}); is `tritonrag serve` "
                               "running, and is this its gRPC port (default 8001)?") from None
        if not ready:
            raise RuntimeError(f"model {self.model!r} is not ready on {self.url}; check the server log")
        max_batch = int(config.get("max_batch_size", 0))  # proto3 JSON leaves out a 0
        if max_batch < 1:
            raise RuntimeError(f"model {self.model!r} on {self.url} does not batch (max_batch_size 0), but "
                               f"TritonEmbedder sends rows of '{EMBEDDER.text}'; serve the embedder with batching "
                               "(the deployment spec's components.embedder.batching.max_batch_size)")
        return max_batch

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
        inputs = [tensor(EMBEDDER.text, [t[: self.max_chars] for t in texts])]
        if instruction:
            inputs.append(tensor(EMBEDDER.instruction, [instruction] * len(texts)))
        outputs = [grpcclient.InferRequestedOutput(EMBEDDER.embedding)]
        return self._client().infer(self.model, inputs, outputs=outputs).as_numpy(EMBEDDER.embedding)

    def encode(self, texts: Sequence[str], instruction: str = "") -> np.ndarray:
        """Vectors of ``texts`` in order; requests run concurrently so Triton batches them dynamically."""
        parts = [texts[i : i + self.rows_per_request] for i in range(0, len(texts), self.rows_per_request)]
        results = list(self._pool.map(lambda part: self._request(part, instruction), parts))
        return np.concatenate(results).astype(np.float32) if results else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
