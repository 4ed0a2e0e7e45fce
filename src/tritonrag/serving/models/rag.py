"""Triton adapter for the RAG orchestrator (decoupled, async BLS): tensors in, the pipeline's events out.

The orchestration (flows, streaming order, cancellation, errors) is tritonrag.pipeline's; this adapter reads the
request, runs the pipeline over BLS-backed stages (tritonrag.serving.bls_stages) and sends each event as a response.
Requests of one execute call run concurrently on the instance's event loop.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils

from tritonrag.generation.sampling import SamplingParams
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
        for name, value in ((RAG.timing, event.timing), (RAG.usage, event.usage), (RAG.query, event.query)):
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
        stages = BlsStages(self.rag.bls_timeout_s, self.executor)
        self.pipeline = RagPipeline(stages, standard_flows(stages, self.rag.critic_generator,
                                                           self.rag.critic_max_tokens, self.rag.rerank_fusion,
                                                           settings.reranker.max_passage_chars,
                                                           self.rag.condense_max_tokens))
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


async def _single(event):
    yield event
