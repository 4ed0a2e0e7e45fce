"""Triton adapter for the generator (decoupled): prompt + sampling parameters in, text streamed out.

Inputs follow vllm_backend's names (text_input, stream, sampling_parameters as JSON) so either backend can
serve this model name. Sampling parameters may also come as request parameters.
"""


import triton_python_backend_utils as pb_utils

from tritonrag.config import load_settings
from tritonrag.errors import InvalidInput
from tritonrag.generation import SamplingParams, TransformersEngine
from tritonrag.serving import error_response, read_scalar, read_string, request_parameters, string_tensor
from tritonrag.validation import parse_json_object

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _text_response(text, finish_reason=None):
    outputs = [string_tensor("text_output", [text])]
    if finish_reason is not None:
        outputs.append(string_tensor("finish_reason", [finish_reason]))
    return pb_utils.InferenceResponse(outputs)


class TritonPythonModel:
    def initialize(self, args):
        self.settings = load_settings().generator
        if self.settings.engine != "transformers":
            raise ValueError(
                f"generator engine {self.settings.engine!r} is not available in this build; "
                "set [generator] engine = \"transformers\" in your TRITONRAG_CONFIG"
            )
        self.engine = TransformersEngine(self.settings)

    def _parse(self, request):
        prompt = read_string(request, "text_input")
        if not prompt.strip():
            raise InvalidInput("input 'text_input' is empty: send a prompt")
        raw = request_parameters(request)
        stream_param = raw.pop("stream", False)
        sampling = read_string(request, "sampling_parameters", required=False)
        raw.update(parse_json_object(sampling, "input 'sampling_parameters'"))
        stop = pb_utils.get_input_tensor_by_name(request, "stop")
        if stop is not None:
            raw["stop"] = [s.decode("utf-8", "replace") for s in stop.as_numpy().reshape(-1)]
        stream = read_scalar(request, "stream")
        return prompt, SamplingParams.from_request(raw, self.settings), bool(stream_param if stream is None else stream)

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            prompt, params, stream = self._parse(request)
        except InvalidInput as exc:
            sender.send(error_response(exc), flags=FINAL)
            return
        pieces = []

        def on_text(text):
            if sender.is_cancelled():
                return False
            if stream:
                sender.send(_text_response(text))
            else:
                pieces.append(text)
            return True

        try:
            completion = self.engine.generate(prompt, params, on_text)
        except Exception as exc:
            sender.send(error_response(exc), flags=FINAL)
            return
        if completion.finish_reason == "cancelled":
            sender.send(flags=FINAL)
            return
        sender.send(_text_response("" if stream else "".join(pieces), completion.finish_reason), flags=FINAL)

    def execute(self, requests):
        for request in requests:
            self._serve(request)
        return None
