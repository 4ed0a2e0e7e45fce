"""Metadata filters: restrict retrieval to chunks whose document matches every given field.

A filter is a JSON object. Each key is ``source``, ``title`` or ``section``, or a field of the document's
metadata (e.g. ``doc_id`` for JSONL rows); each value is one value or a list of accepted values (turned into SQL by
tritonrag.kb.docstore.filter_clause):

    {"source": "around_the_world.txt"}
    {"source": ["a.md", "b.md"], "year": 2021}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.validation import check_unicode, load_json, shown

MAX_FILTER_VALUES = 1000  # per field
MAX_FILTER_FIELDS = 64
MAX_FILTER_TOTAL = 4000  # values of all fields: each is a bound SQL parameter (SQLite allows 32766 per statement)
MAX_FILTER_CHARS = 65536
MAX_FILTER_DEPTH = 2  # an object whose values are scalars or lists of scalars
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
EXAMPLE = '{"source": "book.txt"} or {"source": ["a.md", "b.md"], "year": 2021}'

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Filter:
    """A validated filter: field -> accepted values (sorted, so equal filters compare and hash equal)."""

    fields: tuple[tuple[str, tuple[Scalar, ...]], ...]

    def to_json(self) -> str:
        return json.dumps({name: list(values) for name, values in self.fields})


def parse_filter(raw: Any) -> Filter | None:
    """Validate a filter given as a JSON string or a mapping; None or an empty object means no filter."""
    if raw is None or raw == "" or raw == b"":
        return None
    if isinstance(raw, (bytes, str)):
        if len(raw) > MAX_FILTER_CHARS:
            raise InvalidInput(f"filter is {len(raw)} characters; the limit is {MAX_FILTER_CHARS}")
        raw = load_json(raw, "filter", f"; send an object like {EXAMPLE}", max_depth=MAX_FILTER_DEPTH)
    else:
        check_unicode(raw, "filter")
    if not isinstance(raw, dict):
        raise InvalidInput(f"filter must be a JSON object like {EXAMPLE}, got {type(raw).__name__}")
    if len(raw) > MAX_FILTER_FIELDS:
        raise InvalidInput(f"filter has {len(raw)} fields; the limit is {MAX_FILTER_FIELDS}")
    for name in raw:
        if not isinstance(name, str) or not _FIELD.match(name):
            raise InvalidInput(f"filter field {shown(name)} is not a valid name (a letter or _, then letters, digits, "
                               "_ and -, at most 64 characters)")
    total = sum(len(v) if isinstance(v, list) else 1 for v in raw.values())
    if total > MAX_FILTER_TOTAL:
        raise InvalidInput(f"filter has {total} values in all; the limit is {MAX_FILTER_TOTAL}")
    fields = []
    for name, value in sorted(raw.items()):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise InvalidInput(f"filter field {name!r} has an empty list of values")
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidInput(f"filter field {name!r} has {len(values)} values; the limit is {MAX_FILTER_VALUES}")
        for v in values:
            if not isinstance(v, Scalar):
                raise InvalidInput(f"filter field {name!r}: values must be strings, numbers or booleans (one, or a "
                                   f"list of them), got {shown(v)}")
            if isinstance(v, float) and not math.isfinite(v):
                raise InvalidInput(f"filter field {name!r}: values must be strings, numbers or booleans, and numbers "
                                   f"finite, got {v!r}")
            if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
                raise InvalidInput(f"filter field {name!r}: integers must fit in 64 bits, got {shown(v)}")
        # 1, 1.0 and true are equal in Python but not to the database: keep one of each type
        unique = {(type(v).__name__, v): v for v in values}
        fields.append((name, tuple(unique[key] for key in sorted(unique))))
    return Filter(tuple(fields)) if fields else None
