"""Checks that turn loosely typed request values into clean Python values or a clear InvalidInput."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from tritonrag.errors import InvalidInput


def _number(value: Any, name: str, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"{name} must be {kind}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"{name} must be {kind}, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{name} must be finite, got {value!r}")
    return number


def as_int(value: Any, name: str) -> int:
    """An integer from an int, an integral float or a numeric string."""
    number = _number(value, name, "an integer")
    if not number.is_integer():
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    return int(number)


def as_float(value: Any, name: str) -> float:
    """A finite float from a number or a numeric string."""
    return _number(value, name, "a number")


def as_choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    """``value`` when it is one of ``allowed``."""
    if value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def parse_json_object(raw: str | None, what: str) -> dict[str, Any]:
    """Decode a JSON object such as Triton's request parameters; a missing or empty value means {}."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value
