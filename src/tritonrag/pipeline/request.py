"""What a caller may set per RAG request, validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.kb.batched_search import check_top_k
from tritonrag.kb.filters import Filter, parse_filter
from tritonrag.prompts.builder import TEMPLATES
from tritonrag.settings import RagSettings, RetrieverSettings
from tritonrag.validation import as_float, as_int


@dataclass(frozen=True)
class RagParams:
    """What a caller may set per request through `parameters` (HTTP generate JSON or gRPC)."""

    top_k: int
    template: str
    max_tokens: int
    temperature: float
    stream: bool = False
    top_p: float | None = None
    seed: int | None = None
    filter: Filter | None = None

    @classmethod
    def from_parameters(
        cls, raw: Mapping[str, Any], rag: RagSettings, retriever: RetrieverSettings
    ) -> RagParams:
        known = {"top_k", "template", "max_tokens", "temperature", "top_p", "seed", "stream", "filter"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInput(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        top_k = check_top_k(raw.get("top_k", rag.top_k), retriever)
        template = raw.get("template", rag.template)
        if not isinstance(template, str) or template not in TEMPLATES:
            raise InvalidInput(f"unknown template {template!r}; available templates: {', '.join(sorted(TEMPLATES))}")
        max_tokens = as_int(raw.get("max_tokens", rag.max_tokens), "max_tokens")
        temperature = as_float(raw.get("temperature", rag.temperature), "temperature")
        stream = raw.get("stream", rag.stream_default)
        if not isinstance(stream, bool):
            raise InvalidInput(f"stream must be true or false, got {stream!r}")
        top_p = raw.get("top_p")
        seed = raw.get("seed")
        return cls(
            top_k=top_k,
            template=template,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=stream,
            top_p=None if top_p is None else as_float(top_p, "top_p"),
            seed=None if seed is None else as_int(seed, "seed"),
            filter=parse_filter(raw.get("filter")),
        )

    def sampling(self) -> dict[str, Any]:
        """The generator's sampling inputs; the generator validates them against its own limits."""
        out: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.seed is not None:
            out["seed"] = self.seed
        return out
