"""Triton adapter for the RAG orchestrator (decoupled, async BLS): tensors in, the pipeline's events out.

The orchestration (flows, streaming order, cancellation, errors) is tritonrag.pipeline's; this adapter reads the
request, runs the pipeline over BLS-backed stages (tritonrag.serving.bls_stages) and sends each event as a response.
Requests of one execute call run concurrently on the instance's event loop.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from tritonrag.generation.sampling import SamplingParams
from tritonrag.kb.versions import PublishedVersionWatch
from tritonrag.pipeline.answer_cache import AnswerCache, make_store, settings_fingerprint
from tritonrag.pipeline.errors import failure
from tritonrag.pipeline.events import CancelledEvent, FailedEvent, FinalEvent, SourcesEvent, TextEvent
from tritonrag.pipeline.flow import RagPipeline, standard_flows
from tritonrag.pipeline.types import RagRequest
from tritonrag.serving.bls_stages import BlsStages
from tritonrag.serving.contract import RAG
from tritonrag.serving.instance import instance_config, served_generators
from tritonrag.serving.tensors import read_scalar, read_string, request_parameters, string_tensor
from tritonrag.settings import load_settings

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _response(event, coded_errors=False):
    """The Triton response of a pipeline event, and whether it is the last one (None: send only the final flag)."""
    if isinstance(event, SourcesEvent):
        return pb_utils.InferenceResponse([string_tensor(RAG.text_output, [""]),
                                           string_tensor(RAG.sources, [event.sources])]), False
    if isinstance(event, TextEvent):
        return pb_utils.InferenceResponse([string_tensor(RAG.text_output, [event.text])]), False
    if isinstance(event, FinalEvent):
        outputs = [string_tensor(RAG.text_output, [event.text]),
                   string_tensor(RAG.finish_reason, [event.finish_reason])]
        if event.sources is not None:
            outputs.append(string_tensor(RAG.sources, [event.sources]))
        if event.citations is not None:
            outputs.append(string_tensor(RAG.citations, [event.citations]))
        for name, value in ((RAG.timing, event.timing), (RAG.usage, event.usage), (RAG.query, event.query),
                            (RAG.cache_status, event.cache)):
            if value is not None:
                outputs.append(string_tensor(name, [value]))
        return pb_utils.InferenceResponse(outputs), True
    if isinstance(event, FailedEvent):
        message = f"[{event.code.value}] {event.message}" if coded_errors else event.message
        error = pb_utils.TritonError(message, getattr(pb_utils.TritonError, event.code.name))
        return pb_utils.InferenceResponse(output_tensors=[], error=error), True
    if isinstance(event, CancelledEvent):
        return None, True
    raise TypeError(f"unknown pipeline event {event!r}")


class TritonPythonModel:
    def initialize(self, args):
        settings = load_settings()
        self.rag, _ = instance_config(args, settings, RAG.model)
        self.retriever = settings.retriever
        self.generator = settings.generator
        generators = served_generators(args, settings)
        if self.rag.critic_generator not in generators:
            raise ValueError(f"[rag] critic_generator = {self.rag.critic_generator!r} is not served here; this "
                             f"deployment serves the generators {', '.join(generators)} (the deployment spec's "
                             "components with role: generator)")
        # BLS async_exec runs on the loop's default executor (6 threads on 2 cores): widen it.
        self.executor = ThreadPoolExecutor(self.rag.max_concurrency, thread_name_prefix="rag-bls")
        stages = BlsStages.for_rag(args, settings, self.rag, self.executor)
        self.cache = answer_cache(settings)
        self.cache_metrics = CacheMetrics(self.cache, {"model": args["model_name"],
                                                       "instance": args["model_instance_name"]})
        self.pipeline = RagPipeline(stages, standard_flows(stages, self.rag.critic_generator,
                                                           self.rag.critic_max_tokens, self.rag.rerank_fusion,
                                                           settings.reranker.max_passage_chars,
                                                           self.rag.condense_max_tokens),
                                    cache=self.cache)
        self._loop_ready = False

    def _parse(self, request, parameters):
        parsed = RagRequest.parse(read_string(request, RAG.text_input), parameters,
                                  read_scalar(request, RAG.stream), self.rag, self.retriever,
                                  read_string(request, RAG.history, required=False))
        # The generator's own checks on the [generator] limits, before any stage runs: Triton 2.51's decoupled BLS
        # responses lose an error's code, so a generator's INVALID_ARG would reach the client as INTERNAL.
        SamplingParams.from_request(parsed.params.sampling(), self.generator)
        return parsed

    async def _serve(self, request):
        sender = request.get_response_sender()
        coded = False
        try:
            parameters = request_parameters(request)
            coded = parameters.pop(RAG.coded_errors, False) is True
            events = self.pipeline.run(self._parse(request, parameters), request.is_cancelled)
        except Exception as exc:  # bad input: nothing ran yet
            events = _single(failure(exc))
        async for event in events:
            if isinstance(event, FinalEvent):
                self.cache_metrics.publish()
            response, last = _response(event, coded)
            try:
                if response is None:
                    sender.send(flags=FINAL)
                else:
                    sender.send(response, flags=FINAL if last else 0)
            except Exception:  # the client is gone; the pipeline sees it at its next cancellation check
                pass

    async def execute(self, requests):
        if not self._loop_ready:
            asyncio.get_running_loop().set_default_executor(self.executor)
            self._loop_ready = True
        await asyncio.gather(*(self._serve(request) for request in requests))
        return None

    def finalize(self):
        self.executor.shutdown(wait=False, cancel_futures=True)


def answer_cache(settings):
    """The answer cache [cache] describes (None: off), keyed on the published version of [retriever] index_dir and
    on the settings that shape answers."""
    if not settings.cache.enabled:
        return None
    sections = {name: getattr(settings, name)
                for name in ("embedder", "retriever", "prompt_builder", "generator", "reranker", "rag")}
    return AnswerCache(make_store(settings.cache), settings.cache, PublishedVersionWatch(settings.index_dir),
                       settings_fingerprint(sections), settings.generator.temperature_default)


class CacheMetrics:
    """The answer cache's counters on Triton's :8002/metrics, published at most every PUBLISH_S (each update is a
    round trip to the server); the last ones of a burst on a timer."""

    PUBLISH_S = 0.25

    def __init__(self, cache, labels):
        self.cache = cache
        if cache is None:
            return
        family = pb_utils.MetricFamily
        self.families = {
            "lookups": family("tritonrag_answer_cache_lookups_total",
                              "Answer cache lookups by result (exact, semantic, miss, off)", family.COUNTER),
            "stores": family("tritonrag_answer_cache_stores_total", "Answers cached", family.COUNTER),
            "evictions": family("tritonrag_answer_cache_evictions_total", "Cached answers evicted (LRU)",
                                family.COUNTER),
            "invalidations": family("tritonrag_answer_cache_invalidations_total",
                                    "Cached answers dropped because a new knowledge-base version was published",
                                    family.COUNTER),
            "errors": family("tritonrag_answer_cache_errors_total", "Cache backend calls that failed",
                             family.COUNTER),
            "coalesced": family("tritonrag_answer_cache_coalesced_total",
                                "Exact hits that followed the same question's answer in flight", family.COUNTER),
            "entries": family("tritonrag_answer_cache_entries", "Answers cached now", family.GAUGE),
            "bytes": family("tritonrag_answer_cache_bytes", "Bytes of answers cached now (memory backend)",
                            family.GAUGE),
        }
        self.lookups = {result: self.families["lookups"].Metric({**labels, "result": result})
                        for result in cache.stats.lookups()}
        self.counters = {name: self.families[name].Metric(labels)
                         for name in ("stores", "evictions", "invalidations", "errors", "coalesced")}
        self.entries, self.bytes = self.families["entries"].Metric(labels), self.families["bytes"].Metric(labels)
        self._sent: dict[str, int] = {}
        self._last, self._timer = 0.0, None

    def publish(self):
        if self.cache is None:
            return
        now = time.monotonic()
        if now - self._last < self.PUBLISH_S:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.PUBLISH_S, self._flush)
            return
        self._flush()

    def _flush(self):
        self._timer, self._last = None, time.monotonic()
        stats = self.cache.stats
        values = {**{f"lookups:{k}": v for k, v in stats.lookups().items()},
                  **{name: getattr(stats, name) for name in self.counters}}
        for name, value in values.items():
            delta = value - self._sent.get(name, 0)
            if delta:
                metric = self.lookups[name.split(":", 1)[1]] if name.startswith("lookups:") else self.counters[name]
                metric.increment(delta)
                self._sent[name] = value
        self.entries.set(len(self.cache.store))
        self.bytes.set(self.cache.store.nbytes)


async def _single(event):
    yield event
