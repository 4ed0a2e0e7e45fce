"""Checks that turn loosely typed request values into clean Python values or a clear InvalidInput."""

from __future__ import annotations

import json
import math
import re
import reprlib
import sys
from collections.abc import Sequence
from typing import Any

from tritonrag.errors import InvalidInput

# The deepest nesting of arrays and objects a JSON request value may have: far from Python's recursion limit (which
# json.loads hits near 1000 levels), far above what any request needs (a filter: 2, a JSON schema: 32).
MAX_JSON_DEPTH = 64
MAX_SEED = 2**63 - 1  # sampling seeds: 0 to what an int64 request parameter carries
MAX_INT_DIGITS = 4300  # Python's own limit on int <-> str conversion (sys.get_int_max_str_digits)
MAX_SHOWN_DIGITS = 100  # as_int refuses integers this long: no bound of this project comes near
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3
SHOWN_CHARS = 120


def shown(value: Any) -> str:
    """``repr(value)`` cut short (strings, digits, lists, nesting), as error messages quote what a client sent."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int past Python's digit limit (reprlib cuts digits only after repr)
        text = f"an integer of about {_digits(value)} digits" if isinstance(value, int) else "a value"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def names(items: Any, most: int = 8) -> str:
    """Names a client sent (unknown parameters, fields), comma-separated, each and their number cut short."""
    listed = sorted(item if isinstance(item, str) and len(item) <= 40 else shown(item)[:40] for item in items)
    return ", ".join(listed[:most]) + (f" (and {len(listed) - most} more)" if len(listed) > most else "")


def _digits(value: int) -> int:
    return int(abs(value).bit_length() * 0.30103) + 1


def _number(value: Any, name: str, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"{name} must be {kind}, got {shown(value)}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"{name} must be {kind}, got {shown(value)}") from None
    except OverflowError:  # an int beyond a float's range
        raise InvalidInput(f"{name} is far out of range: got an integer of about {_digits(value)} digits") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{name} must be finite, got {shown(value)}")
    return number


def as_int(value: Any, name: str) -> int:
    """An integer from an int, an integral float or a numeric string (ints keep their exact value)."""
    if isinstance(value, str) and len(value) <= 100:
        try:
            value = int(value.strip())
        except ValueError:
            pass  # "1e3", "7.0": read as a float below
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 10**MAX_SHOWN_DIGITS:  # beyond any bound a caller checks (and printing it may fail)
            raise InvalidInput(f"{name} is far out of range: got an integer of about {_digits(value)} digits")
        return value
    number = _number(value, name, "an integer")
    if not number.is_integer():
        raise InvalidInput(f"{name} must be an integer, got {shown(value)}")
    return as_int(int(number), name)


def as_seed(value: Any, name: str = "seed") -> int:
    """A sampling seed: an integer from 0 to 2**63 - 1 (what a Triton request parameter, an int64, carries; vLLM
    reads -1 as "no seed", and its engine core cannot take integers past 64 bits)."""
    seed = as_int(value, name)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"{name} must be an integer between 0 and {MAX_SEED} (2**63 - 1), got {shown(seed)}")
    return seed


def as_float(value: Any, name: str) -> float:
    """A finite float from a number or a numeric string."""
    return _number(value, name, "a number")


def as_choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    """``value`` when it is one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}, got {shown(value)}")
    return value


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply arrays and objects nest in the JSON ``text`` (brackets inside strings do not count), counted up to
    ``limit`` + 1; without parsing, so a hostile value cannot exhaust the stack."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub('""', text)):
        if bracket in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def check_unicode(value: Any, what: str) -> None:
    """Every string in ``value`` (a decoded JSON value) must be encodable as UTF-8: JSON lets a client send a lone
    surrogate such as "\\ud800", which no tensor, database or tokenizer takes."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(f"{what} holds a lone surrogate (an escape such as \\ud800 that is half of a "
                                   "UTF-16 pair); send valid Unicode text") from None
        elif isinstance(item, dict):
            pending += list(item.keys()) + list(item.values())
        elif isinstance(item, (list, tuple)):
            pending += item


def load_json(text: str | bytes, what: str, hint: str = "", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a JSON request value, or raise InvalidInput naming ``what`` and what to change (``hint`` follows the
    message): not JSON, nested deeper than ``max_depth``, an integer too long to read, a lone surrogate."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start}){hint}") from None
    depth = json_depth(text, max_depth)
    if depth > max_depth:
        raise InvalidInput(f"{what} nests arrays and objects more than {max_depth} levels deep{hint}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON ({exc}){hint}") from None
    except RecursionError:  # json_depth's count missed it: refuse all the same
        raise InvalidInput(f"{what} nests arrays and objects too deeply{hint}") from None
    except ValueError:  # an integer past Python's digit limit
        limit = getattr(sys, "get_int_max_str_digits", lambda: MAX_INT_DIGITS)()
        raise InvalidInput(f"{what} holds an integer of more than {limit} digits; send smaller numbers{hint}") \
            from None
    check_unicode(value, what)
    return value


def parse_json_object(raw: str | None, what: str) -> dict[str, Any]:
    """Decode a JSON object such as Triton's request parameters; a missing or empty value means {}."""
    if not raw:
        return {}
    value = load_json(raw, what)
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
