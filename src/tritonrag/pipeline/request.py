"""What a caller may set per RAG request (`parameters` of HTTP generate or gRPC), validated.

Every value a request leaves out stays unset: the stage that owns the setting applies its own default (top_k: the
retriever's, template: the prompt builder's, max_tokens and temperature: the generator's), so a default exists once.
The orchestrator's own options (stream, min_score) take the [rag] settings' defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.kb.batched_search import check_top_k
from tritonrag.kb.filters import Filter, parse_filter
from tritonrag.prompts.builder import TEMPLATES
from tritonrag.serving.contract import RAG
from tritonrag.settings import RagSettings, RetrieverSettings
from tritonrag.validation import as_float, as_int


@dataclass(frozen=True)
class RagParams:
    """One request's options; None means "the owning stage's default"."""

    stream: bool = False
    top_k: int | None = None
    template: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    filter: Filter | None = None
    min_score: float | None = None  # abstain when the best passage scores under it; None or 0: never

    @classmethod
    def from_parameters(cls, raw: Mapping[str, Any], rag: RagSettings, retriever: RetrieverSettings) -> RagParams:
        unknown = sorted(set(raw) - set(RAG.parameters))
        if unknown:
            raise InvalidInput(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(RAG.parameters))}")
        template = raw.get(RAG.template)
        if RAG.template in raw and (not isinstance(template, str) or template not in TEMPLATES):
            raise InvalidInput(f"unknown template {template!r}; available templates: {', '.join(sorted(TEMPLATES))}")
        stream = raw.get(RAG.stream, rag.stream_default)
        if not isinstance(stream, bool):
            raise InvalidInput(f"stream must be true or false, got {stream!r}")

        def optional(name: str, convert: Any) -> Any:  # absent: unset; present (even null): validated
            return convert(raw[name], name) if name in raw else None

        return cls(
            stream=stream,
            top_k=check_top_k(raw[RAG.top_k], retriever) if RAG.top_k in raw else None,
            template=template,
            max_tokens=optional(RAG.max_tokens, as_int),
            temperature=optional(RAG.temperature, as_float),
            top_p=optional(RAG.top_p, as_float),
            seed=optional(RAG.seed, as_int),
            filter=parse_filter(raw.get(RAG.filter)),
            min_score=_min_score(raw.get(RAG.min_score, rag.abstain_below_score)),
        )

    def sampling(self) -> dict[str, Any]:
        """The sampling values this request sets; the generator validates them and fills in its defaults."""
        values = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "seed": self.seed}
        return {name: value for name, value in values.items() if value is not None}


def _min_score(value: Any) -> float:
    """A score threshold: passages' scores are cosine similarities, so between -1 and 1 (0 disables)."""
    score = as_float(value, RAG.min_score)
    if not -1.0 <= score <= 1.0:
        raise InvalidInput(f"min_score must be between -1 and 1 (a cosine similarity; 0 disables), got {score}")
    return score
