"""Named prompt templates rendered in a Jinja2 sandbox; retrieved text is data, never template code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tritonrag.errors import InvalidInput


@dataclass(frozen=True)
class TemplateSpec:
    """A template and the stop strings that suit the model family it was written for."""

    name: str
    description: str
    stop: tuple[str, ...]


TEMPLATES: dict[str, TemplateSpec] = {
    spec.name: spec
    for spec in (
        TemplateSpec(
            "beluga_qa",
            "The seed design's prompt for instruction-tuned models in StableBeluga's "
            "### System / ### User / ### Assistant format.",
            ("### User:", "### System:"),
        ),
        TemplateSpec(
            "completion_qa",
            "A plain completion prompt (passages, then the question as a sentence to finish) for base models "
            "such as Gemma-3-270M.",
            ("\n\n", "\nPassage", "A reader asked:"),
        ),
    )
}


@dataclass(frozen=True)
class ContextDocument:
    """What a template may read of a retrieved chunk."""

    text: str
    title: str = ""
    source: str = ""
    section: str = ""

    @classmethod
    def from_metadata(cls, text: str, metadata: Mapping[str, Any]) -> ContextDocument:
        """A chunk's text with the fields of its metadata a template may read (others are ignored)."""
        return cls(text, **{k: str(metadata.get(k, "")) for k in ("title", "source", "section")})


class PromptBuilder:
    """Render named templates. Templates come only from this package; user data only fills variables."""

    def __init__(self, max_query_chars: int, max_context_chars: int) -> None:
        self.max_query_chars = max_query_chars
        self.max_context_chars = max_context_chars
        self._env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False, trim_blocks=True
        )
        folder = resources.files("tritonrag.prompts").joinpath("templates")
        self._templates = {
            name: self._env.from_string(folder.joinpath(f"{name}.j2").read_text()) for name in TEMPLATES
        }

    @staticmethod
    def names() -> list[str]:
        return sorted(TEMPLATES)

    def spec(self, name: str) -> TemplateSpec:
        if name not in TEMPLATES:
            raise InvalidInput(f"unknown template {name!r}; available templates: {', '.join(self.names())}")
        return TEMPLATES[name]

    def build(self, name: str, query: str, documents: Sequence[ContextDocument | Mapping[str, str]]) -> str:
        """Render template ``name``; context beyond ``max_context_chars`` is dropped whole-document-wise."""
        self.spec(name)
        query = query.strip()
        if not query:
            raise InvalidInput("query is empty: send the question text")
        if len(query) > self.max_query_chars:
            raise InvalidInput(f"query has {len(query)} characters; the limit is {self.max_query_chars}")
        docs = [d if isinstance(d, ContextDocument) else ContextDocument(**d) for d in documents]
        kept, used = [], 0
        for doc in docs:
            if used + len(doc.text) > self.max_context_chars and kept:
                break
            kept.append(doc)
            used += len(doc.text)
        return self._templates[name].render(query=query, documents=kept).strip()
