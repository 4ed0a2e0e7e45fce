"""A conversation's earlier turns (the ``history`` input of rag and of the prompt builder): validated from JSON, and
bounded by tokens of the generator model's tokenizer (its folder's tokenizer.json, else an estimate).

History is a JSON list of ``{"role": "user" | "assistant", "content": "..."}``, oldest first: the turns before the
question, which travels on its own (rag's text_input, the prompt builder's query).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonrag.errors import InvalidInput
from tritonrag.validation import check_unicode, load_json, shown

log = logging.getLogger(__name__)

ROLES = ("user", "assistant")
KEYS = frozenset({"role", "content"})
FORMAT = 'a JSON list of {"role": "user" or "assistant", "content": "..."}, oldest first'
CHARS_PER_TOKEN = 4  # the estimate for a model without a tokenizer.json
TURN_OVERHEAD_TOKENS = 4  # what a chat template adds around a turn's content (role markers, end of turn)


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def parse_history(value: str | Sequence[Any] | None, max_messages: int | None = None,
                  name: str = "history") -> tuple[Turn, ...]:
    """The turns of ``value`` (its JSON text, or, in process, the list itself); None or "" is no history.

    Raises InvalidInput saying what to change: not JSON, not a list, more than ``max_messages`` messages, a message
    that is not exactly ``{"role": "user"|"assistant", "content": str}``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    if isinstance(value, str):
        value = load_json(value, f"input '{name}'", f"; send {FORMAT}", max_depth=2)
    else:
        check_unicode(value, f"input '{name}'")
    if not isinstance(value, (list, tuple)):
        raise InvalidInput(f"input '{name}' must be {FORMAT}; got {_kind(value)}")
    if max_messages is not None and len(value) > max_messages:
        raise InvalidInput(f"input '{name}' has {len(value)} messages; the limit is {max_messages}: send only the "
                           "most recent ones")
    return tuple(_turn(item, f"{name}[{i}]") for i, item in enumerate(value))


def _name(key: Any) -> str:
    text = key if isinstance(key, str) else shown(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _turn(item: Any, where: str) -> Turn:
    if isinstance(item, Turn):
        return item
    if not isinstance(item, dict):
        raise InvalidInput(f'{where} must be an object {{"role": ..., "content": ...}}, got {_kind(item)}')
    if set(item) != KEYS:
        missing, unknown = sorted(KEYS - set(item)), sorted(_name(key) for key in set(item) - KEYS)
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                   ([f"has unknown key(s) {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}"]
                    if unknown else [])
        raise InvalidInput(f"{where} {' and '.join(problems)}; a message has exactly the keys role and content")
    role, content = item["role"], item["content"]
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidInput(f"{where}.role must be user or assistant, got {shown(role)}")
    if not isinstance(content, str):
        raise InvalidInput(f"{where}.content must be a string, got {_kind(content)}")
    return Turn(role, content)


def history_json(turns: Sequence[Turn]) -> str:
    """The JSON of ``turns``, as the history inputs take it."""
    return json.dumps([t.to_dict() for t in turns], ensure_ascii=False)


def recent_turns(turns: Sequence[Turn], budget: int, count_tokens: Callable[[str], int],
                 overhead: int = TURN_OVERHEAD_TOKENS) -> list[Turn]:
    """The most recent turns whose tokens (each one's content plus ``overhead``) fit ``budget``: whole turns, the
    oldest dropped first. When the budget cuts the history, a reply left at its start goes too (its question did)."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        used += count_tokens(turn.content) + overhead
        if used > budget:
            break
        kept.append(turn)
    kept.reverse()
    if len(kept) < len(turns):
        while kept and kept[0].role == "assistant":
            kept.pop(0)
    return kept


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` for a model without a tokenizer: about one per four characters."""
    return -(-len(text) // CHARS_PER_TOKEN)


class TokenCounter:
    """Counts tokens as a model reads text: its tokenizer (``tokenizers``, from tokenizer.json), else the estimate."""

    def __init__(self, tokenizer: Any = None, name: str = "") -> None:
        self._tokenizer = tokenizer
        self.name = name

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def __call__(self, text: str) -> int:
        if self._tokenizer is None:
            return estimate_tokens(text)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    @classmethod
    def for_model(cls, model: str) -> TokenCounter:
        """The counter of ``model`` (a folder): its tokenizer.json when it has one and it loads, else the estimate."""
        path = Path(model).expanduser() / "tokenizer.json"
        if not path.is_file():
            return cls(None, model)
        try:
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(path)), model)
        except Exception as exc:  # an unreadable tokenizer: estimate rather than refuse every conversation
            log.warning("cannot load %s (%s): history tokens are estimated", path, exc)
            return cls(None, model)
