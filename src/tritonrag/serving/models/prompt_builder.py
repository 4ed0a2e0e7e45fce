"""Triton adapter for the prompt builder: query + retrieved passages + template (and optionally a system prompt,
the target generator, a JSON schema, an answer to review, a conversation's earlier turns) in, the prompt and what the
pipeline needs of it out."""

from dataclasses import replace

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.errors import InvalidInput
from tritonrag.prompts.builder import ContextDocument, prompt_builder
from tritonrag.prompts.history import parse_history
from tritonrag.serving.contract import PROMPT_BUILDER
from tritonrag.serving.instance import instance_config, served_generators
from tritonrag.serving.tensors import error_response, read_string, read_strings, string_tensor
from tritonrag.settings import load_settings
from tritonrag.validation import load_json

P = PROMPT_BUILDER


class TritonPythonModel:
    def initialize(self, args):
        settings = load_settings()
        self.settings, _ = instance_config(args, settings, P.model)
        settings = replace(settings, prompt_builder=self.settings)  # the spec's overrides of this section
        self.builder = prompt_builder(settings, served_generators(args, settings))

    def _documents(self, request):
        texts = read_strings(request, P.context, required=False) or []
        metadata = read_strings(request, P.metadata, required=False) or ["{}"] * len(texts)
        if len(metadata) != len(texts):
            raise InvalidInput(f"'{P.metadata}' has {len(metadata)} rows but '{P.context}' has {len(texts)}")
        documents = []
        for i, (text, meta) in enumerate(zip(texts, metadata)):
            fields = load_json(meta, f"'{P.metadata}' row {i}", "; send a JSON object such as the retriever's")
            if not isinstance(fields, dict):
                raise InvalidInput(f"'{P.metadata}' row {i} must be a JSON object")
            documents.append(ContextDocument.from_metadata(text, fields))
        return documents

    def _build(self, request):
        optional = {name: read_string(request, name, required=False)
                    for name in (P.template, P.system_prompt, P.generator, P.json_schema, P.answer)}
        built = self.builder.build(optional[P.template] or self.settings.template, read_string(request, P.query),
                                   self._documents(request), optional[P.system_prompt], optional[P.generator],
                                   optional[P.json_schema] or "", optional[P.answer] or "",
                                   parse_history(read_string(request, P.history, required=False), name=P.history))
        return pb_utils.InferenceResponse([
            string_tensor(P.prompt, [built.text]), string_tensor(P.stop, list(built.stop)),
            pb_utils.Tensor(P.passages, np.array([built.passages], np.int32)),
            pb_utils.Tensor(P.json_output, np.array([built.json_output], bool)),
            pb_utils.Tensor(P.order, np.array(built.order or range(built.passages), np.int32)),
        ])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._build(request))
            except InvalidInput as exc:
                responses.append(error_response(exc))
        return responses
