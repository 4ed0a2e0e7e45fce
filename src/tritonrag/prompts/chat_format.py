"""A generator model's own conversation format: its tokenizer's chat template, rendered in Jinja2's sandbox.

Read from the model's folder (``chat_template.jinja``, or ``chat_template`` in ``tokenizer_config.json``), or for a
Hugging Face id that is not a folder, from its tokenizer where the machine has it. A model without one (a base
model, StableBeluga) gets the ``### System: / ### User: / ### Assistant:`` layout. The model's special tokens
(``<|im_start|>``, ``<end_of_turn>``...) are what retrieved text and questions must never carry
(tritonrag.prompts.neutralise).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tritonrag.prompts.neutralise import Neutraliser

log = logging.getLogger(__name__)

PLAIN_TEMPLATE = """{% for m in messages %}### {{ m.role | capitalize }}:
{{ m.content }}

{% endfor %}{% if add_generation_prompt %}### Assistant:
{% endif %}"""
PLAIN_STOP = ("### User:", "### System:")


class ChatTemplateError(ValueError):
    """A model's chat template cannot render a conversation; the message names the model."""


def _raise(message: str) -> None:
    raise TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    # what Hugging Face chat templates expect besides Jinja's builtins
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("content", ""))
    return str(value or "")


@dataclass(frozen=True)
class ChatFormat:
    """How one model reads a conversation: its chat template (None: the plain ### layout) and special tokens."""

    name: str  # the model it belongs to, for messages
    template: str | None = None
    special_tokens: tuple[str, ...] = ()
    bos_token: str = ""
    eos_token: str = ""

    @cached_property
    def neutraliser(self) -> Neutraliser:
        """What defuses this model's special tokens in untrusted text (built once: a tokenizer may have thousands)."""
        return Neutraliser(self.special_tokens)

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings the layout needs (a chat template's model ends its turn with its own end token)."""
        return () if self.template else PLAIN_STOP

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for ``messages`` (role/content), ending where the assistant's answer begins."""
        source = self.template or PLAIN_TEMPLATE
        try:
            return _compiled(source).render(messages=[dict(m) for m in messages], add_generation_prompt=True,
                                            bos_token=self.bos_token, eos_token=self.eos_token, tools=None)
        except TemplateError as exc:
            raise ChatTemplateError(f"the chat template of {self.name} cannot render the prompt: {exc}") from None

    @classmethod
    def plain(cls, name: str = "a model without a chat template") -> ChatFormat:
        return cls(name)

    @classmethod
    def for_model(cls, model: str) -> ChatFormat:
        """The format of ``model`` (a folder, or a Hugging Face id the machine has); plain when it has none."""
        folder = Path(model)
        if folder.is_dir():
            return cls._from_folder(folder)
        try:  # a Hugging Face id: its tokenizer, from the local cache only
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        except Exception as exc:
            log.warning("no tokenizer found for %s (%s): prompts use the plain ### layout", model, exc)
            return cls.plain(model)
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        return cls(model, template, tuple(tokenizer.all_special_tokens), _token_text(tokenizer.bos_token),
                   _token_text(tokenizer.eos_token))

    @classmethod
    def _from_folder(cls, folder: Path) -> ChatFormat:
        config = _read_json(folder / "tokenizer_config.json")
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif isinstance(config.get("chat_template"), str):
            template = config["chat_template"]
        elif isinstance(config.get("chat_template"), list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in config["chat_template"] if isinstance(t, Mapping)}
            template = named.get("default")
        tokens = {_token_text(t) for t in config.get("added_tokens_decoder", {}).values()
                  if isinstance(t, Mapping) and t.get("special")}
        tokens |= {t["content"] for t in _read_json(folder / "tokenizer.json").get("added_tokens", [])
                   if isinstance(t, Mapping) and t.get("special") and t.get("content")}
        bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        tokens |= {t for t in (bos, eos) if t}
        return cls(str(folder), template, tuple(sorted(tokens)), bos, eos)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


@lru_cache(maxsize=16)
def _compiled(source: str) -> Any:
    return _environment().from_string(source)
