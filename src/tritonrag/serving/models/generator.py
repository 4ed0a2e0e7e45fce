"""Triton adapter for the generator (decoupled): prompt + sampling parameters in, text streamed out.

The engine (vLLM by default, transformers as fallback; [generator] engine) runs on its own thread; execute
only validates and submits, so many requests are in flight at once. Inputs follow vllm_backend's names
(text_input, stream, sampling_parameters as JSON); sampling parameters may also come as request parameters.
"""

import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import InvalidInput
from tritonrag.generation.device_settings import generator_settings
from tritonrag.generation.engine import create_engine
from tritonrag.generation.sampling import SamplingParams
from tritonrag.serving.coalescing import Batch, Outbox, SenderThread
from tritonrag.serving.contract import GENERATOR
from tritonrag.serving.instance import instance_config
from tritonrag.serving.tensors import error_response, read_scalar, read_string, request_parameters, string_tensor
from tritonrag.settings import load_settings
from tritonrag.validation import parse_json_object, shown

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Asking Triton whether a client cancelled, and updating a metric, are round trips to the server process; per
# token they cost ~0.1 ms (half the serving cost of a 96-token answer), so streams do them at most this often.
CANCEL_CHECK_S = 0.05
TOKEN_METRIC_S = 0.5
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def _text_response(text, completion=None):
    """A response of text; the final one (``completion``) also says how it ended and its prompt's and answer's
    tokens."""
    outputs = [string_tensor(GENERATOR.text_output, [text])]
    if completion is not None:
        outputs += [string_tensor(GENERATOR.finish_reason, [completion.finish_reason]),
                    pb_utils.Tensor(GENERATOR.num_input_tokens, np.array([completion.prompt_tokens], np.int32)),
                    pb_utils.Tensor(GENERATOR.num_output_tokens, np.array([completion.completion_tokens], np.int32))]
    return pb_utils.InferenceResponse(outputs)


class Metrics:
    """Custom metrics on Triton's :8002/metrics endpoint (families must outlive their metrics)."""

    def __init__(self, labels):
        family = pb_utils.MetricFamily
        self.families = {
            "ttft": family("tritonrag_generator_time_to_first_token_seconds", "Time to first token",
                           family.HISTOGRAM),
            "tpot": family("tritonrag_generator_time_per_output_token_seconds",
                           "Time per output token after the first", family.HISTOGRAM),
            "tokens": family("tritonrag_generator_output_tokens_total", "Tokens generated", family.COUNTER),
            "in_flight": family("tritonrag_generator_requests_in_flight", "Requests being generated", family.GAUGE),
            "finished": family("tritonrag_generator_requests_total", "Finished requests by finish reason",
                               family.COUNTER),
        }
        self.ttft = self.families["ttft"].Metric(labels, buckets=LATENCY_BUCKETS)
        self.tpot = self.families["tpot"].Metric(labels, buckets=LATENCY_BUCKETS)
        self.tokens = self.families["tokens"].Metric(labels)
        self.in_flight = self.families["in_flight"].Metric(labels)
        self.finished = {
            reason: self.families["finished"].Metric({**labels, "finish_reason": reason})
            for reason in ("stop", "length", "cancelled", "error")
        }


class _RequestStream:
    """Sends one request's output as the engine produces it (the engine's GenerationSink).

    A streamed request's text goes through its outbox to the model's sender thread (``send_batch``), not out from the
    engine's thread: text that piles up while the sender sends the previous response leaves in one response, and the
    last text rides in the final response. The engine's thread never waits for a send, and no text waits for more.
    """

    def __init__(self, model, sender, stream, cancel_key=None):
        self.model, self.sender, self.stream, self.cancel_key = model, sender, stream, cancel_key
        self.outbox = Outbox()
        self.started = time.perf_counter()
        self.first_at = None
        self.pieces = []
        self.cancelled = False
        self.done = False  # the model counted this stream's end (request_done)
        self.next_cancel_check = 0.0
        self.unreported_tokens = 0
        self.next_token_report = self.started + TOKEN_METRIC_S

    def on_text(self, text, tokens):
        now = time.perf_counter()
        if now >= self.next_cancel_check:
            self.next_cancel_check = now + CANCEL_CHECK_S
            self.cancelled = self.cancelled or self.sender.is_cancelled()
        if self.cancelled:
            return False
        if self.first_at is None:
            self.first_at = now
            self.model.metrics.ttft.observe(now - self.started)
        self.unreported_tokens += tokens
        if now >= self.next_token_report:
            self._report_tokens()
            self.next_token_report = now + TOKEN_METRIC_S
        if self.stream:
            if text and self.outbox.put(text):
                self.model.sending.schedule(self)
        else:
            self.pieces.append(text)
        return True

    def _report_tokens(self):
        if self.unreported_tokens:
            self.model.metrics.tokens.increment(self.unreported_tokens)
            self.unreported_tokens = 0

    def on_finish(self, completion):
        self._report_tokens()
        self.model.request_done(completion.finish_reason, self)
        if completion.completion_tokens > 1 and self.first_at is not None:
            per_token = (time.perf_counter() - self.first_at) / (completion.completion_tokens - 1)
            self.model.metrics.tpot.observe(per_token)
        self._end(completion)

    def on_error(self, error):
        self._report_tokens()
        self.model.request_done("error", self)
        self._end(error)

    def _end(self, end):
        """A completion or an error ends the stream: streamed, after the text still in the outbox (the sender
        thread sends them in order); else at once, from this thread."""
        if not self.stream:
            self.send_batch(Batch("", end, True))
        elif self.outbox.finish(end):
            self.model.sending.schedule(self)

    def send_batch(self, batch):
        """Send what the outbox held (on the sender thread): its text, and the final response if the stream ended;
        text queued before the end rides in the final response."""
        if not batch.ended:
            if batch.text:
                self.sender.send(_text_response(batch.text))
            return
        end = batch.end
        if isinstance(end, BaseException):
            try:
                if batch.text:
                    self.sender.send(_text_response(batch.text))
            finally:  # the stream ends even when its last text could not go out
                self._close(error_response(end))
        elif end.finish_reason == "cancelled":
            self._close(_text_response(batch.text) if batch.text else None)
        else:
            self._close(_text_response(batch.text if self.stream else "".join(self.pieces), end))

    def _close(self, response=None):
        """Send the final response; a client that already went away cannot take it, which is fine."""
        try:
            if response is None:
                self.sender.send(flags=FINAL)
            else:
                self.sender.send(response, flags=FINAL)
        except Exception as exc:  # runs on the engine's thread: never let it escape there
            pb_utils.Logger.log_verbose(f"generator: final response not delivered: {exc}")


def _send_queued(stream):
    """The sender thread's turn for ``stream``: what its outbox holds now."""
    stream.send_batch(stream.outbox.take())


class TritonPythonModel:
    def initialize(self, args):
        settings, gpus = instance_config(args, load_settings(), GENERATOR.model)
        self.settings, device, environment = generator_settings(settings, gpus)
        os.environ.update(environment)  # before the engine starts CUDA or its processes
        self.engine = create_engine(self.settings, device)
        self.metrics = Metrics({"model": args["model_name"], "version": args["model_version"],
                                "engine": self.engine.name})
        self.by_cancel_key = {}  # streams a BLS caller may cancel by key (see rag's _cancel_generation)
        # every streamed response leaves from this one thread, each stream's text merged while a send is under way
        self.sending = SenderThread(_send_queued, "generator-sender",
                                    lambda exc: pb_utils.Logger.log_verbose(f"generator: response not sent: {exc}"))
        # The in-flight gauge counts here, under one lock: +1 when a request is submitted, -1 when its stream ends
        # (exactly once, whichever way), and the gauge is set inside the lock, so no late setter overwrites it.
        self._count_lock = threading.Lock()
        self._in_flight = 0

    def _parse(self, request, parameters):
        prompt = read_string(request, GENERATOR.text_input)
        if not prompt.strip():
            raise InvalidInput(f"input '{GENERATOR.text_input}' is empty: send a prompt")
        raw = dict(parameters)
        raw.pop(GENERATOR.cancel_key, None)
        stream_param = raw.pop(GENERATOR.stream, False)
        if not isinstance(stream_param, bool):
            raise InvalidInput(f"parameter '{GENERATOR.stream}' must be true or false, got {shown(stream_param)}")
        sampling = read_string(request, GENERATOR.sampling_parameters, required=False)
        raw.update(parse_json_object(sampling, f"input '{GENERATOR.sampling_parameters}'"))
        stop = pb_utils.get_input_tensor_by_name(request, GENERATOR.stop)
        if stop is not None:
            raw["stop"] = [s.decode("utf-8", "replace") for s in stop.as_numpy().reshape(-1)]
        stream = read_scalar(request, GENERATOR.stream)
        return prompt, SamplingParams.from_request(raw, self.settings), bool(stream_param if stream is None else stream)

    def _count(self, change):
        with self._count_lock:
            self._in_flight = max(0, self._in_flight + change)
            self.metrics.in_flight.set(self._in_flight)

    def request_done(self, reason, stream):
        if stream.done:
            return
        stream.done = True
        self.by_cancel_key.pop(stream.cancel_key, None)
        self.metrics.finished[reason].increment(1)
        self._count(-1)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                keys = request_parameters(request)
                if GENERATOR.cancel in keys:
                    self._cancel(keys[GENERATOR.cancel])
                    sender.send(flags=FINAL)
                    continue
                prompt, params, stream = self._parse(request, keys)
            except InvalidInput as exc:
                sender.send(error_response(exc), flags=FINAL)
                continue
            request_stream = _RequestStream(self, sender, stream, keys.get(GENERATOR.cancel_key))
            if request_stream.cancel_key:
                self.by_cancel_key[request_stream.cancel_key] = request_stream
            self._count(+1)
            try:
                self.engine.submit(prompt, params, request_stream)
            except Exception as exc:  # an engine that cannot take it (shut down, dead): end this stream
                request_stream.on_error(exc)
        return None

    def _cancel(self, key):
        stream = self.by_cancel_key.get(key)
        if stream is not None:
            stream.cancelled = True  # the engine aborts it at its next token

    def finalize(self):
        self.engine.shutdown()
        self.sending.stop()
