"""Structured output: a request's ``json_schema`` / ``json_object``, validated, and a check of an answer against it.

Only the vLLM engine constrains decoding to the schema (xgrammar); the other engines refuse such a request
(``structured_unsupported``). ``check_answer`` tells whether a finished answer honours the request, for the
pipeline and the benchmarks.

Constrained decoding forces the answer's *shape*, not its length: a weak model can keep emitting digits of a
number or characters of a string until ``max_tokens`` ends the answer as invalid JSON. Schemas should bound what
they can (``maxLength`` on strings, ``maximum`` / ``minimum`` on numbers, ``maxItems`` on arrays, an ``enum`` where
the values are known) and ``additionalProperties: false``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tritonrag.errors import InvalidInput, Unsupported
from tritonrag.validation import load_json

# The longest JSON Schema a request may send, counted as compact JSON text (json.dumps with "," and ":" as
# separators, so indentation in a schema sent as a string does not count). A module constant, not a setting: the
# grammar compiler's cost grows with the schema, and no sensible answer schema comes near this.
MAX_SCHEMA_CHARS = 8000
# The deepest nesting of objects and arrays in a schema (vLLM itself allows 64): a bound that keeps the schema
# checks far from Python's recursion limit.
MAX_SCHEMA_DEPTH = 32
_REASON_CHARS = 200  # how much of a jsonschema message a reason quotes


@dataclass(frozen=True)
class StructuredOutput:
    """What a request asks the answer to be: JSON following ``schema``, or any JSON object when it is None."""

    schema: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def kind(self) -> str:
        """The request key that asked for it: "json_schema" or "json_object"."""
        return "json_object" if self.schema is None else "json_schema"

    @cached_property
    def validator(self) -> Any:
        """A jsonschema validator for the schema (its own draft, 2020-12 when it names none); None for any object."""
        if self.schema is None:
            return None
        return _validator_class(self.schema)(self.schema)


def parse_structured(raw_schema: Any, raw_object: Any, max_chars: int = MAX_SCHEMA_CHARS) -> StructuredOutput | None:
    """The structured-output request from the sampling parameters ``json_schema`` (a JSON Schema object, or a
    string holding one) and ``json_object`` (true for any JSON object); None when neither asks for it (absent,
    null, an empty string, false). Raises InvalidInput saying what to change."""
    if raw_object is not None and not isinstance(raw_object, bool):
        raise InvalidInput(f"json_object must be true or false, got {raw_object!r}")
    if isinstance(raw_schema, str) and not raw_schema.strip():
        raw_schema = None
    if raw_schema is None:
        return StructuredOutput(None) if raw_object else None
    if raw_object:
        raise InvalidInput("send either json_schema (answer follows the schema) or json_object (any JSON object), "
                           "not both")
    if isinstance(raw_schema, str):
        raw_schema = load_json(raw_schema, "json_schema", "; send a JSON Schema object")
    if not isinstance(raw_schema, dict):
        raise InvalidInput(f"json_schema must be a JSON object (a JSON Schema such as "
                           f'{{"type": "object", "properties": {{...}}}}), got {_json_type(raw_schema)}')
    if _depth(raw_schema) > MAX_SCHEMA_DEPTH:
        raise InvalidInput(f"json_schema nests objects and arrays more than {MAX_SCHEMA_DEPTH} levels deep; "
                           "flatten it")
    chars = len(json.dumps(raw_schema, separators=(",", ":"), ensure_ascii=False))
    if chars > max_chars:
        raise InvalidInput(f"json_schema is {chars} characters as compact JSON; the limit is {max_chars}: "
                           "shorten it (fewer properties, shorter descriptions)")
    dialect = raw_schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        raise InvalidInput(f"json_schema's $schema must be a string naming a JSON Schema draft, got {dialect!r}")
    from jsonschema.exceptions import SchemaError  # imported on use: the generator loads without it otherwise

    try:
        _validator_class(raw_schema).check_schema(raw_schema)
    except SchemaError as exc:
        raise InvalidInput(f"json_schema is not a valid JSON Schema: {_brief(exc)}") from None
    return StructuredOutput(raw_schema)


def check_answer(text: str, structured: StructuredOutput) -> str | None:
    """None when ``text`` is JSON that ``structured`` accepts (follows its schema, or is an object when it has
    none); otherwise a short reason (not JSON, which part breaks which rule). Leading and trailing whitespace is
    allowed; anything else around the JSON (a code fence, a sentence) is not."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"
    except (RecursionError, ValueError) as exc:  # nested too deeply; an integer past int's digit limit
        return f"not usable JSON: {str(exc) or type(exc).__name__}"
    if structured.schema is None:
        return None if isinstance(value, dict) else f"not a JSON object: got {_json_type(value)}"
    from jsonschema.exceptions import best_match

    try:
        error = best_match(structured.validator.iter_errors(value))
    except RecursionError:
        return "does not match the schema: nested too deeply to check"
    return None if error is None else f"does not match the schema: {_brief(error)}"


def structured_unsupported(engine: str) -> Unsupported:
    """The error an engine without constrained decoding answers a structured-output request with."""
    return Unsupported(
        f"structured output (json_schema / json_object) needs the vllm engine; this generator runs the {engine} "
        'engine ([generator] engine): set [generator] engine = "vllm", or drop json_schema / json_object from the '
        "sampling parameters"
    )


def _validator_class(schema: dict[str, Any]) -> Any:
    # a $schema jsonschema does not know falls back to the latest draft (what vLLM's grammar compilers do too)
    from jsonschema.validators import Draft202012Validator, validator_for

    return validator_for(schema, default=Draft202012Validator)


def _brief(error: Any) -> str:
    message = error.message if len(error.message) <= _REASON_CHARS else error.message[: _REASON_CHARS - 3] + "..."
    return f"{message} (at {error.json_path})"


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar: 0, {}: 1), counted up to MAX_SCHEMA_DEPTH + 1."""
    depth, level = 0, [value]
    while depth <= MAX_SCHEMA_DEPTH and (containers := [n for n in level if isinstance(n, (dict, list))]):
        depth += 1
        level = [child for n in containers for child in (n.values() if isinstance(n, dict) else n)]
    return depth


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
