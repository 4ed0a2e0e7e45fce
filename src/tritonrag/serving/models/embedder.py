"""Triton adapter for the embedder: texts (+ optional instruction) in, L2-normalised vectors out.

All requests of one execute call are stacked into a single encode call (the Python backend hands us
the dynamic batch as a list of requests; it does not concatenate them).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from tritonrag.embedding.encoder import TextEmbedder
from tritonrag.errors import InvalidInput
from tritonrag.serving.contract import EMBEDDER
from tritonrag.serving.instance import instance_config, instance_device
from tritonrag.serving.tensors import error_response, read_strings, split_rows
from tritonrag.settings import load_settings


class TritonPythonModel:
    def initialize(self, args):
        self.settings, gpus = instance_config(args, load_settings(), EMBEDDER.model)
        self.embedder = TextEmbedder(self.settings, instance_device(gpus), gpus.memory_fraction if gpus else None)

    def _parse(self, request):
        texts = read_strings(request, EMBEDDER.text)
        if not texts:
            raise InvalidInput(f"input '{EMBEDDER.text}' is empty: send at least one string")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"input '{EMBEDDER.text}' row {i} is empty or whitespace")
            if len(text) > self.settings.max_text_chars:
                raise InvalidInput(f"input '{EMBEDDER.text}' row {i} has {len(text)} characters; the limit is "
                                   f"{self.settings.max_text_chars}")
        instructions = read_strings(request, EMBEDDER.instruction, required=False) or [""]
        if len(instructions) == 1:
            instructions = instructions * len(texts)
        elif len(instructions) != len(texts):
            raise InvalidInput(f"input '{EMBEDDER.instruction}' needs 1 or {len(texts)} rows, got {len(instructions)}")
        return texts, instructions

    def execute(self, requests):
        parsed, texts, instructions = [], [], []
        for request in requests:
            try:
                rows, rows_instructions = self._parse(request)
            except InvalidInput as exc:
                parsed.append(exc)
                continue
            parsed.append(len(rows))
            texts += rows
            instructions += rows_instructions
        try:
            vectors = self.embedder.encode_mixed(texts, instructions)
        except Exception as exc:
            return [error_response(exc) for _ in requests]
        pieces = iter(split_rows(vectors, [p for p in parsed if isinstance(p, int)]))
        return [
            error_response(p) if isinstance(p, Exception)
            else pb_utils.InferenceResponse([pb_utils.Tensor(EMBEDDER.embedding, np.ascontiguousarray(next(pieces)))])
            for p in parsed
        ]
