"""Metadata filters: restrict retrieval to chunks whose document matches every given field.

A filter is a JSON object. Each key is ``source``, ``title`` or ``section``, or a field of the document's
metadata (e.g. ``doc_id`` for JSONL rows); each value is one value or a list of accepted values (turned into SQL by
tritonrag.kb.docstore.filter_clause):

    {"source": "around_the_world.txt"}
    {"source": ["a.md", "b.md"], "year": 2021}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tritonrag.errors import InvalidInput

MAX_FILTER_VALUES = 1000
MAX_FILTER_CHARS = 65536
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")




Scalar = str | int | float | bool


@dataclass(frozen=True)
class Filter:
    """A validated filter: field -> accepted values (sorted, so equal filters compare and hash equal)."""

    fields: tuple[tuple[str, tuple[Scalar, ...]], ...]

    def to_json(self) -> str:
        return json.dumps({name: list(values) for name, values in self.fields})


def parse_filter(raw: Any) -> Filter | None:
    """Validate a filter given as a JSON string or a mapping; None or an empty object means no filter."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(raw, str):
        if len(raw) > MAX_FILTER_CHARS:
            raise InvalidInput(f"filter is {len(raw)} characters; the limit is {MAX_FILTER_CHARS}")
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"filter is not valid JSON ({exc.msg}); send an object like "
                               '{"source": "book.txt"}') from None
    if not isinstance(raw, dict):
        raise InvalidInput(f'filter must be a JSON object like {{"source": "book.txt"}}, got {type(raw).__name__}')
    fields = []
    for name, value in sorted(raw.items()):
        if not isinstance(name, str) or not _FIELD.match(name):
            raise InvalidInput(f"filter field {name!r} is not a valid name (letters, digits, _ and -)")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise InvalidInput(f"filter field {name!r} has an empty list of values")
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidInput(f"filter field {name!r} has {len(values)} values; the limit is {MAX_FILTER_VALUES}")
        for v in values:
            if not isinstance(v, Scalar) or (isinstance(v, float) and v != v):
                raise InvalidInput(f"filter field {name!r}: values must be strings, numbers or booleans, got {v!r}")
        fields.append((name, tuple(sorted(set(values), key=lambda v: (type(v).__name__, v)))))
    return Filter(tuple(fields)) if fields else None
