"""What a caller may set per RAG request (`parameters` of HTTP generate or gRPC), validated.

Every value a request leaves out stays unset: the stage that owns the setting applies its own default (top_k: the
retriever's, template: the prompt builder's, max_tokens and temperature: the generator's), so a default exists once.
The orchestrator's own options (stream, min_score, flow) take the [rag] settings' defaults. A JSON schema or
json_object asks for structured output: the generator constrains decoding and checks the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.kb.batched_search import MODES, check_top_k
from tritonrag.kb.filters import Filter, parse_filter
from tritonrag.kb.fusion import FUSIONS
from tritonrag.prompts.registry import NAME as TEMPLATE_NAME
from tritonrag.serving.contract import RAG
from tritonrag.settings import RagSettings, RetrieverSettings
from tritonrag.validation import as_choice, as_float, as_int, as_seed, load_json, names, shown


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
    system_prompt: str | None = None  # replaces the template's (the prompt builder bounds and neutralises it)
    json_schema: dict[str, Any] | None = None  # the answer must be JSON following it (the generator checks it)
    json_object: bool = False  # the answer must be a JSON object
    flow: str | None = None  # None: the pipeline's default flow
    mode: str | None = None  # retrieval mode; None: the retriever's default
    candidates: int | None = None  # hybrid depth; None: the retriever's default
    fusion: str | None = None  # hybrid fusion; None: the retriever's default
    rerank: bool = False
    rerank_candidates: int = 20  # passages retrieved for the reranker to score (at least keep)
    keep: int = 4  # passages kept after reranking: top_k, or the retriever's default
    cache: bool = True  # false: bypass the answer cache (tritonrag.pipeline.answer_cache)
    tenant: str = ""  # whose answer-cache entries this request may read (the ingress: the API key's name)

    @property
    def retrieved(self) -> int | None:
        """How many passages to retrieve: the reranker's candidates, or top_k (None: the retriever's default)."""
        return self.rerank_candidates if self.rerank else self.top_k

    @classmethod
    def from_parameters(cls, raw: Mapping[str, Any], rag: RagSettings, retriever: RetrieverSettings) -> RagParams:
        unknown = sorted(set(raw) - set(RAG.parameters))
        if unknown:
            raise InvalidInput(f"unknown parameter(s) {names(unknown)}; known: {', '.join(sorted(RAG.parameters))}")
        template = raw.get(RAG.template)
        if RAG.template in raw and (not isinstance(template, str) or not TEMPLATE_NAME.match(template)):
            raise InvalidInput(f"template must name a template (`tritonrag templates` lists them), "
                               f"got {shown(template)}")
        stream = _flag(raw, RAG.stream, rag.stream_default)
        system_prompt = raw.get(RAG.system_prompt)
        if RAG.system_prompt in raw and not isinstance(system_prompt, str):
            raise InvalidInput(f"system_prompt must be a string, got {shown(system_prompt)}")
        flow = raw.get(RAG.flow)
        if RAG.flow in raw and not isinstance(flow, str):
            raise InvalidInput(f"flow must name a flow (rag, qa-checked, rag-chat, llm), got {shown(flow)}")

        def optional(name: str, convert: Any) -> Any:  # absent: unset; present (even null): validated
            return convert(raw[name], name) if name in raw else None

        top_k = check_top_k(raw[RAG.top_k], retriever) if RAG.top_k in raw else None
        keep = top_k or retriever.top_k_default
        rerank = _flag(raw, RAG.rerank, rag.rerank)
        if RAG.rerank_candidates in raw:
            rerank_candidates = check_top_k(raw[RAG.rerank_candidates], retriever, RAG.rerank_candidates)
            if rerank and rerank_candidates < keep:
                raise InvalidInput(f"rerank_candidates ({rerank_candidates}) must be at least top_k ({keep}): the "
                                   "reranker keeps the best top_k of them")
        else:
            rerank_candidates = min(max(rag.rerank_candidates, keep), retriever.top_k_max)
        return cls(
            stream=stream,
            top_k=top_k,
            template=template,
            max_tokens=optional(RAG.max_tokens, as_int),
            temperature=optional(RAG.temperature, as_float),
            top_p=optional(RAG.top_p, as_float),
            seed=optional(RAG.seed, as_seed),
            filter=parse_filter(raw.get(RAG.filter)),
            min_score=_min_score(raw.get(RAG.min_score, rag.abstain_below_score)),
            system_prompt=system_prompt,
            json_schema=_schema(raw.get(RAG.json_schema)),
            json_object=_flag(raw, RAG.json_object, False),
            flow=flow,
            mode=optional(RAG.mode, lambda value, name: as_choice(value, name, MODES)),
            candidates=optional(RAG.candidates, lambda value, name: check_top_k(value, retriever, name)),
            fusion=optional(RAG.fusion, lambda value, name: as_choice(value, name, FUSIONS)),
            rerank=rerank,
            rerank_candidates=rerank_candidates,
            keep=keep,
            cache=_flag(raw, RAG.cache, True),
            tenant=_tenant(raw.get(RAG.cache_tenant, "")),
        )

    @property
    def structured(self) -> bool:
        """The request asks for a JSON answer."""
        return self.json_schema is not None or self.json_object

    def sampling(self) -> dict[str, Any]:
        """The sampling values this request sets; the generator validates them and fills in its defaults."""
        values = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "seed": self.seed, "json_schema": self.json_schema, "json_object": self.json_object or None}
        return {name: value for name, value in values.items() if value is not None}


def _flag(raw: Mapping[str, Any], name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, got {shown(value)}")
    return value


def _schema(value: Any) -> dict[str, Any] | None:
    """A JSON schema sent as a JSON string (request parameters are scalars) or, in-process, as a mapping."""
    if value is None:
        return None
    if isinstance(value, str):
        value = load_json(value, "json_schema", "; send a JSON schema object as a string")
    if not isinstance(value, Mapping):
        raise InvalidInput("json_schema must be a JSON object (a JSON schema), e.g. "
                           '\'{"type": "object", "properties": {"name": {"type": "string"}}}\'')
    return dict(value)


def _min_score(value: Any) -> float:
    """A score threshold: passages' scores are cosine similarities, so between -1 and 1 (0 disables)."""
    score = as_float(value, RAG.min_score)
    if not -1.0 <= score <= 1.0:
        raise InvalidInput(f"min_score must be between -1 and 1 (a cosine similarity; 0 disables), got {score}")
    return score


MAX_TENANT_CHARS = 200


def _tenant(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TENANT_CHARS:
        raise InvalidInput(f"{RAG.cache_tenant} must be a string of at most {MAX_TENANT_CHARS} characters (the API "
                           f"key's name), got {shown(value)}")
    return value
