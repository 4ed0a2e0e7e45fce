"""Per-request sampling parameters, validated against the server's limits, and how a generation ended."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.generation.structured import StructuredOutput, parse_structured
from tritonrag.settings import GeneratorSettings
from tritonrag.validation import as_float, as_int, as_seed, check_unicode, load_json, names, shown

MAX_TOP_K = 2**31 - 1


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings, validated against the server's limits."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0
    # json_schema / json_object: the answer must be JSON (only the vllm engine does it; the others refuse)
    structured: StructuredOutput | None = None

    @classmethod
    def from_request(cls, raw: Mapping[str, Any], settings: GeneratorSettings) -> SamplingParams:
        """Build from a mapping of request values (missing keys take the configured defaults)."""
        known = {"max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "repetition_penalty", "json_schema",
                 "json_object"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInput(f"unknown sampling parameter(s) {names(unknown)}; known: {', '.join(sorted(known))}")
        max_tokens = as_int(raw.get("max_tokens", settings.max_tokens_default), "max_tokens")
        if not 1 <= max_tokens <= settings.max_tokens_limit:
            raise InvalidInput(f"max_tokens must be between 1 and {settings.max_tokens_limit}, got {shown(max_tokens)}")
        temperature = as_float(raw.get("temperature", settings.temperature_default), "temperature")
        if not 0.0 <= temperature <= 2.0:
            raise InvalidInput(f"temperature must be between 0 and 2, got {temperature}")
        top_p = as_float(raw.get("top_p", settings.top_p_default), "top_p")
        if not 0.0 < top_p <= 1.0:
            raise InvalidInput(f"top_p must be in (0, 1], got {top_p}")
        top_k = as_int(raw.get("top_k", 0), "top_k")
        if not 0 <= top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k must be >= 0 (0 disables it) and at most {MAX_TOP_K}, got {shown(top_k)}")
        penalty = as_float(raw.get("repetition_penalty", settings.repetition_penalty_default), "repetition_penalty")
        if not 0.5 <= penalty <= 2.0:
            raise InvalidInput(f"repetition_penalty must be between 0.5 and 2, got {penalty}")
        seed = raw.get("seed")
        seed = None if seed is None else as_seed(seed)
        stop = raw.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)):
            raise InvalidInput(f"stop must be a string or a list of strings, got {shown(stop)}")
        stop = tuple(stop)
        check_unicode(stop, "stop")
        if len(stop) > settings.max_stop_strings:
            raise InvalidInput(f"at most {settings.max_stop_strings} stop strings, got {len(stop)}")
        for s in stop:
            if not isinstance(s, str) or not s or len(s) > settings.max_stop_chars:
                raise InvalidInput(f"each stop string must be 1 to {settings.max_stop_chars} characters, "
                                   f"got {shown(s)}")
        schema = raw.get("json_schema")
        if isinstance(schema, str) and schema.strip():  # read here: nesting, long numbers, lone surrogates
            schema = load_json(schema, "json_schema", "; send a JSON Schema object")
        json_object = raw.get("json_object")
        if json_object is not None and not isinstance(json_object, bool):
            raise InvalidInput(f"json_object must be true or false, got {shown(json_object)}")
        structured = parse_structured(schema, json_object)
        return cls(max_tokens, temperature, top_p, top_k, stop, seed, penalty, structured)


@dataclass(frozen=True)
class Completion:
    """How a generation ended."""

    finish_reason: str  # "stop" (stop string or end of sequence), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int
