"""Triton adapter for the reranker: a query and its passages per row in, one score per passage out.

Every good request of one execute call is scored in a single call of the core (one batched forward pass over all
their pairs); a bad request gets its own INVALID_ARG response and the others are still answered. ``passages`` is
a ragged input (allow_ragged_batch), so requests with different passage counts share a dynamic batch.
"""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import InvalidInput
from tritonrag.reranking import load_rescorer, validate_request
from tritonrag.serving.contract import RERANKER
from tritonrag.serving.instance import instance_config, instance_device
from tritonrag.serving.tensors import error_response, read_strings
from tritonrag.settings import load_settings

STEP_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class Metrics:
    """Counters on :8002/metrics (families must outlive their metrics)."""

    def __init__(self, labels):
        family = pb_utils.MetricFamily
        self.families = [
            family("tritonrag_reranker_pairs_total", "(query, passage) pairs scored", family.COUNTER),
            family("tritonrag_reranker_cache_hits_total", "Passage embeddings found in the cache (bi-encoder)",
                   family.COUNTER),
            family("tritonrag_reranker_cache_misses_total", "Passage embeddings computed (bi-encoder)", family.COUNTER),
        ]
        self.pairs, self.hits, self.misses = (f.Metric(labels) for f in self.families)
        seconds = family("tritonrag_reranker_step_seconds", "Time of one batch's scoring (the rerank step)",
                         family.HISTOGRAM)
        self.families.append(seconds)
        self.seconds = seconds.Metric({**labels, "step": "rerank"}, buckets=STEP_BUCKETS_S)
        self._seen = (0, 0)

    def scored(self, pairs, cache, seconds):
        self.pairs.increment(pairs)
        self.seconds.observe(seconds)
        if cache is not None:
            hits, misses = cache.hits - self._seen[0], cache.misses - self._seen[1]
            self._seen = (cache.hits, cache.misses)
            self.hits.increment(hits)
            self.misses.increment(misses)


class TritonPythonModel:
    def initialize(self, args):
        self.settings, gpus = instance_config(args, load_settings(), RERANKER.model)
        self.rescorer = load_rescorer(self.settings, instance_device(gpus), gpus.memory_fraction if gpus else None)
        self.metrics = Metrics({"model": args["model_name"], "version": args.get("model_version", "1"),
                                "kind": self.rescorer.kind})

    def _parse(self, request):
        """The request's rows: (query, passages) per row of its [rows, 1] query and [rows, n] passages."""
        queries = read_strings(request, RERANKER.query)
        tensor = pb_utils.get_input_tensor_by_name(request, RERANKER.passages)
        if tensor is None:
            raise InvalidInput(f"missing required input '{RERANKER.passages}'")
        shape = tensor.as_numpy().shape
        passages = read_strings(request, RERANKER.passages)
        rows = shape[0] if len(shape) > 1 else 1
        if len(queries) != rows:
            raise InvalidInput(f"input '{RERANKER.query}' has {len(queries)} strings for {rows} rows of "
                               f"'{RERANKER.passages}': send one query per row")
        width = len(passages) // rows if rows else 0
        parsed = [(queries[r], passages[r * width:(r + 1) * width]) for r in range(rows)]
        for r, (query, row) in enumerate(parsed):
            validate_request(query, row, self.settings, f"row {r} of " if rows > 1 else "")
        return parsed

    def execute(self, requests):
        parsed = []
        for request in requests:
            try:
                parsed.append(self._parse(request))
            except InvalidInput as exc:
                parsed.append(exc)
        rows = [row for p in parsed if not isinstance(p, Exception) for row in p]
        started = time.perf_counter()
        try:
            scores = iter(self.rescorer.score([q for q, _ in rows], [ps for _, ps in rows]))
        except Exception as exc:
            return [error_response(exc) for _ in requests]
        self.metrics.scored(sum(len(ps) for _, ps in rows), getattr(self.rescorer, "cache", None),
                            time.perf_counter() - started)
        responses = []
        for p in parsed:
            if isinstance(p, Exception):
                responses.append(error_response(p))
            else:
                block = np.stack([next(scores) for _ in p]).astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(RERANKER.scores, block)]))
        return responses
