"""Triton adapter for the prompt builder: query + retrieved passages + template name in, prompt out."""

import json

import triton_python_backend_utils as pb_utils

from tritonrag.errors import InvalidInput
from tritonrag.prompts.builder import ContextDocument, PromptBuilder
from tritonrag.serving.contract import PROMPT_BUILDER
from tritonrag.serving.instance import instance_config
from tritonrag.serving.tensors import error_response, read_string, read_strings, string_tensor
from tritonrag.settings import load_settings


class TritonPythonModel:
    def initialize(self, args):
        self.settings, _ = instance_config(args, load_settings(), PROMPT_BUILDER.model)
        self.builder = PromptBuilder(self.settings.max_query_chars, self.settings.max_context_chars)

    def _build(self, request):
        query = read_string(request, PROMPT_BUILDER.query)
        texts = read_strings(request, PROMPT_BUILDER.context, required=False) or []
        metadata = read_strings(request, PROMPT_BUILDER.metadata, required=False) or ["{}"] * len(texts)
        if len(metadata) != len(texts):
            raise InvalidInput(f"'{PROMPT_BUILDER.metadata}' has {len(metadata)} rows but '{PROMPT_BUILDER.context}' "
                               f"has {len(texts)}")
        documents = []
        for i, (text, meta) in enumerate(zip(texts, metadata)):
            try:
                fields = json.loads(meta)
            except json.JSONDecodeError:
                raise InvalidInput(f"'{PROMPT_BUILDER.metadata}' row {i} is not valid JSON") from None
            documents.append(ContextDocument.from_metadata(text, fields))
        name = read_string(request, PROMPT_BUILDER.template, required=False) or self.settings.template
        prompt = self.builder.build(name, query, documents)
        stop = self.builder.spec(name).stop
        return pb_utils.InferenceResponse([string_tensor(PROMPT_BUILDER.prompt, [prompt]),
                                           string_tensor(PROMPT_BUILDER.stop, stop)])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._build(request))
            except InvalidInput as exc:
                responses.append(error_response(exc))
        return responses
