"""Build a generator's prompt: a named template renders the task (question, numbered passages, schema), the target
model's own chat template wraps it with the system prompt. Everything a user or a document supplies is data: it is
neutralised (tritonrag.prompts.neutralise) and fills variables of templates rendered in Jinja2's sandbox."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tritonrag.errors import InvalidInput
from tritonrag.prompts.chat_format import ChatFormat
from tritonrag.prompts.registry import TemplateSpec, load_templates
from tritonrag.serving.contract import GENERATOR
from tritonrag.settings import Settings


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


@dataclass(frozen=True)
class BuiltPrompt:
    """The prompt text, its stop strings, how many passages it holds (numbered 1..passages, what an answer may
    cite), and whether the template asks for a JSON answer."""

    text: str
    stop: tuple[str, ...]
    passages: int
    json_output: bool = False


class PromptBuilder:
    """Render registered templates for a generator's chat format; user data only fills variables."""

    def __init__(self, max_query_chars: int, max_context_chars: int, max_system_chars: int = 4000,
                 template_dir: str | None = None,
                 chat_format: Callable[[str | None], ChatFormat] = lambda _: ChatFormat.plain()) -> None:
        self.max_query_chars = max_query_chars
        self.max_context_chars = max_context_chars
        self.max_system_chars = max_system_chars
        self._chat_format = chat_format
        self._specs = load_templates(template_dir)
        env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
                                            trim_blocks=True)
        self._templates = {name: env.from_string(spec.source) for name, spec in self._specs.items()}

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[TemplateSpec]:
        return [self._specs[name] for name in self.names()]

    def spec(self, name: str) -> TemplateSpec:
        if name not in self._specs:
            raise InvalidInput(f"unknown template {name!r}; available templates: {', '.join(self.names())}")
        return self._specs[name]

    def build(self, name: str, query: str, documents: Sequence[ContextDocument | Mapping[str, str]],
              system_prompt: str | None = None, generator: str | None = None, schema: str = "",
              answer: str = "") -> BuiltPrompt:
        """Render template ``name`` for the chat format of ``generator`` (None: the default generator's).

        Passages beyond ``max_context_chars`` are dropped whole, from the last; ``system_prompt`` (None: the
        template's) replaces the template's system prompt.
        """
        spec = self.spec(name)
        query = query.strip()
        if not query:
            raise InvalidInput("query is empty: send the question text")
        if len(query) > self.max_query_chars:
            raise InvalidInput(f"query has {len(query)} characters; the limit is {self.max_query_chars}")
        if system_prompt is not None:
            if spec.kind != "chat":
                raise InvalidInput(f"template {name!r} is a completion template without a system prompt; "
                                   "use a chat template (qa, summarize, extract) to send system_prompt")
            if not system_prompt.strip() or len(system_prompt) > self.max_system_chars:
                raise InvalidInput(f"system_prompt must hold 1 to {self.max_system_chars} characters, "
                                   f"got {len(system_prompt.strip())}")
        chat = self._chat_format(generator)
        clean = chat.neutraliser
        docs = [d if isinstance(d, ContextDocument) else ContextDocument(**d) for d in documents]
        kept, used = [], 0
        for doc in docs:
            if used + len(doc.text) > self.max_context_chars and kept:
                break
            kept.append(doc)
            used += len(doc.text)
        variables = {
            "query": clean.inline(query),
            "documents": [{"n": i, "text": clean.inline(d.text), "title": clean.inline(d.title),
                           "source": clean.inline(d.source), "section": clean.inline(d.section)}
                          for i, d in enumerate(kept, 1)],
            "schema": clean.text(schema),
            "answer": clean.inline(answer),
        }
        body = self._templates[name].render(**variables).strip()
        if spec.kind == "completion":
            return BuiltPrompt(body, spec.stop, len(kept), spec.json_output)
        system = clean.text(system_prompt if system_prompt is not None else spec.system).strip()
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": body}]
        return BuiltPrompt(chat.render(messages), tuple(dict.fromkeys(spec.stop + chat.stop)), len(kept),
                           spec.json_output)


def chat_formats(setting: str, default_model: str,
                 generator_models: Mapping[str, str | None] | None = None) -> Callable[[str | None], ChatFormat]:
    """The chat format of each served generator, by name (None: the default ``generator``), read once per model.

    ``setting`` is [prompt_builder] chat_template: "auto" (each model's own), "plain", or a template file's path.
    ``generator_models`` maps the served generators' names to their models (None: ``default_model``).
    """
    models = {GENERATOR.model: default_model}
    models.update({name: model or default_model for name, model in (generator_models or {}).items()})
    cache: dict[str, ChatFormat] = {}

    def lookup(generator: str | None) -> ChatFormat:
        name = generator or GENERATOR.model
        if name not in models:
            raise InvalidInput(f"unknown generator {name!r}; this deployment serves: {', '.join(models)}")
        model = models[name]
        if model not in cache:
            if setting == "plain":
                cache[model] = ChatFormat.plain(model)
            elif setting == "auto":
                cache[model] = ChatFormat.for_model(model)
            else:
                own = ChatFormat.for_model(model)
                cache[model] = ChatFormat(setting, Path(setting).expanduser().read_text(), own.special_tokens,
                                          own.bos_token, own.eos_token)
        return cache[model]

    return lookup


def prompt_builder(settings: Settings, generator_models: Mapping[str, str | None] | None = None) -> PromptBuilder:
    """The prompt builder the settings describe, for the generators served (default: the one ``generator``)."""
    p = settings.prompt_builder
    return PromptBuilder(p.max_query_chars, p.max_context_chars, p.max_system_chars, p.template_dir,
                         chat_formats(p.chat_template, settings.generator.model, generator_models))
