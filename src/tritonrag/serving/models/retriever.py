"""Triton adapter for the retriever: query vectors and/or texts (+ top_k, filter, mode) in, chunks out; or `stats`
in, stats out.

Requests of one execute call that share options are searched together (one FAISS call). A newly published
knowledge base version is swapped in by a watcher thread without dropping a request.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import InvalidInput
from tritonrag.kb.batched_search import parse_search, run_searches
from tritonrag.kb.live import LiveKnowledgeBase, NoKnowledgeBase
from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.versions import version_number
from tritonrag.serving.coalescing import SenderThread
from tritonrag.serving.contract import RETRIEVER
from tritonrag.serving.instance import instance_config
from tritonrag.serving.tensors import (
    error_response,
    read_scalar,
    read_string,
    read_strings,
    request_parameters,
    string_tensor,
)
from tritonrag.settings import load_settings

STATS = "stats"  # what _parse returns for a statistics request (a marker, not a tensor name)
STEP_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]


class Metrics:
    """Gauges of the served version on :8002/metrics (families must outlive their metrics)."""

    def __init__(self, labels):
        family = pb_utils.MetricFamily
        self.families = [
            family("tritonrag_retriever_index_version", "Published knowledge base version served", family.GAUGE),
            family("tritonrag_retriever_index_vectors", "Vectors in the served index", family.GAUGE),
            family("tritonrag_retriever_index_bytes", "Size of the served FAISS index", family.GAUGE),
            family("tritonrag_retriever_reloads_total", "Knowledge base versions swapped in", family.COUNTER),
        ]
        self.version, self.vectors, self.bytes, self.reloads = (f.Metric(labels) for f in self.families)
        self._first = True
        steps = family("tritonrag_retriever_step_seconds",
                       "Time of each retrieval step (dense, sparse, fusion, fetch) per batch", family.HISTOGRAM)
        self.families.append(steps)
        self.steps = {step: steps.Metric({**labels, "step": step}, buckets=STEP_BUCKETS_S)
                      for step in ("dense", "sparse", "fusion", "fetch")}
        # Each observation is a round trip to the server process (~0.1 ms): they go out from a thread of their own,
        # so a batch's responses do not wait for its 2-4 of them.
        self._observer = SenderThread(self._observe, "retriever-metrics")

    def observe(self, timing):
        self._observer.schedule(timing)

    def _observe(self, timing):
        for name, ms in timing.items():
            metric = self.steps.get(name.removesuffix("_ms"))
            if metric is not None:
                metric.observe(ms / 1000)

    def close(self):
        self._observer.stop()

    def swapped(self, kb):
        stats = kb.stats()
        self.version.set(version_number(kb.version))
        self.vectors.set(stats["vectors"])
        self.bytes.set(stats["index"]["bytes"])
        if not self._first:
            self.reloads.increment(1)
        self._first = False


class TritonPythonModel:
    def initialize(self, args):
        s, gpus = instance_config(args, load_settings(), RETRIEVER.model)
        self.settings = s
        self.metrics = Metrics({"model": args["model_name"], "instance": args["model_instance_name"]})
        device, gpu, cap = ("gpu", gpus.devices[0], gpus.memory_gib) if gpus else ("cpu", 0, None)

        def load(path):
            return KnowledgeBase(path, device, s.nprobe, s.ef_search, s.filter_exact_max, gpu, cap)

        self.live = LiveKnowledgeBase(s.index_dir, load, s.reload_interval_s, on_swap=self.metrics.swapped)

    def _parse(self, request, kb):
        if read_scalar(request, RETRIEVER.stats):
            return STATS
        tensor = pb_utils.get_input_tensor_by_name(request, RETRIEVER.embedding)
        texts = read_strings(request, RETRIEVER.query, required=False)
        if tensor is None and texts is None:
            raise InvalidInput(f"send input '{RETRIEVER.embedding}' (and '{RETRIEVER.query}', the question's text, for "
                               f"hybrid or sparse search) to search, or '{RETRIEVER.stats}': true for the index's "
                               "statistics")
        top_k = pb_utils.get_input_tensor_by_name(request, RETRIEVER.top_k)
        if top_k is not None:
            values = set(top_k.as_numpy().reshape(-1).tolist())
            if len(values) != 1:
                raise InvalidInput(f"input '{RETRIEVER.top_k}' must be one value for all rows of a request, "
                                   f"got {sorted(values)}")
            top_k = values.pop()
        raw_filter = read_string(request, RETRIEVER.filter, required=False)
        return parse_search(None if tensor is None else tensor.as_numpy(), kb.dimension, top_k, raw_filter,
                            request_parameters(request), self.settings, texts, kb.has_sparse)

    def execute(self, requests):
        try:
            with self.live.use() as kb:
                return self._execute(requests, kb)
        except NoKnowledgeBase as exc:
            return [error_response(exc) for _ in requests]

    def _execute(self, requests, kb):
        parsed = []
        for request in requests:
            try:
                parsed.append(self._parse(request, kb))
            except InvalidInput as exc:
                parsed.append(exc)
        searches = [p for p in parsed if not isinstance(p, Exception | str)]
        try:
            found = run_searches(kb, searches, self.settings)
        except Exception as exc:
            return [error_response(exc) for _ in requests]
        for timing in {id(r.timing): r.timing for r in found}.values():  # the requests of a group share one
            self.metrics.observe(timing)
        results = iter(found)
        responses = []
        for item in parsed:
            if isinstance(item, Exception):
                responses.append(error_response(item))
            elif item == STATS:
                responses.append(self._stats())
            else:
                responses.append(self._pack(next(results), kb.version))
        return responses

    def _stats(self):
        stats = self.live.stats()
        return pb_utils.InferenceResponse([string_tensor(RETRIEVER.stats, [json.dumps(stats)], (1, 1))])

    def _pack(self, result, version):
        rows = result.rows
        k = min(len(row) for row in rows)  # fewer than top_k when the index (or a filter) holds fewer chunks
        hits = [hit for row in rows for hit in row[:k]]
        shape = (len(rows), k)
        similarities = [np.nan if h.similarity is None else h.similarity for h in hits]
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(RETRIEVER.chunk_ids, np.array([h.chunk_id for h in hits], np.int64).reshape(shape)),
                pb_utils.Tensor(RETRIEVER.scores, np.array([h.score for h in hits], np.float32).reshape(shape)),
                pb_utils.Tensor(RETRIEVER.similarities, np.array(similarities, np.float32).reshape(shape)),
                string_tensor(RETRIEVER.texts, [h.text for h in hits], shape),
                string_tensor(RETRIEVER.metadata, [json.dumps(h.metadata()) for h in hits], shape),
                string_tensor(RETRIEVER.found_by, [json.dumps(h.found_json()) for h in hits], shape),
                string_tensor(RETRIEVER.timing, [json.dumps(result.timing)] * len(rows), (len(rows), 1)),
                string_tensor(RETRIEVER.kb_version, [version or ""] * len(rows), (len(rows), 1)),
            ]
        )

    def finalize(self):
        self.live.close()
        self.metrics.close()
