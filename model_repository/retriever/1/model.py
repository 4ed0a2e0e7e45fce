"""Triton adapter for the retriever: query vectors (+ optional top_k) in, chunks out.

The query rows of all requests in one execute call are searched in a single FAISS call.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.config import load_settings
from tritonrag.errors import InvalidInput
from tritonrag.knowledge_base import KnowledgeBase
from tritonrag.rag_request import check_top_k
from tritonrag.serving import error_response, string_tensor


class TritonPythonModel:
    def initialize(self, args):
        self.settings = load_settings().retriever
        self.kb = KnowledgeBase(self.settings.index_dir)

    def _parse(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "embedding")
        queries = tensor.as_numpy()
        if queries.ndim != 2 or queries.shape[1] != self.kb.dimension:
            raise InvalidInput(
                f"input 'embedding' must be [batch, {self.kb.dimension}] (the index's dimension), "
                f"got {list(queries.shape)}"
            )
        if not np.isfinite(queries).all():
            raise InvalidInput("input 'embedding' contains NaN or infinite values")
        top_k = pb_utils.get_input_tensor_by_name(request, "top_k")
        if top_k is None:
            return queries, self.settings.top_k_default
        values = set(top_k.as_numpy().reshape(-1).tolist())
        if len(values) != 1:
            raise InvalidInput(f"input 'top_k' must be one value for all rows of a request, got {sorted(values)}")
        return queries, check_top_k(values.pop(), self.settings)

    def execute(self, requests):
        parsed = []
        for request in requests:
            try:
                parsed.append(self._parse(request))
            except InvalidInput as exc:
                parsed.append(exc)
        good = [p for p in parsed if not isinstance(p, Exception)]
        if good:
            stacked = np.concatenate([q for q, _ in good])
            scores, ids = self.kb.search(stacked, max(k for _, k in good))
        responses, row = [], 0
        for item in parsed:
            if isinstance(item, Exception):
                responses.append(error_response(item))
                continue
            queries, k = item
            n = len(queries)
            responses.append(self._pack(ids[row : row + n, :k], scores[row : row + n, :k]))
            row += n
        return responses

    def _pack(self, ids, scores):
        rows = [self.kb.fetch(i, s) for i, s in zip(ids, scores)]
        k = min(len(row) for row in rows)  # FAISS pads with -1 only when the index holds fewer than k chunks
        hits = [hit for row in rows for hit in row[:k]]
        shape = (len(rows), k)
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor("chunk_ids", np.array([h.chunk_id for h in hits], np.int64).reshape(shape)),
                pb_utils.Tensor("scores", np.array([h.score for h in hits], np.float32).reshape(shape)),
                string_tensor("texts", [h.text for h in hits], shape),
                string_tensor("metadata", [json.dumps(h.metadata()) for h in hits], shape),
            ]
        )

    def finalize(self):
        self.kb.close()
